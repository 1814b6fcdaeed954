-- hybridsync cloud schema, version 4: client-side encryption. A collection may be
-- encrypted (its devices seal payloads and embeddings before they leave), and each row
-- says which key sealed it (NULL for plaintext rows and tombstones), so an operator can
-- follow a key rotation. The key id names a key; it reveals nothing about it.
ALTER TABLE hs_collections ADD COLUMN encrypted boolean NOT NULL DEFAULT false;
ALTER TABLE hs_records ADD COLUMN key_id text;
