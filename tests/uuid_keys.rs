//! `oversync_diesel::types::UuidText` as the sync key and as a foreign-key field: a model
//! written the way Rust users write UUIDs syncs to the server and back to another device.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::types::UuidText;
use oversync_diesel::{AttachOutcome, OversyncConfig, OversyncConnection, SyncTable};
use oversync_e2e::*;

diesel::table! { users (id) { id -> Text, name -> Text, email -> Text, created_at -> Nullable<Text>, updated_at -> Nullable<Text> } }
diesel::table! { posts (id) { id -> Text, title -> Text, content -> Text, author_id -> Nullable<Text>, created_at -> Nullable<Text>, updated_at -> Nullable<Text> } }

#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable)]
#[diesel(table_name = users)]
struct Author {
    #[sync(key)]
    id: UuidText,
    name: String,
    email: String,
    created_at: Option<String>,
    updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable)]
#[diesel(table_name = posts)]
struct Post {
    #[sync(key)]
    id: UuidText,
    title: String,
    content: String,
    author_id: Option<UuidText>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

const SCHEMA: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL, created_at TEXT, updated_at TEXT);
CREATE TABLE posts (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL, content TEXT NOT NULL,
    author_id TEXT REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED, created_at TEXT, updated_at TEXT);
";

fn device(dir: &tempfile::TempDir, name: &str, base_url: &str, user: &str) -> OversyncConnection {
    let path = dir.path().join(name);
    let config = OversyncConfig::new("business")
        .table::<Author>()
        .table::<Post>();
    let mut conn = OversyncConnection::establish(path.to_str().unwrap(), config).unwrap();
    conn.batch_execute(SCHEMA).unwrap();
    oversync_diesel::migrations::run_sync_migrations(&mut conn).unwrap();
    conn.oversync().open().unwrap();
    conn.set_transport(transport_for(base_url, user));
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_text_keys_and_references_sync_to_another_device() {
    let server = Server::start().await;
    let user = fresh_user("uuid-keys");
    let dir = tempfile::tempdir().unwrap();
    let mut a = device(&dir, "a.db", server.base_url(), &user);
    a.oversync().attach(&user).await.unwrap();
    let author = Author {
        id: uuid::Uuid::new_v4().into(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        created_at: None,
        updated_at: None,
    };
    let post = Post {
        id: UuidText::new_v4(),
        title: "typed keys".into(),
        content: "no strings attached".into(),
        author_id: Some(author.id),
        created_at: None,
        updated_at: None,
    };
    diesel::insert_into(users::table)
        .values(&author)
        .execute(&mut *a)
        .unwrap();
    diesel::insert_into(posts::table)
        .values(&post)
        .execute(&mut *a)
        .unwrap();
    a.oversync().sync().await.unwrap();

    let mut b = device(&dir, "b.db", server.base_url(), &user);
    assert!(matches!(
        b.oversync().attach(&user).await.unwrap(),
        AttachOutcome::UsedRemoteState { rows: 2, .. }
    ));
    let authors: Vec<Author> = users::table.load(&mut *b).unwrap();
    let posts: Vec<Post> = posts::table.load(&mut *b).unwrap();
    // The server fills created_at/updated_at; the keys and the reference come back typed.
    assert_eq!(authors.len(), 1);
    assert_eq!(authors[0].id, author.id);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].id, post.id);
    assert_eq!(posts[0].author_id, Some(author.id));
    let found: Post = posts::table
        .filter(posts::author_id.eq(Some(author.id)))
        .first(&mut *b)
        .unwrap();
    assert_eq!(found.title, "typed keys");

    // An edit on b reaches a through the typed key.
    diesel::update(posts::table.find(post.id))
        .set(posts::title.eq("edited on b"))
        .execute(&mut *b)
        .unwrap();
    b.oversync().sync().await.unwrap();
    a.oversync().sync().await.unwrap();
    let title: String = posts::table
        .find(post.id)
        .select(posts::title)
        .first(&mut *a)
        .unwrap();
    assert_eq!(title, "edited on b");
}
