DROP TABLE todo_tags;
DROP TABLE todos;
DROP TABLE tags;
