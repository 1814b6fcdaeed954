-- A collection may be encrypted: its records leave the device only sealed (the engine
-- seals them on the way to the cloud). Local rows stay in plaintext either way.
ALTER TABLE collections ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
