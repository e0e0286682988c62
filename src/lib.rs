//! Shared fixtures of the end-to-end suite, the examples and the benchmarks: the client side
//! of the example server's business schema as Diesel models, and a [`Device`] (one SQLite
//! file with its own sync runtime) signed in through `POST /dummy-signin`, so the same code
//! runs against our server or any server with that demo auth (`OVERSYNC_TEST_SERVER_URL`).

use diesel::connection::SimpleConnection;
use oversync_diesel::transport::{AuthError, Transport, TransportConfig, token_fn};
use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Diesel schema of the synced tables.
pub mod schema {
    diesel::table! { users (id) { id -> Text, name -> Text, email -> Text, created_at -> Nullable<Text>, updated_at -> Nullable<Text> } }
    diesel::table! { posts (id) { id -> Text, title -> Text, content -> Text, author_id -> Nullable<Text>, created_at -> Nullable<Text>, updated_at -> Nullable<Text> } }
    diesel::table! { categories (id) { id -> Text, name -> Text, parent_id -> Nullable<Text> } }
    diesel::table! { teams (id) { id -> Text, name -> Text, captain_member_id -> Nullable<Text> } }
    diesel::table! { team_members (id) { id -> Text, name -> Text, team_id -> Text } }
    diesel::table! { files (id) { id -> Binary, name -> Text, data -> Binary } }
    diesel::table! { file_reviews (id) { id -> Text, review -> Text, file_id -> Binary } }
    diesel::table! { typed_rows (id) { id -> Text, name -> Text, note -> Nullable<Text>, count_value -> Nullable<BigInt>, enabled_flag -> BigInt, rating -> Nullable<Double>, data -> Nullable<Binary>, created_at -> Nullable<Text> } }
}

