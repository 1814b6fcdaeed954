-- hybridsync local schema, version 2: a claim token per in-flight outbox entry, so a
-- drainer reads back exactly the entries it claimed even if another process drains too.
ALTER TABLE outbox ADD COLUMN claim INTEGER;
