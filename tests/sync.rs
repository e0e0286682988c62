//! End-to-end sync: real SQLite files, the real server over loopback HTTP, a private
//! PostgreSQL cluster (or the server named by `OVERSYNC_TEST_SERVER_URL`). Every test uses
//! its own fresh user, so the suite never depends on server state left by others.

use diesel::prelude::*;
use oversync_diesel::{
    AttachOutcome, ClientWins, Conflict, ConflictResolver, Error, PullOutcome, PushOutcome,
    Resolution, SyncEvent,
};
use oversync_e2e::schema::{
    categories, file_reviews, files, posts, team_members, teams, typed_rows, users,
};
use oversync_e2e::*;

fn user(id: &str, name: &str) -> User {
    User {
        id: id.into(),
        name: name.into(),
        email: format!("{name}@example.com"),
        created_at: None,
        updated_at: None,
    }
}

fn insert_user(d: &mut Device, u: &User) {
    diesel::insert_into(users::table)
        .values(u)
        .execute(&mut *d.conn)
        .expect("insert user");
}

fn all_users(d: &mut Device) -> Vec<(String, String, String)> {
    users::table
        .select((users::id, users::name, users::email))
        .order(users::id)
        .load(&mut *d.conn)
        .expect("load users")
}

/// Attaches a device that is expected to start or seed a fresh account.
async fn attach_first(d: &mut Device) {
    let user = d.user().to_string();
    let outcome = d.conn.oversync().attach(&user).await.expect("attach");
    assert!(
        matches!(
            outcome,
            AttachOutcome::StartedEmpty | AttachOutcome::SeededFromLocal
        ),
        "first device: {outcome:?}"
    );
}

