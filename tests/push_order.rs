//! Push bundles in foreign-key order: upserts parents first, deletes children first.
//!
//! The server applies a bundle row by row; in first-touch order a parent's delete could run
//! before a child's move away from it, and `ON DELETE CASCADE` would take the child along
//! (silently: the child's update then matches nothing). The deterministic tests reproduce
//! that on the self-referencing `categories` and on `files` <- `file_reviews`; the property
//! runs random edit sequences on the cascade tables and on the teams <-> team_members cycle
//! on one device, with a second device that only syncs (so it applies the server's bundles
//! of these edits), and compares both with a freshly attached device. Edits come from one
//! device so that what is tested is the order of one device's bundle, not conflicts. Besides
//! single edits the generator draws the shape that matters as one step (parents and a child
//! reach the server, then offline: edit the parent, move the child to another parent, delete
//! the first parent) on each family, so most cases contain it: with the bundle kept in
//! first-touch order the property fails within a few cases (the shrunk case, on the teams
//! cycle, is in the regressions file). Fixed seed; 24 cases by default, 256 with
//! `OVERSYNC_LONG_TESTS=1`. Failing cases found once are kept in
//! `push_order.proptest-regressions` and replayed first.

use diesel::prelude::*;
use oversync_diesel::{AttachOutcome, PushOutcome};
use oversync_e2e::schema::{categories, file_reviews, files, team_members, teams};
use oversync_e2e::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use std::sync::OnceLock;

struct Env {
    rt: tokio::runtime::Runtime,
    server: Server,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(Server::start());
        Env { rt, server }
    })
}

async fn attached(server: &Server, user: &str) -> Device {
    let mut d = Device::new(server, user);
    d.conn.oversync().attach(user).await.expect("attach");
    d
}

async fn sync_ok(d: &mut Device) -> oversync_diesel::SyncReport {
    d.conn.oversync().sync().await.expect("sync")
}

fn uuid_bytes(id: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(id).expect("uuid").as_bytes().to_vec()
}

/// Every row of the cascade and cycle tables, as text, sorted.
fn dump(d: &mut Device) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    diesel::sql_query(
        "SELECT 'c|' || id || '|' || name || '|' || IFNULL(parent_id, '-') AS line FROM categories
         UNION ALL SELECT 'f|' || hex(id) || '|' || name || '|' || hex(data) FROM files
         UNION ALL SELECT 'r|' || id || '|' || review || '|' || hex(file_id) FROM file_reviews
         UNION ALL SELECT 't|' || id || '|' || name || '|' || IFNULL(captain_member_id, '-') FROM teams
         UNION ALL SELECT 'm|' || id || '|' || name || '|' || team_id FROM team_members
         ORDER BY 1",
    )
    .load::<Line>(&mut *d.conn)
    .expect("dump")
    .into_iter()
    .map(|l| l.line)
    .collect()
}

async fn fresh_dump(server: &Server, user: &str) -> Vec<String> {
    let mut fresh = Device::new(server, user);
    let outcome = fresh.conn.oversync().attach(user).await.expect("attach");
    assert!(
        matches!(
            outcome,
            AttachOutcome::UsedRemoteState { .. } | AttachOutcome::StartedEmpty
        ),
        "{outcome:?}"
    );
    dump(&mut fresh)
}

fn insert_category(d: &mut Device, id: &str, name: &str, parent: Option<&str>) {
    diesel::insert_into(categories::table)
        .values((
            categories::id.eq(id),
            categories::name.eq(name),
            categories::parent_id.eq(parent),
        ))
        .execute(&mut *d.conn)
        .expect("insert category");
}

/// Edit parent P, move child C to P2, delete P: C must survive everywhere.
#[test]
fn moving_a_child_off_a_parent_deleted_in_the_same_push_keeps_the_child() {
    let Env { rt, server } = env();
    rt.block_on(async {
        let user = fresh_user("fk-move");
        let mut a = attached(server, &user).await;
        let (p, p2, c) = (new_id(), new_id(), new_id());
        insert_category(&mut a, &p, "p", None);
        insert_category(&mut a, &p2, "p2", None);
        insert_category(&mut a, &c, "c", Some(&p));
        sync_ok(&mut a).await;

        diesel::update(categories::table.find(&p))
            .set(categories::name.eq("p edited"))
            .execute(&mut *a.conn)
            .unwrap();
        diesel::update(categories::table.find(&c))
            .set(categories::parent_id.eq(Some(p2.as_str())))
            .execute(&mut *a.conn)
            .unwrap();
        diesel::delete(categories::table.find(&p))
            .execute(&mut *a.conn)
            .unwrap();
        let report = sync_ok(&mut a).await;
        assert!(
            matches!(
                report.push,
                PushOutcome::Pushed {
                    rows_pushed: 2,
                    conflicts_resolved: 0,
                    ..
                }
            ),
            "{report:?}"
        );
        let expected = vec![format!("c|{c}|c|{p2}"), format!("c|{p2}|p2|-")];
        let mut expected = expected;
        expected.sort();
        assert_eq!(dump(&mut a), expected, "on the device");
        assert_eq!(fresh_dump(server, &user).await, expected, "on the server");
    });
}

