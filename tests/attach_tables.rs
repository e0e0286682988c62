//! `attach()` compares the configured tables with the server's `registered_tables` before
//! `connect`: a table the server does not serve is a typed error naming it, with no lease
//! taken and nothing local changed; tables the server serves beyond the config are fine.

mod common;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::{AttachOutcome, Error, OversyncConfig, OversyncConnection, SyncTable};
use oversync_e2e::*;

diesel::table! { gadgets (id) { id -> Text, name -> Text } }

/// A table the example server does not serve.
#[derive(Queryable, Insertable, SyncTable)]
#[diesel(table_name = gadgets)]
struct Gadget {
    #[sync(key)]
    id: String,
    name: String,
}

/// A device with its own config and schema, routed through `base_url`.
fn device_with(
    dir: &tempfile::TempDir,
    config: OversyncConfig,
    schema: &str,
    base_url: &str,
    user: &str,
) -> OversyncConnection {
    let path = dir.path().join("device.db");
    let mut conn = OversyncConnection::establish(path.to_str().unwrap(), config).unwrap();
    conn.batch_execute(schema).unwrap();
    oversync_diesel::migrations::run_sync_migrations(&mut conn).unwrap();
    conn.oversync().open().unwrap();
    conn.set_transport(transport_for(base_url, user));
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_table_the_server_does_not_serve_fails_attach_before_connect() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let user = fresh_user("unregistered");
    let dir = tempfile::tempdir().unwrap();
    let mut conn = device_with(
        &dir,
        config().table::<Gadget>(),
        &format!(
            "{APP_SCHEMA} CREATE TABLE gadgets (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL);"
        ),
        proxy.url(),
        &user,
    );
    // Local rows: without the check, connect would take the account's initialization lease.
    diesel::insert_into(gadgets::table)
        .values(&Gadget {
            id: new_id(),
            name: "lamp".into(),
        })
        .execute(&mut *conn)
        .unwrap();

    let err = conn.oversync().attach(&user).await.unwrap_err();
    match &err {
        Error::TablesNotRegistered {
            schema,
            missing,
            served,
        } => {
            assert_eq!(schema, "business");
            assert_eq!(missing, &vec!["business.gadgets".to_string()]);
            assert!(served.contains(&"business.users".to_string()), "{served:?}");
        }
        other => panic!("expected TablesNotRegistered, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("business.gadgets"), "{message}");
    assert!(
        !proxy.log().iter().any(|l| l.contains("/sync/connect")),
        "connect was called: {:?}",
        proxy.log()
    );
    // Nothing local changed: still anonymous with the row pending.
    let status = conn.oversync().pending_sync_status().unwrap();
    assert_eq!(status.pending_rows, 1);
    assert!(matches!(
        conn.oversync().sync().await,
        Err(Error::NotAttached | Error::TablesNotRegistered { .. })
    ));

    // No lease was taken: another device of the user attaches at once.
    let mut other = Device::new(&server, &user);
    insert_user(&mut other, &new_id(), "seed");
    let outcome = other.conn.oversync().attach(&user).await.unwrap();
    assert_eq!(outcome, AttachOutcome::SeededFromLocal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tables_beyond_the_config_do_not_block_attach() {
    let server = Server::start().await;
    let user = fresh_user("subset");
    let dir = tempfile::tempdir().unwrap();
    // Only `users`: the server serves seven more business tables.
    let mut conn = device_with(
        &dir,
        OversyncConfig::new("business").table::<User>(),
        "CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL, created_at TEXT, updated_at TEXT);",
        server.base_url(),
        &user,
    );
    assert_eq!(
        conn.oversync().attach(&user).await.unwrap(),
        AttachOutcome::StartedEmpty
    );
    diesel::insert_into(oversync_e2e::schema::users::table)
        .values(&user_row(&new_id(), "ada"))
        .execute(&mut *conn)
        .unwrap();
    conn.oversync().sync().await.unwrap();
    let mut other = Device::new(&server, &user);
    other.conn.oversync().attach(&user).await.unwrap();
    assert_eq!(all_users(&mut other).len(), 1);
}