macro_rules! model {
    ($(#[$meta:meta])* $name:ident, $table:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, SyncTable, diesel::Queryable, diesel::Selectable, diesel::Insertable, diesel::AsChangeset, Serialize, Deserialize)]
        #[diesel(table_name = schema::$table, treat_none_as_null = true)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }
    };
}

model!(User, users { #[sync(key)] id: String, name: String, email: String, created_at: Option<String>, updated_at: Option<String> });
model!(Post, posts { #[sync(key)] id: String, title: String, content: String, author_id: Option<String>, created_at: Option<String>, updated_at: Option<String> });
model!(Category, categories { #[sync(key)] id: String, name: String, parent_id: Option<String> });
model!(Team, teams { #[sync(key)] id: String, name: String, captain_member_id: Option<String> });
model!(
    TeamMember,
    team_members {
        #[sync(key)]
        id: String,
        name: String,
        team_id: String
    }
);
model!(
    /// Keyed by a 16-byte BLOB locally; a UUID on the server.
    File, files { #[sync(key)] id: Vec<u8>, name: String, data: Vec<u8> });
model!(FileReview, file_reviews { #[sync(key)] id: String, review: String, file_id: Vec<u8> });
model!(TypedRow, typed_rows { #[sync(key)] id: String, name: String, note: Option<String>, count_value: Option<i64>, enabled_flag: i64, rating: Option<f64>, data: Option<Vec<u8>>, created_at: Option<String> });

/// The app's own migration for the synced tables (foreign keys as on the server, deferred
/// where the server's cycle needs it).
pub const APP_SCHEMA: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL, created_at TEXT, updated_at TEXT);
CREATE TABLE posts (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL, content TEXT NOT NULL,
    author_id TEXT REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED, created_at TEXT, updated_at TEXT);
CREATE TABLE categories (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL,
    parent_id TEXT REFERENCES categories(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE teams (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL,
    captain_member_id TEXT REFERENCES team_members(id) DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE team_members (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL,
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE files (id BLOB PRIMARY KEY NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE file_reviews (id TEXT PRIMARY KEY NOT NULL, review TEXT NOT NULL,
    file_id BLOB NOT NULL REFERENCES files(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE typed_rows (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, note TEXT, count_value INTEGER,
    enabled_flag INTEGER NOT NULL, rating REAL, data BLOB, created_at TEXT);
";

/// The sync configuration of the business schema.
pub fn config() -> OversyncConfig {
    OversyncConfig::new("business")
        .table::<User>()
        .table::<Post>()
        .table::<Category>()
        .table::<Team>()
        .table::<TeamMember>()
        .table::<File>()
        .table::<FileReview>()
        .table::<TypedRow>()
}

/// Every `users` row as id -> name (to compare a device with a fresh one).
pub fn user_names_by_id(
    conn: &mut diesel::SqliteConnection,
) -> std::collections::BTreeMap<String, String> {
    use diesel::prelude::*;
    schema::users::table
        .select((schema::users::id, schema::users::name))
        .load::<(String, String)>(conn)
        .expect("load users")
        .into_iter()
        .collect()
}

/// A fresh canonical UUID string.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh user name, so tests never see each other's data on a shared server.
pub fn fresh_user(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Signs in through the demo endpoint `POST /dummy-signin`.
pub async fn sign_in(base_url: &str, user: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct Answer {
        token: String,
    }
    let answer: Answer = reqwest::Client::new()
        .post(format!("{base_url}/dummy-signin"))
        .json(&serde_json::json!({"user": user, "password": "x"}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| AuthError(format!("sign-in failed: {e}")))?
        .json()
        .await
        .map_err(|e| AuthError(format!("sign-in answer: {e}")))?;
    Ok(answer.token)
}

/// A transport for `user` whose token provider signs in again when asked to refresh.
pub fn transport_for(base_url: &str, user: &str) -> Transport {
    let cache: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let (base, user_name) = (base_url.to_string(), user.to_string());
    let provider = token_fn(move |refresh| {
        let (cache, base, user) = (cache.clone(), base.clone(), user_name.clone());
        async move {
            if !refresh
                && let Some(token) = cache
                    .lock()
                    .map_err(|_| AuthError("token cache poisoned".into()))?
                    .clone()
            {
                return Ok(token);
            }
            let token = sign_in(&base, &user).await?;
            *cache
                .lock()
                .map_err(|_| AuthError("token cache poisoned".into()))? = Some(token.clone());
            Ok(token)
        }
    });
    let config = TransportConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    Transport::with_config(base_url, provider, config).expect("valid base URL")
}

/// The server the suite talks to: `OVERSYNC_TEST_SERVER_URL` when set, else our example
/// server on a private PostgreSQL cluster.
pub struct Server {
    base_url: String,
    _local: Option<oversync_testkit::TestServer>,
}

impl Server {
    /// Starts (or points at) the server.
    pub async fn start() -> Server {
        if let Some(url) = oversync_testkit::external_server_url() {
            return Server {
                base_url: url,
                _local: None,
            };
        }
        let local = oversync_testkit::TestServer::start_async()
            .await
            .expect("start the example server");
        Server {
            base_url: local.base_url().to_string(),
            _local: Some(local),
        }
    }

    /// Wraps an in-process server the suite started itself (for example with changed limits).
    pub fn from_local(local: oversync_testkit::TestServer) -> Server {
        Server {
            base_url: local.base_url().to_string(),
            _local: Some(local),
        }
    }

    /// The in-process server (and through it its database), unless the suite runs against
    /// `OVERSYNC_TEST_SERVER_URL`.
    pub fn local(&self) -> Option<&oversync_testkit::TestServer> {
        self._local.as_ref()
    }

    /// Base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// One device: a SQLite file with its own sync runtime, signed in as `user`.
pub struct Device {
    /// The wrapped connection.
    pub conn: OversyncConnection,
    /// The database file.
    pub path: PathBuf,
    base_url: String,
    user: String,
    _dir: Arc<tempfile::TempDir>,
}

impl Device {
    /// A fresh database with the app schema and the sync migrations, opened (not attached).
    pub fn new(server: &Server, user: &str) -> Device {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let path = dir.path().join("device.db");
        let mut conn = OversyncConnection::establish(path.to_str().expect("utf-8 path"), config())
            .expect("open database");
        conn.batch_execute(APP_SCHEMA).expect("app schema");
        oversync_diesel::migrations::run_sync_migrations(&mut conn).expect("sync migrations");
        conn.oversync().open().expect("oversync open");
        conn.set_transport(transport_for(server.base_url(), user));
        Device {
            conn,
            path,
            base_url: server.base_url().to_string(),
            user: user.to_string(),
            _dir: dir,
        }
    }

    /// Closes and reopens the database file, as an app restart would.
    pub fn restart(self) -> Device {
        let Device {
            conn,
            path,
            base_url,
            user,
            _dir,
        } = self;
        drop(conn);
        let mut conn = OversyncConnection::establish(path.to_str().expect("utf-8 path"), config())
            .expect("reopen database");
        conn.oversync().open().expect("oversync open");
        conn.set_transport(transport_for(&base_url, &user));
        Device {
            conn,
            path,
            base_url,
            user,
            _dir,
        }
    }

    /// The signed-in user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Moves the connection behind an owned [`SyncClient`](oversync_diesel::SyncClient).
    pub async fn into_client(self) -> ClientDevice {
        let client = oversync_diesel::SyncClient::start(self.conn)
            .await
            .expect("start the sync client");
        ClientDevice {
            client,
            path: self.path,
            user: self.user,
            _dir: self._dir,
        }
    }
}

/// A device whose connection runs on a [`SyncClient`](oversync_diesel::SyncClient)'s engine
/// thread; the app reaches the file through connections of its own.
pub struct ClientDevice {
    /// The owned handle.
    pub client: oversync_diesel::SyncClient,
    /// The database file.
    pub path: PathBuf,
    user: String,
    _dir: Arc<tempfile::TempDir>,
}

impl ClientDevice {
    /// The signed-in user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A new app connection to the file, configured for use beside the engine.
    pub fn app_connection(&self) -> diesel::SqliteConnection {
        oversync_diesel::establish_app_connection(self.path.to_str().expect("utf-8 path"))
            .expect("app connection")
    }
}