async fn sync(d: &mut Device) -> oversync_diesel::SyncReport {
    d.conn.oversync().sync().await.expect("sync")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_converge_after_offline_edits() {
    let server = Server::start().await;
    let name = fresh_user("converge");
    let mut a = Device::new(&server, &name);
    // Written before attach: captured anonymously and used to seed the account.
    let (u1, u2) = (new_id(), new_id());
    insert_user(&mut a, &user(&u1, "ann"));
    attach_first(&mut a).await;
    let report = sync(&mut a).await;
    assert!(
        matches!(report.push, PushOutcome::Pushed { rows_pushed: 1, .. }),
        "{report:?}"
    );

    let mut b = Device::new(&server, &name);
    let outcome = b.conn.oversync().attach(&name).await.expect("attach b");
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: 1,
            discarded_local_rows: 0
        }
    );
    assert_eq!(all_users(&mut b), all_users(&mut a));

    // Offline edits on both: disjoint rows.
    insert_user(&mut a, &user(&u2, "bob"));
    diesel::update(users::table.find(&u1))
        .set(users::name.eq("ann-from-b"))
        .execute(&mut *b.conn)
        .unwrap();
    let p = new_id();
    diesel::insert_into(posts::table)
        .values(&Post {
            id: p.clone(),
            title: "hello".into(),
            content: "world".into(),
            author_id: Some(u1.clone()),
            created_at: None,
            updated_at: None,
        })
        .execute(&mut *b.conn)
        .unwrap();

    sync(&mut a).await;
    sync(&mut b).await;
    sync(&mut a).await;
    assert_eq!(all_users(&mut a), all_users(&mut b));
    assert_eq!(all_users(&mut a).len(), 2);
    assert_eq!(
        all_users(&mut a)[0].1.len() + all_users(&mut a)[1].1.len(),
        "ann-from-b".len() + "bob".len()
    );
    let post_on_a: Post = posts::table
        .find(&p)
        .first(&mut *a.conn)
        .expect("post reached a");
    assert_eq!(post_on_a.author_id.as_deref(), Some(u1.as_str()));
    for d in [&mut a, &mut b] {
        assert_eq!(
            d.conn
                .oversync()
                .pending_sync_status()
                .unwrap()
                .pending_rows,
            0
        );
    }
    assert_eq!(
        a.conn.oversync().last_bundle_seq_seen().unwrap(),
        b.conn.oversync().last_bundle_seq_seen().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge() {
    let server = Server::start().await;
    let name = fresh_user("three");
    let mut devices: Vec<Device> = (0..3).map(|_| Device::new(&server, &name)).collect();
    attach_first(&mut devices[0]).await;
    for d in devices.iter_mut().skip(1) {
        let outcome = d.conn.oversync().attach(&name).await.expect("attach");
        assert!(
            matches!(
                outcome,
                AttachOutcome::UsedRemoteState { .. } | AttachOutcome::StartedEmpty
            ),
            "{outcome:?}"
        );
    }
    for (i, d) in devices.iter_mut().enumerate() {
        for j in 0..5 {
            insert_user(d, &user(&new_id(), &format!("d{i}-{j}")));
        }
    }
    for _ in 0..2 {
        for d in devices.iter_mut() {
            sync(d).await;
        }
    }
    let reference = all_users(&mut devices[0]);
    assert_eq!(reference.len(), 15);
    for d in devices.iter_mut() {
        assert_eq!(all_users(d), reference);
    }
}

/// Device A and B both hold `id`; A changes it and syncs first; B's change then conflicts.
async fn conflict_setup(server: &Server, prefix: &str) -> (Device, Device, String) {
    let name = fresh_user(prefix);
    let mut a = Device::new(server, &name);
    attach_first(&mut a).await;
    let id = new_id();
    insert_user(&mut a, &user(&id, "original"));
    sync(&mut a).await;
    let mut b = Device::new(server, &name);
    b.conn.oversync().attach(&name).await.expect("attach b");
    assert_eq!(all_users(&mut b).len(), 1);
    (a, b, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_update_conflict_server_wins_by_default() {
    let server = Server::start().await;
    let (mut a, mut b, id) = conflict_setup(&server, "uu-server").await;
    let mut events = b.conn.subscribe();
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-a"))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-b"))
        .execute(&mut *b.conn)
        .unwrap();
    let report = sync(&mut b).await;
    assert!(
        matches!(
            report.push,
            PushOutcome::ResolvedWithoutPush {
                conflicts_resolved: 1
            }
        ),
        "{report:?}"
    );
    assert_eq!(all_users(&mut b)[0].1, "from-a");
    sync(&mut a).await;
    assert_eq!(all_users(&mut a), all_users(&mut b));
    let mut saw = false;
    while let Ok(event) = events.try_recv() {
        if let SyncEvent::ConflictResolved { resolution, .. } = event {
            assert_eq!(resolution, "accept_server");
            saw = true;
        }
    }
    assert!(saw, "a ConflictResolved event was sent");
}

/// The server names one conflicting row per 409: a push holding five of them (two devices
/// that inserted the same keys offline) still completes in one `sync()`, under either
/// built-in resolver, and every device ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_conflicting_rows_in_one_push_resolve_in_one_sync() {
    let server = Server::start().await;
    for client_wins in [false, true] {
        let name = fresh_user(if client_wins { "many-cw" } else { "many-sw" });
        let mut a = Device::new(&server, &name);
        let mut b = Device::new(&server, &name);
        attach_first(&mut a).await;
        b.conn.oversync().attach(&name).await.expect("attach b");
        if client_wins {
            b.conn.set_conflict_resolver(ClientWins);
        }
        let shared: Vec<String> = (0..5).map(|_| new_id()).collect();
        for id in &shared {
            insert_user(&mut a, &user(id, "from-a"));
            insert_user(&mut b, &user(id, "from-b"));
        }
        let only_b = new_id();
        insert_user(&mut b, &user(&only_b, "only-b"));
        sync(&mut a).await;
        let report = b
            .conn
            .oversync()
            .sync()
            .await
            .expect("one sync resolves all five");
        match (client_wins, &report.push) {
            (
                false,
                PushOutcome::Pushed {
                    conflicts_resolved,
                    rows_pushed,
                    ..
                },
            ) => {
                assert_eq!(*conflicts_resolved, 5, "{report:?}");
                assert_eq!(*rows_pushed, 1, "only the unique row is left to push");
            }
            (
                true,
                PushOutcome::Pushed {
                    conflicts_resolved,
                    rows_pushed,
                    ..
                },
            ) => {
                assert_eq!(*conflicts_resolved, 5, "{report:?}");
                assert_eq!(*rows_pushed, 6);
            }
            _ => panic!("unexpected push outcome {report:?}"),
        }
        assert_eq!(
            b.conn
                .oversync()
                .pending_sync_status()
                .unwrap()
                .pending_rows,
            0
        );
        sync(&mut a).await;
        let expected = if client_wins { "from-b" } else { "from-a" };
        let rows = all_users(&mut a);
        assert_eq!(rows.len(), 6);
        for id in &shared {
            let row = rows.iter().find(|r| &r.0 == id).expect("shared row");
            assert_eq!(row.1, expected);
        }
        assert_eq!(rows, all_users(&mut b));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_update_conflict_client_wins() {
    let server = Server::start().await;
    let (mut a, mut b, id) = conflict_setup(&server, "uu-client").await;
    b.conn.set_conflict_resolver(ClientWins);
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-a"))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-b"))
        .execute(&mut *b.conn)
        .unwrap();
    let report = sync(&mut b).await;
    assert!(
        matches!(
            report.push,
            PushOutcome::Pushed {
                conflicts_resolved: 1,
                ..
            }
        ),
        "{report:?}"
    );
    sync(&mut a).await;
    assert_eq!(all_users(&mut a)[0].1, "from-b");
    assert_eq!(all_users(&mut a), all_users(&mut b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_delete_and_delete_update_conflicts() {
    let server = Server::start().await;
    // A deletes, B updates: server wins -> the row is gone on both.
    let (mut a, mut b, id) = conflict_setup(&server, "ud").await;
    diesel::delete(users::table.find(&id))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-b"))
        .execute(&mut *b.conn)
        .unwrap();
    sync(&mut b).await;
    assert!(all_users(&mut b).is_empty());

    // A updates, B deletes, B keeps its delete (client wins) -> gone on both.
    let (mut a, mut b, id) = conflict_setup(&server, "du").await;
    b.conn.set_conflict_resolver(ClientWins);
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-a"))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::delete(users::table.find(&id))
        .execute(&mut *b.conn)
        .unwrap();
    let report = sync(&mut b).await;
    assert!(
        matches!(
            report.push,
            PushOutcome::Pushed {
                conflicts_resolved: 1,
                ..
            }
        ),
        "{report:?}"
    );
    sync(&mut a).await;
    assert!(all_users(&mut a).is_empty());
    assert!(all_users(&mut b).is_empty());

    // A deletes, B updates, B answers keep-local: an update cannot be kept on a row the
    // server deleted (it would come back unasked). Fails closed: nothing applied, B's edit
    // back in the dirty set; only an explicit merged row recreates it.
    let (mut a, mut b, id) = conflict_setup(&server, "du2").await;
    b.conn.set_conflict_resolver(ClientWins);
    diesel::delete(users::table.find(&id))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::update(users::table.find(&id))
        .set(users::name.eq("revived"))
        .execute(&mut *b.conn)
        .unwrap();
    match b.conn.oversync().sync().await {
        Err(Error::InvalidResolution(why)) => assert!(why.contains("deleted"), "{why}"),
        other => panic!("expected InvalidResolution, got {other:?}"),
    }
    assert_eq!(all_users(&mut b)[0].1, "revived", "local value untouched");
    assert_eq!(
        dirty_rows(&mut b),
        1,
        "the frozen bundle is a dirty row again"
    );
    assert!(all_users(&mut a).is_empty());
    // An edit made now coalesces with the restored change (one row, newest value).
    diesel::update(users::table.find(&id))
        .set(users::name.eq("revived twice"))
        .execute(&mut *b.conn)
        .unwrap();
    assert_eq!(dirty_rows(&mut b), 1);
    b.conn.set_conflict_resolver(ReviveExplicitly);
    sync(&mut b).await;
    sync(&mut a).await;
    assert_eq!(all_users(&mut a), all_users(&mut b));
    assert_eq!(all_users(&mut a)[0].1, "revived twice");

    // The same refusal, then accepting the server's delete: gone on both.
    let (mut a, mut b, id) = conflict_setup(&server, "du3").await;
    b.conn.set_conflict_resolver(ClientWins);
    diesel::delete(users::table.find(&id))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::update(users::table.find(&id))
        .set(users::name.eq("edited"))
        .execute(&mut *b.conn)
        .unwrap();
    assert!(matches!(
        b.conn.oversync().sync().await,
        Err(Error::InvalidResolution(_))
    ));
    b.conn.set_conflict_resolver(oversync_diesel::ServerWins);
    sync(&mut b).await;
    assert!(all_users(&mut b).is_empty());
    assert_eq!(dirty_rows(&mut b), 0);
}

/// Rows in `_sync_dirty_rows` (captured, not frozen).
fn dirty_rows(d: &mut Device) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT COUNT(*) AS n FROM _sync_dirty_rows")
        .get_result::<N>(&mut *d.conn)
        .unwrap()
        .n
}

/// Recreates a row the server deleted by returning the local row as an explicit merge.
struct ReviveExplicitly;

impl ConflictResolver for ReviveExplicitly {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        match &conflict.local_row {
            Some(row) if conflict.server_row_deleted => Resolution::Merged(row.clone()),
            _ => Resolution::AcceptServer,
        }
    }
}

/// Merges on the app's own model type: name from the server, email from this device.
struct MergeUser;

impl ConflictResolver for MergeUser {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        match (conflict.local_as::<User>(), conflict.server_as::<User>()) {
            (Ok(Some(local)), Ok(Some(server))) => Resolution::merged(&User {
                email: local.email,
                ..server
            })
            .unwrap_or(Resolution::KeepLocal),
            _ => Resolution::AcceptServer,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_merge_on_a_typed_model() {
    let server = Server::start().await;
    let (mut a, mut b, id) = conflict_setup(&server, "merge").await;
    b.conn.set_conflict_resolver(MergeUser);
    diesel::update(users::table.find(&id))
        .set(users::name.eq("name-from-a"))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::update(users::table.find(&id))
        .set(users::email.eq("b@new.example"))
        .execute(&mut *b.conn)
        .unwrap();
    sync(&mut b).await;
    sync(&mut a).await;
    for d in [&mut a, &mut b] {
        let (_, name, email) = all_users(d)[0].clone();
        assert_eq!(
            (name.as_str(), email.as_str()),
            ("name-from-a", "b@new.example")
        );
    }
}

/// A resolver whose merge changes the key: refused, local intent kept.
struct BadMerge;

impl ConflictResolver for BadMerge {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        let mut row = conflict.server_row.clone().unwrap_or_default();
        row.insert("id".into(), serde_json::Value::String(new_id()));
        Resolution::Merged(row)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_merge_fails_closed_with_local_intent_kept() {
    let server = Server::start().await;
    let (mut a, mut b, id) = conflict_setup(&server, "badmerge").await;
    b.conn.set_conflict_resolver(BadMerge);
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-a"))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    diesel::update(users::table.find(&id))
        .set(users::name.eq("from-b"))
        .execute(&mut *b.conn)
        .unwrap();
    match b.conn.oversync().sync().await {
        Err(Error::InvalidResolution(_)) => {}
        other => panic!("expected InvalidResolution, got {other:?}"),
    }
    assert_eq!(
        b.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        1
    );
    assert_eq!(all_users(&mut b)[0].1, "from-b", "local value untouched");
    // A sane resolver afterwards finishes the job.
    b.conn.set_conflict_resolver(ClientWins);
    sync(&mut b).await;
    sync(&mut a).await;
    assert_eq!(all_users(&mut a)[0].1, "from-b");
}

fn instant(text: &str) -> i128 {
    // Timestamps compare as instants: the server answers in its own RFC 3339 form.
    let t = text.replace(' ', "T");
    let (date, rest) = t.split_once('T').expect("date and time");
    let mut d = date
        .split('-')
        .map(|p| p.parse::<i64>().expect("date part"));
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    let (time, offset_min) = if let Some(stripped) = rest.strip_suffix('Z') {
        (stripped.to_string(), 0)
    } else {
        let pos = rest.rfind(['+', '-']).expect("offset");
        let (time, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut o = off[1..]
            .split(':')
            .map(|p| p.parse::<i64>().expect("offset part"));
        (
            time.to_string(),
            sign * (o.next().unwrap() * 60 + o.next().unwrap_or(0)),
        )
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time.as_str(), "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().expect("time part"));
    let (h, mi, s) = (t.next().unwrap(), t.next().unwrap(), t.next().unwrap());
    let micros: i64 = format!("{frac:0<6}")[..6].parse().expect("fraction");
    let days = (y * 365 + y / 4 - y / 100 + y / 400) + (m * 31) + day; // monotone, not calendar-exact
    (((days * 24 + h) * 60 + mi - offset_min) as i128 * 60 + s as i128) * 1_000_000 + micros as i128
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_and_blob_keys_round_trip_exactly() {
    let server = Server::start().await;
    let name = fresh_user("typed");
    let mut a = Device::new(&server, &name);
    attach_first(&mut a).await;
    let rows = vec![
        TypedRow {
            id: new_id(),
            name: "all".into(),
            note: Some("ünïcödé \"quotes\" \n".into()),
            count_value: Some((1 << 53) - 1),
            enabled_flag: 1,
            rating: Some(0.1 + 0.2),
            data: Some(vec![0, 1, 2, 255, 254]),
            created_at: Some("2026-11-22T14:21:16.785690Z".into()),
        },
        TypedRow {
            id: new_id(),
            name: "nulls".into(),
            note: None,
            count_value: None,
            enabled_flag: 0,
            rating: None,
            data: None,
            created_at: None,
        },
        TypedRow {
            id: new_id(),
            name: "edges".into(),
            note: Some(String::new()),
            count_value: Some(-((1 << 53) - 1)),
            enabled_flag: -1,
            rating: Some(-1.0 / 3.0),
            data: Some(vec![]),
            created_at: Some("2000-02-29T00:00:00Z".into()),
        },
    ];
    diesel::insert_into(typed_rows::table)
        .values(&rows)
        .execute(&mut *a.conn)
        .unwrap();
    let file = File {
        id: uuid::Uuid::new_v4().as_bytes().to_vec(),
        name: "f".into(),
        data: (0..=255u8).collect(),
    };
    diesel::insert_into(files::table)
        .values(&file)
        .execute(&mut *a.conn)
        .unwrap();
    let review = FileReview {
        id: new_id(),
        review: "ok".into(),
        file_id: file.id.clone(),
    };
    diesel::insert_into(file_reviews::table)
        .values(&review)
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;

    let mut b = Device::new(&server, &name);
    b.conn.oversync().attach(&name).await.expect("attach b");
    let mut got: Vec<TypedRow> = typed_rows::table
        .order(typed_rows::name)
        .load(&mut *b.conn)
        .unwrap();
    let mut want = rows.clone();
    want.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter_mut().zip(&want) {
        assert_eq!(
            g.created_at.as_deref().map(instant),
            w.created_at.as_deref().map(instant),
            "{}",
            w.name
        );
        g.created_at = w.created_at.clone();
    }
    assert_eq!(got, want);
    assert_eq!(files::table.first::<File>(&mut *b.conn).unwrap(), file);
    assert_eq!(
        file_reviews::table
            .first::<FileReview>(&mut *b.conn)
            .unwrap(),
        review
    );
    // A's own rows were replayed from the server too and still equal what was written.
    assert_eq!(files::table.first::<File>(&mut *a.conn).unwrap(), file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_cascades_and_a_two_table_cycle() {
    let server = Server::start().await;
    let name = fresh_user("fk");
    let mut a = Device::new(&server, &name);
    attach_first(&mut a).await;
    let (team, captain, member) = (new_id(), new_id(), new_id());
    let (root, child, grandchild) = (new_id(), new_id(), new_id());
    a.conn
        .immediate_transaction(|c| {
            diesel::insert_into(teams::table)
                .values(&Team {
                    id: team.clone(),
                    name: "t".into(),
                    captain_member_id: Some(captain.clone()),
                })
                .execute(c)?;
            diesel::insert_into(team_members::table)
                .values(&vec![
                    TeamMember {
                        id: captain.clone(),
                        name: "cap".into(),
                        team_id: team.clone(),
                    },
                    TeamMember {
                        id: member.clone(),
                        name: "m".into(),
                        team_id: team.clone(),
                    },
                ])
                .execute(c)?;
            diesel::insert_into(categories::table)
                .values(&vec![
                    Category {
                        id: root.clone(),
                        name: "root".into(),
                        parent_id: None,
                    },
                    Category {
                        id: child.clone(),
                        name: "child".into(),
                        parent_id: Some(root.clone()),
                    },
                    Category {
                        id: grandchild.clone(),
                        name: "grand".into(),
                        parent_id: Some(child.clone()),
                    },
                ])
                .execute(c)
        })
        .unwrap();
    sync(&mut a).await;
    let mut b = Device::new(&server, &name);
    b.conn.oversync().attach(&name).await.expect("attach b");
    assert_eq!(
        team_members::table
            .count()
            .get_result::<i64>(&mut *b.conn)
            .unwrap(),
        2
    );
    assert_eq!(
        categories::table
            .count()
            .get_result::<i64>(&mut *b.conn)
            .unwrap(),
        3
    );

    // Cascades on A reach B as row deletes.
    diesel::delete(categories::table.find(&child))
        .execute(&mut *a.conn)
        .unwrap();
    diesel::delete(teams::table.find(&team))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    sync(&mut b).await;
    let left: Vec<String> = categories::table
        .select(categories::id)
        .load(&mut *b.conn)
        .unwrap();
    assert_eq!(left, vec![root.clone()]);
    assert_eq!(
        team_members::table
            .count()
            .get_result::<i64>(&mut *b.conn)
            .unwrap(),
        0
    );
    assert_eq!(
        teams::table
            .count()
            .get_result::<i64>(&mut *b.conn)
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_cross_many_chunks_both_ways() {
    let server = Server::start().await;
    let name = fresh_user("bulk");
    let mut a = Device::new(&server, &name);
    attach_first(&mut a).await;
    let rows: Vec<User> = (0..10_000)
        .map(|i| user(&new_id(), &format!("u{i:05}")))
        .collect();
    a.conn
        .immediate_transaction(|c| {
            for chunk in rows.chunks(500) {
                diesel::insert_into(users::table).values(chunk).execute(c)?;
            }
            QueryResult::Ok(())
        })
        .unwrap();
    let mut events = a.conn.subscribe();
    let report = sync(&mut a).await;
    assert!(
        matches!(
            report.push,
            PushOutcome::Pushed {
                rows_pushed: 10_000,
                ..
            }
        ),
        "{report:?}"
    );
    let mut push_progress = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let SyncEvent::Progress {
            phase: oversync_diesel::Phase::Push,
            done,
            total,
        } = e
        {
            push_progress.push((done, total));
        }
    }
    assert!(
        push_progress.len() >= 10,
        "progress per chunk: {push_progress:?}"
    );
    assert_eq!(push_progress.last(), Some(&(10_000, Some(10_000))));

    // B receives them through pull (not a snapshot): attach first, then A writes more.
    let mut b = Device::new(&server, &name);
    b.conn.oversync().attach(&name).await.expect("attach b");
    diesel::update(users::table)
        .set(users::email.eq("changed@example.com"))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut a).await;
    let report = sync(&mut b).await;
    assert!(
        matches!(
            report.pull,
            PullOutcome::UpToDate {
                rows_applied: 10_000,
                ..
            }
        ),
        "{report:?}"
    );
    assert_eq!(all_users(&mut a), all_users(&mut b));
    assert_eq!(all_users(&mut b).len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_commit_and_replay_resumes_without_loss_or_duplication() {
    let server = Server::start().await;
    let name = fresh_user("restart");
    let mut a = Device::new(&server, &name);
    attach_first(&mut a).await;
    let ids: Vec<String> = (0..30).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        insert_user(&mut a, &user(id, &format!("r{i}")));
    }
    // A transport whose token provider dies right after the commit: the process "crashes"
    // between commit and replay.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (counter, base, user_name) = (calls.clone(), server.base_url().to_string(), name.clone());
    let dying = oversync_diesel::transport::token_fn(move |_refresh| {
        let (counter, base, user_name) = (counter.clone(), base.clone(), user_name.clone());
        async move {
            // capabilities (checked once per transport), create session, one chunk,
            // commit: then the lights go out.
            if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 4 {
                return Err(oversync_diesel::transport::AuthError(
                    "simulated crash".into(),
                ));
            }
            sign_in(&base, &user_name).await
        }
    });
    a.conn.set_transport(
        oversync_diesel::transport::Transport::new(server.base_url(), dying).unwrap(),
    );
    assert!(a.conn.oversync().push_pending().await.is_err());
    assert!(a.conn.oversync().sync_status().unwrap().push_in_flight);
    assert_eq!(
        a.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        30,
        "intent kept"
    );

    let mut a = a.restart();
    let report = a.conn.oversync().push_pending().await.expect("resume");
    assert!(
        matches!(
            report,
            PushOutcome::Pushed {
                rows_pushed: 30,
                ..
            }
        ),
        "{report:?}"
    );
    assert_eq!(
        a.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        0
    );
    assert_eq!(
        a.conn.oversync().push_pending().await.unwrap(),
        PushOutcome::NothingToPush
    );

    // Exactly one copy on the server: a new device hydrates 30 rows, and a later pull adds none.
    let mut b = Device::new(&server, &name);
    assert_eq!(
        b.conn.oversync().attach(&name).await.unwrap(),
        AttachOutcome::UsedRemoteState {
            rows: 30,
            discarded_local_rows: 0
        }
    );
    sync(&mut a).await;
    let report = sync(&mut b).await;
    assert!(
        matches!(
            report.pull,
            PullOutcome::UpToDate {
                rows_applied: 0,
                ..
            }
        ),
        "{report:?}"
    );
    assert_eq!(all_users(&mut a), all_users(&mut b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_switch_via_detach_and_attach() {
    let server = Server::start().await;
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let mut d = Device::new(&server, &alice);
    attach_first(&mut d).await;
    insert_user(&mut d, &user(&new_id(), "alice-row"));
    match d.conn.oversync().detach() {
        Err(Error::UnsyncedData { pending_rows: 1 }) => {}
        other => panic!("detach must refuse with unsynced data, got {other:?}"),
    }
    match d.conn.oversync().attach(&bob).await {
        Err(Error::AttachedToAnotherUser { .. }) => {}
        other => panic!("attaching another user must be refused, got {other:?}"),
    }
    let report = d
        .conn
        .oversync()
        .sync_then_detach()
        .await
        .expect("sync then detach");
    assert!(report.detached && report.rows_left == 0, "{report:?}");
    assert!(all_users(&mut d).is_empty(), "detach clears synced data");

    d.conn.set_transport(transport_for(server.base_url(), &bob));
    assert_eq!(
        d.conn.oversync().attach(&bob).await.unwrap(),
        AttachOutcome::StartedEmpty
    );
    insert_user(&mut d, &user(&new_id(), "bob-row"));
    sync(&mut d).await;
    assert_eq!(all_users(&mut d).len(), 1);

    // Alice's data is still hers: a fresh device of alice sees only her row.
    let mut other = Device::new(&server, &alice);
    other.conn.oversync().attach(&alice).await.unwrap();
    let names: Vec<String> = all_users(&mut other).into_iter().map(|u| u.1).collect();
    assert_eq!(names, vec!["alice-row".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_refuses_while_local_changes_wait() {
    let server = Server::start().await;
    let name = fresh_user("blocked");
    let mut a = Device::new(&server, &name);
    attach_first(&mut a).await;
    insert_user(&mut a, &user(&new_id(), "pending"));
    match a.conn.oversync().pull_to_stable().await.unwrap() {
        PullOutcome::BlockedByPendingChanges { pending_rows: 1 } => {}
        other => panic!("{other:?}"),
    }
}

/// A pull applies with a larger page cache and gives the connection its own size back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_restores_the_connections_page_cache_size() {
    #[derive(QueryableByName)]
    struct CacheSize {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        cache_size: i64,
    }
    let cache_size = |d: &mut Device| {
        diesel::sql_query("PRAGMA cache_size")
            .get_result::<CacheSize>(&mut *d.conn)
            .expect("cache_size")
            .cache_size
    };
    let server = Server::start().await;
    let name = fresh_user("cache");
    let mut a = Device::new(&server, &name);
    let mut b = Device::new(&server, &name);
    attach_first(&mut a).await;
    b.conn.oversync().attach(&name).await.expect("attach b");
    insert_user(&mut a, &user(&new_id(), "from a"));
    a.conn.oversync().sync().await.expect("a sync");
    diesel::sql_query("PRAGMA cache_size = -3000")
        .execute(&mut *b.conn)
        .expect("set cache_size");
    match b.conn.oversync().pull_to_stable().await.expect("b pulls") {
        PullOutcome::UpToDate { rows_applied, .. } => assert_eq!(rows_applied, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(cache_size(&mut b), -3000);
}

fn pulled(report: &oversync_diesel::SyncReport) -> (u64, u64, i64) {
    match report.pull {
        PullOutcome::UpToDate {
            rows_applied,
            own_rows_skipped,
            last_bundle_seq_seen,
            ..
        } => (rows_applied, own_rows_skipped, last_bundle_seq_seen),
        ref other => panic!("pull did not complete: {other:?}"),
    }
}

/// A's bundle lands after B's; A's pull then gets both, and writes only B's rows: its own
/// bundle was replayed right after its push. The checkpoint still moves over both, and A
/// equals a fresh device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_bundles_are_not_applied_again_on_pull() {
    let server = Server::start().await;
    let name = fresh_user("own-bundles");
    let mut a = Device::new(&server, &name);
    attach_first(&mut a).await;
    let mut b = Device::new(&server, &name);
    b.conn.oversync().attach(&name).await.expect("attach b");

    let a_ids: Vec<String> = (0..5).map(|_| new_id()).collect();
    let b_ids: Vec<String> = (0..3).map(|_| new_id()).collect();
    for id in &a_ids {
        insert_user(&mut a, &user(id, "from-a"));
    }
    for id in &b_ids {
        insert_user(&mut b, &user(id, "from-b"));
    }
    let b_report = sync(&mut b).await;
    let a_report = sync(&mut a).await;
    let (applied, skipped, checkpoint) = pulled(&a_report);
    assert_eq!((applied, skipped), (3, 5), "{a_report:?}");
    let (_, _, b_checkpoint) = pulled(&b_report);
    assert_eq!(
        checkpoint,
        b_checkpoint + 1,
        "the checkpoint passed A's own bundle"
    );

    // Once more, with updates: each device changes one of its rows, B first.
    diesel::update(users::table.find(&b_ids[0]))
        .set(users::name.eq("b-renamed"))
        .execute(&mut *b.conn)
        .unwrap();
    diesel::update(users::table.find(&a_ids[0]))
        .set(users::name.eq("a-renamed"))
        .execute(&mut *a.conn)
        .unwrap();
    sync(&mut b).await;
    let a_report = sync(&mut a).await;
    assert_eq!(pulled(&a_report).0, 1, "{a_report:?}");
    assert_eq!(pulled(&a_report).1, 1, "{a_report:?}");
    // B pulls A's bundles (never its own twice either).
    let b_report = sync(&mut b).await;
    assert_eq!(pulled(&b_report).1, 0, "{b_report:?}");

    let mut fresh = Device::new(&server, &name);
    fresh
        .conn
        .oversync()
        .attach(&name)
        .await
        .expect("fresh attach");
    assert_eq!(all_users(&mut a), all_users(&mut fresh));
    assert_eq!(all_users(&mut b), all_users(&mut fresh));
    assert_eq!(all_users(&mut fresh).len(), 8);
}
