-- The todo app's own tables (release 1). The sync migrations generated from the models
-- come after this one: they install triggers on these tables.
CREATE TABLE tags (
    id TEXT PRIMARY KEY NOT NULL,
    label TEXT NOT NULL
);

CREATE TABLE todos (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT 0
);

-- Deleting a todo or a tag deletes its links (the server schema keeps the cascades).
CREATE TABLE todo_tags (
    id TEXT PRIMARY KEY NOT NULL,
    todo_id TEXT NOT NULL REFERENCES todos(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    tag_id TEXT NOT NULL REFERENCES tags(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