/// The same across two tables: a review moves to another file, its old file is deleted.
#[test]
fn a_child_moved_to_another_table_parent_survives_the_old_parents_delete() {
    let Env { rt, server } = env();
    rt.block_on(async {
        let user = fresh_user("fk-files");
        let mut a = attached(server, &user).await;
        let (f1, f2, r) = (new_id(), new_id(), new_id());
        for f in [&f1, &f2] {
            diesel::insert_into(files::table)
                .values((
                    files::id.eq(uuid_bytes(f)),
                    files::name.eq("f"),
                    files::data.eq(vec![1u8, 2]),
                ))
                .execute(&mut *a.conn)
                .unwrap();
        }
        diesel::insert_into(file_reviews::table)
            .values((
                file_reviews::id.eq(&r),
                file_reviews::review.eq("ok"),
                file_reviews::file_id.eq(uuid_bytes(&f1)),
            ))
            .execute(&mut *a.conn)
            .unwrap();
        sync_ok(&mut a).await;

        // The file is touched first, so first-touch order would send its delete first.
        diesel::update(files::table.find(uuid_bytes(&f1)))
            .set(files::name.eq("renamed"))
            .execute(&mut *a.conn)
            .unwrap();
        diesel::update(file_reviews::table.find(&r))
            .set(file_reviews::file_id.eq(uuid_bytes(&f2)))
            .execute(&mut *a.conn)
            .unwrap();
        diesel::delete(files::table.find(uuid_bytes(&f1)))
            .execute(&mut *a.conn)
            .unwrap();
        sync_ok(&mut a).await;
        let local = dump(&mut a);
        assert!(
            local.iter().any(|l| l.starts_with(&format!("r|{r}|"))),
            "{local:?}"
        );
        assert_eq!(fresh_dump(server, &user).await, local);
    });
}

/// Keys come from small pools so edits hit the same rows.
const SLOTS: usize = 4;

#[derive(Clone, Debug)]
enum Edit {
    PutCategory {
        slot: usize,
        parent: Option<usize>,
        name: u8,
    },
    DeleteCategory {
        slot: usize,
    },
    PutFile {
        slot: usize,
        name: u8,
    },
    DeleteFile {
        slot: usize,
    },
    PutReview {
        slot: usize,
        file: usize,
        name: u8,
    },
    DeleteReview {
        slot: usize,
    },
    PutTeam {
        slot: usize,
        captain: Option<usize>,
        name: u8,
    },
    DeleteTeam {
        slot: usize,
    },
    PutMember {
        slot: usize,
        team: usize,
        name: u8,
    },
    DeleteMember {
        slot: usize,
    },
}

#[derive(Clone, Debug)]
enum Step {
    /// An edit on the writing device (device 0), in its own transaction.
    Local { edit: Edit },
    /// A sync of the writer (0) or of the reader (1), which only pulls.
    Sync { dev: usize },
    /// The shape that lost a child under first-touch order, on one table family (0: the
    /// self-cascading `categories`, 1: `files` <- `file_reviews`, 2: the `teams` <->
    /// `team_members` cycle): parents `from` and `to` and a child under `from` reach the
    /// server; then, offline, `from` is edited, the child moves to `to` and `from` is deleted.
    MoveThenDeleteParent {
        family: usize,
        child: usize,
        from: usize,
        to: usize,
        name: u8,
    },
}

