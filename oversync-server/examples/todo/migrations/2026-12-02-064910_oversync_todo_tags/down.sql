DROP TRIGGER IF EXISTS "trg_todo_tags_ai";
DROP TRIGGER IF EXISTS "trg_todo_tags_au";
DROP TRIGGER IF EXISTS "trg_todo_tags_au_key";
DROP TRIGGER IF EXISTS "trg_todo_tags_ad";
DELETE FROM _sync_managed_tables WHERE schema_name = 'main' AND table_name = 'todo_tags';
