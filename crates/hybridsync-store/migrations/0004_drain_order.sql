-- The drain claims pending entries most urgent first, oldest first within a class
-- (ORDER BY priority, id). With the id in the index, that order is the index's own and a
-- claim stops after its LIMIT; before, every claim sorted all pending entries of the
-- classes it scanned. next_attempt_ms rides along so the due-check needs no table read.
DROP INDEX outbox_drain_order;
CREATE INDEX outbox_drain_order ON outbox (state, priority, id, next_attempt_ms);
