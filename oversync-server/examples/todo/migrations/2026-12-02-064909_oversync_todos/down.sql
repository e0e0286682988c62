DROP TRIGGER IF EXISTS "trg_todos_ai";
DROP TRIGGER IF EXISTS "trg_todos_au";
DROP TRIGGER IF EXISTS "trg_todos_au_key";
DROP TRIGGER IF EXISTS "trg_todos_ad";
DELETE FROM _sync_managed_tables WHERE schema_name = 'main' AND table_name = 'todos';
