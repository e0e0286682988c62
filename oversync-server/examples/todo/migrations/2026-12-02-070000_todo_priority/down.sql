ALTER TABLE todos DROP COLUMN priority;