impl Step {
    /// The plain steps a composite step stands for.
    fn expand(&self) -> Vec<Step> {
        let Step::MoveThenDeleteParent {
            family,
            child,
            from,
            to,
            name,
        } = *self
        else {
            return vec![self.clone()];
        };
        let to = if to == from { (from + 1) % SLOTS } else { to };
        let local = |edit| Step::Local { edit };
        let edits = match family {
            0 => {
                // The child category must be neither parent.
                let child = (0..SLOTS).find(|c| *c != from && *c != to).unwrap_or(child);
                [
                    Edit::PutCategory {
                        slot: from,
                        parent: None,
                        name,
                    },
                    Edit::PutCategory {
                        slot: to,
                        parent: None,
                        name,
                    },
                    Edit::PutCategory {
                        slot: child,
                        parent: Some(from),
                        name,
                    },
                    Edit::PutCategory {
                        slot: from,
                        parent: None,
                        name: name.wrapping_add(1),
                    },
                    Edit::PutCategory {
                        slot: child,
                        parent: Some(to),
                        name,
                    },
                    Edit::DeleteCategory { slot: from },
                ]
            }
            1 => [
                Edit::PutFile { slot: from, name },
                Edit::PutFile { slot: to, name },
                Edit::PutReview {
                    slot: child,
                    file: from,
                    name,
                },
                Edit::PutFile {
                    slot: from,
                    name: name.wrapping_add(1),
                },
                Edit::PutReview {
                    slot: child,
                    file: to,
                    name,
                },
                Edit::DeleteFile { slot: from },
            ],
            _ => [
                Edit::PutTeam {
                    slot: from,
                    captain: None,
                    name,
                },
                Edit::PutTeam {
                    slot: to,
                    captain: None,
                    name,
                },
                Edit::PutMember {
                    slot: child,
                    team: from,
                    name,
                },
                Edit::PutTeam {
                    slot: from,
                    captain: None,
                    name: name.wrapping_add(1),
                },
                Edit::PutMember {
                    slot: child,
                    team: to,
                    name,
                },
                Edit::DeleteTeam { slot: from },
            ],
        };
        let [a, b, c, d, e, f] = edits;
        vec![
            local(a),
            local(b),
            local(c),
            Step::Sync { dev: 0 },
            local(d),
            local(e),
            local(f),
        ]
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    let s = || 0..SLOTS;
    prop_oneof![
        3 => (s(), proptest::option::of(s()), any::<u8>())
            .prop_map(|(slot, parent, name)| Edit::PutCategory { slot, parent, name }),
        2 => s().prop_map(|slot| Edit::DeleteCategory { slot }),
        2 => (s(), any::<u8>()).prop_map(|(slot, name)| Edit::PutFile { slot, name }),
        1 => s().prop_map(|slot| Edit::DeleteFile { slot }),
        2 => (s(), s(), any::<u8>()).prop_map(|(slot, file, name)| Edit::PutReview { slot, file, name }),
        1 => s().prop_map(|slot| Edit::DeleteReview { slot }),
        2 => (s(), proptest::option::of(s()), any::<u8>())
            .prop_map(|(slot, captain, name)| Edit::PutTeam { slot, captain, name }),
        1 => s().prop_map(|slot| Edit::DeleteTeam { slot }),
        2 => (s(), s(), any::<u8>()).prop_map(|(slot, team, name)| Edit::PutMember { slot, team, name }),
        1 => s().prop_map(|slot| Edit::DeleteMember { slot }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let s = || 0..SLOTS;
    prop_oneof![
        6 => edit().prop_map(|edit| Step::Local { edit }),
        1 => (0..2usize).prop_map(|dev| Step::Sync { dev }),
        1 => (0..3usize, s(), s(), s(), any::<u8>()).prop_map(|(family, child, from, to, name)| {
            Step::MoveThenDeleteParent { family, child, from, to, name }
        }),
    ]
}

struct Keys {
    categories: Vec<String>,
    files: Vec<String>,
    reviews: Vec<String>,
    teams: Vec<String>,
    members: Vec<String>,
}

/// Applies one edit as upsert or delete; a write the database refuses (a missing parent, a
/// captain still referenced) is not made, as in an app.
fn apply(d: &mut Device, k: &Keys, edit: &Edit) {
    let _ = d.conn.immediate_transaction(|c| -> QueryResult<()> {
        match edit {
            Edit::PutCategory { slot, parent, name } => {
                let parent = parent.map(|p| k.categories[p].clone());
                diesel::insert_into(categories::table)
                    .values((
                        categories::id.eq(&k.categories[*slot]),
                        categories::name.eq(format!("c{name}")),
                        categories::parent_id.eq(parent.clone()),
                    ))
                    .on_conflict(categories::id)
                    .do_update()
                    .set((
                        categories::name.eq(format!("c{name}")),
                        categories::parent_id.eq(parent.clone()),
                    ))
                    .execute(c)?;
            }
            Edit::DeleteCategory { slot } => {
                diesel::delete(categories::table.find(&k.categories[*slot])).execute(c)?;
            }
            Edit::PutFile { slot, name } => {
                diesel::insert_into(files::table)
                    .values((
                        files::id.eq(uuid_bytes(&k.files[*slot])),
                        files::name.eq(format!("f{name}")),
                        files::data.eq(vec![*name]),
                    ))
                    .on_conflict(files::id)
                    .do_update()
                    .set(files::name.eq(format!("f{name}")))
                    .execute(c)?;
            }
            Edit::DeleteFile { slot } => {
                diesel::delete(files::table.find(uuid_bytes(&k.files[*slot]))).execute(c)?;
            }
            Edit::PutReview { slot, file, name } => {
                let file = uuid_bytes(&k.files[*file]);
                diesel::insert_into(file_reviews::table)
                    .values((
                        file_reviews::id.eq(&k.reviews[*slot]),
                        file_reviews::review.eq(format!("r{name}")),
                        file_reviews::file_id.eq(file.clone()),
                    ))
                    .on_conflict(file_reviews::id)
                    .do_update()
                    .set((
                        file_reviews::review.eq(format!("r{name}")),
                        file_reviews::file_id.eq(file.clone()),
                    ))
                    .execute(c)?;
            }
            Edit::DeleteReview { slot } => {
                diesel::delete(file_reviews::table.find(&k.reviews[*slot])).execute(c)?;
            }
            Edit::PutTeam {
                slot,
                captain,
                name,
            } => {
                let captain = captain.map(|m| k.members[m].clone());
                diesel::insert_into(teams::table)
                    .values((
                        teams::id.eq(&k.teams[*slot]),
                        teams::name.eq(format!("t{name}")),
                        teams::captain_member_id.eq(captain.clone()),
                    ))
                    .on_conflict(teams::id)
                    .do_update()
                    .set((
                        teams::name.eq(format!("t{name}")),
                        teams::captain_member_id.eq(captain.clone()),
                    ))
                    .execute(c)?;
            }
            Edit::DeleteTeam { slot } => {
                diesel::delete(teams::table.find(&k.teams[*slot])).execute(c)?;
            }
            Edit::PutMember { slot, team, name } => {
                diesel::insert_into(team_members::table)
                    .values((
                        team_members::id.eq(&k.members[*slot]),
                        team_members::name.eq(format!("m{name}")),
                        team_members::team_id.eq(&k.teams[*team]),
                    ))
                    .on_conflict(team_members::id)
                    .do_update()
                    .set((
                        team_members::name.eq(format!("m{name}")),
                        team_members::team_id.eq(&k.teams[*team]),
                    ))
                    .execute(c)?;
            }
            Edit::DeleteMember { slot } => {
                diesel::delete(team_members::table.find(&k.members[*slot])).execute(c)?;
            }
        }
        Ok(())
    });
}

async fn run(steps: Vec<Step>) -> Result<(), String> {
    let devices = 2;
    let server = &env().server;
    let user = fresh_user("fk-prop");
    let pool = |n: usize| (0..n).map(|_| new_id()).collect::<Vec<_>>();
    let keys = Keys {
        categories: pool(SLOTS),
        files: pool(SLOTS),
        reviews: pool(SLOTS),
        teams: pool(SLOTS),
        members: pool(SLOTS),
    };
    let mut ds = Vec::new();
    for _ in 0..devices {
        ds.push(attached(server, &user).await);
    }
    for step in steps.iter().flat_map(Step::expand) {
        match &step {
            Step::MoveThenDeleteParent { .. } => unreachable!("expanded"),
            Step::Local { edit } => apply(&mut ds[0], &keys, edit),
            Step::Sync { dev } => {
                let d = &mut ds[dev % devices];
                d.conn
                    .oversync()
                    .sync()
                    .await
                    .map_err(|e| format!("sync of device {dev}: {e:?}"))?;
            }
        }
    }
    for round in 0..3 {
        for (i, d) in ds.iter_mut().enumerate() {
            d.conn
                .oversync()
                .sync()
                .await
                .map_err(|e| format!("final sync {round} of device {i}: {e:?}"))?;
        }
    }
    let reference = fresh_dump(server, &user).await;
    for (i, d) in ds.iter_mut().enumerate() {
        let state = dump(d);
        if state != reference {
            return Err(format!(
                "device {i} differs from a fresh device:\n  device {state:?}\n  fresh  {reference:?}"
            ));
        }
        let pending = d
            .conn
            .oversync()
            .pending_sync_status()
            .map_err(|e| e.to_string())?
            .pending_rows;
        if pending != 0 {
            return Err(format!("device {i} still has {pending} pending rows"));
        }
    }
    Ok(())
}

fn cases() -> u32 {
    if std::env::var_os("OVERSYNC_LONG_TESTS").is_some() {
        256
    } else {
        24
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        rng_seed: RngSeed::Fixed(0x0f0c_0de5),
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_edits_on_cascade_and_cycle_tables_reach_every_device(
        steps in proptest::collection::vec(step(), 4..40),
    ) {
        let outcome = env().rt.block_on(run(steps));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
