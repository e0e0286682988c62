-- Release 2: a nullable priority. Nullable, so rows of devices still on release 1 stay valid
-- and the server can take the column before every device is upgraded.
ALTER TABLE todos ADD COLUMN priority INTEGER;
