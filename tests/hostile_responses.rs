//! Hostile server responses: the loopback proxy rewrites real answers into malformed or
//! inconsistent ones (wrong `bundle_hash`, tampered/reordered/duplicated/missing rows,
//! missing fields, rows for unmanaged tables or another schema, keys that are not UUIDs,
//! payloads missing columns, huge strings, out-of-order or skipped `bundle_seq`s, snapshots
//! whose `row_count` disagrees with their chunks). Each must end in a typed error with no
//! checkpoint advanced and local rows and pending intent unchanged; afterwards a clean sync
//! (proxy honest again) converges with a second device.

mod common;

use common::*;
use diesel::prelude::*;
use oversync_diesel::{AttachOutcome, Binding, Error, TransportError};
use oversync_e2e::schema::posts;
use oversync_e2e::*;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Attached `a` pushes local rows (push-sessions, chunks, commit, committed rows).
    Push,
    /// Attached `a` pulls two bundles `b` committed.
    Pull,
    /// Fresh `a` with local rows attaches to an account with data (snapshot).
    Hydrate,
    /// Fresh `a` with local rows attaches to an empty account (capabilities, connect).
    Seed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// `Error::InvalidResponse`.
    Invalid,
    /// `Error::Transport(TransportError::Decode)`: the body does not have the protocol's shape.
    Decode,
    /// `Error::UnsupportedProtocol`.
    Unsupported,
}

struct Case {
    name: &'static str,
    scenario: Scenario,
    method: &'static str,
    pattern: &'static str,
    times: Times,
    rewrite: fn(Value) -> Value,
    expect: Expect,
}

const ROWS: &str = "/sync/committed-bundles/*/rows";
const PULL: &str = "/sync/pull";
const CHUNK: &str = "/sync/snapshot-sessions/*";

fn huge(n: usize) -> String {
    "x".repeat(n)
}

/// The first row of a committed-rows page or a snapshot chunk.
fn row0(v: &mut Value) -> &mut Value {
    &mut v["rows"][0]
}

/// The first row of the first bundle of a pull page.
fn pull_row0(v: &mut Value) -> &mut Value {
    &mut v["bundles"][0]["rows"][0]
}

fn case(
    name: &'static str,
    scenario: Scenario,
    method: &'static str,
    pattern: &'static str,
    rewrite: fn(Value) -> Value,
    expect: Expect,
) -> Case {
    Case {
        name,
        scenario,
        method,
        pattern,
        times: Times::Always,
        rewrite,
        expect,
    }
}

fn push_cases() -> Vec<Case> {
    use Expect::*;
    use Scenario::Push;
    vec![
        case(
            "committed rows: wrong bundle_hash",
            Push,
            "GET",
            ROWS,
            |mut v| {
                v["bundle_hash"] = json!("0".repeat(64));
                v
            },
            Invalid,
        ),
        case(
            "committed rows: tampered payload, page hash unchanged",
            Push,
            "GET",
            ROWS,
            |mut v| {
                row0(&mut v)["payload"]["name"] = json!("evil");
                v
            },
            Invalid,
        ),
        case(
            "committed rows: row for an unmanaged table, page hash unchanged",
            Push,
            "GET",
            ROWS,
            |mut v| {
                row0(&mut v)["table"] = json!("secrets");
                v
            },
            Invalid,
        ),
        case(
            "committed rows: rows reordered",
            Push,
            "GET",
            ROWS,
            |mut v| {
                v["rows"].as_array_mut().unwrap().reverse();
                v
            },
            Invalid,
        ),
        case(
            "committed rows: a row duplicated",
            Push,
            "GET",
            ROWS,
            |mut v| {
                let first = v["rows"][0].clone();
                v["rows"].as_array_mut().unwrap().push(first);
                v
            },
            Invalid,
        ),
        case(
            "committed rows: a row missing",
            Push,
            "GET",
            ROWS,
            |mut v| {
                v["rows"].as_array_mut().unwrap().pop();
                v
            },
            Invalid,
        ),
        case(
            "committed rows: page of another bundle_seq",
            Push,
            "GET",
            ROWS,
            |mut v| {
                v["bundle_seq"] = json!(v["bundle_seq"].as_i64().unwrap() + 1);
                v
            },
            Invalid,
        ),
        case(
            "committed rows: has_more forever",
            Push,
            "GET",
            ROWS,
            |mut v| {
                v["has_more"] = json!(true);
                v
            },
            Invalid,
        ),
        case(
            "committed rows: field rows missing",
            Push,
            "GET",
            ROWS,
            |mut v| {
                v.as_object_mut().unwrap().remove("rows");
                v
            },
            Invalid,
        ),
        case(
            "committed rows: huge bundle_hash",
            Push,
            "GET",
            ROWS,
            |mut v| {
                v["bundle_hash"] = json!(huge(2 << 20));
                v
            },
            Invalid,
        ),
        case(
            "commit: answer for another source_bundle_id",
            Push,
            "POST",
            "/sync/push-sessions/*/commit",
            |mut v| {
                v["source_bundle_id"] = json!(v["source_bundle_id"].as_i64().unwrap() + 7);
                v
            },
            Invalid,
        ),
        case(
            "commit: bundle_seq 0",
            Push,
            "POST",
            "/sync/push-sessions/*/commit",
            |mut v| {
                v["bundle_seq"] = json!(0);
                v
            },
            Invalid,
        ),
        case(
            "commit: bundle_hash missing",
            Push,
            "POST",
            "/sync/push-sessions/*/commit",
            |mut v| {
                v.as_object_mut().unwrap().remove("bundle_hash");
                v
            },
            Decode,
        ),
        case(
            "chunk: next_expected_row_ordinal beyond the chunk",
            Push,
            "POST",
            "/sync/push-sessions/*/chunks",
            |mut v| {
                v["next_expected_row_ordinal"] = json!(999);
                v
            },
            Invalid,
        ),
        case(
            "chunk: next_expected_row_ordinal not advancing",
            Push,
            "POST",
            "/sync/push-sessions/*/chunks",
            |mut v| {
                v["next_expected_row_ordinal"] = json!(0);
                v
            },
            Invalid,
        ),
        case(
            "create: already_committed for another source_bundle_id",
            Push,
            "POST",
            "/sync/push-sessions",
            |_| {
                json!({"status": "already_committed", "bundle_seq": 1, "source_id": new_id(),
                   "source_bundle_id": 99, "row_count": 1, "bundle_hash": "0".repeat(64)})
            },
            Invalid,
        ),
        case(
            "create: staging without push_id",
            Push,
            "POST",
            "/sync/push-sessions",
            |_| json!({"status": "staging"}),
            Decode,
        ),
    ]
}

fn pull_cases() -> Vec<Case> {
    use Expect::*;
    use Scenario::Pull;
    vec![
        case(
            "pull: row for an unmanaged table",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["table"] = json!("secrets");
                v
            },
            Invalid,
        ),
        case(
            "pull: row for a system table",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["table"] = json!("_sync_attachment_state");
                v
            },
            Invalid,
        ),
        case(
            "pull: row for another schema",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["schema"] = json!("other");
                v
            },
            Invalid,
        ),
        case(
            "pull: key not a UUID",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["key"] = json!({"id": "not-a-uuid"});
                v
            },
            Invalid,
        ),
        case(
            "pull: key an uppercase UUID",
            Pull,
            "GET",
            PULL,
            |mut v| {
                let r = pull_row0(&mut v);
                let up = r["key"]["id"].as_str().unwrap().to_uppercase();
                r["key"]["id"] = json!(up.clone());
                r["payload"]["id"] = json!(up);
                v
            },
            Invalid,
        ),
        case(
            "pull: key with an extra column",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["key"]["tenant"] = json!("t");
                v
            },
            Invalid,
        ),
        case(
            "pull: key not an object",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["key"] = json!(42);
                v
            },
            Decode,
        ),
        case(
            "pull: payload missing a column",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["payload"]
                    .as_object_mut()
                    .unwrap()
                    .remove("email");
                v
            },
            Invalid,
        ),
        case(
            "pull: payload key differs from the row key",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["payload"]["id"] = json!(new_id());
                v
            },
            Invalid,
        ),
        case(
            "pull: INSERT without payload",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["payload"] = Value::Null;
                v
            },
            Invalid,
        ),
        case(
            "pull: row_version 0",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["row_version"] = json!(0);
                v
            },
            Invalid,
        ),
        case(
            "pull: unknown op",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["op"] = json!("UPSERT");
                v
            },
            Decode,
        ),
        case(
            "pull: huge table name",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["table"] = json!(huge(2 << 20));
                v
            },
            Invalid,
        ),
        case(
            "pull: huge key",
            Pull,
            "GET",
            PULL,
            |mut v| {
                pull_row0(&mut v)["key"]["id"] = json!(huge(1 << 20));
                v
            },
            Invalid,
        ),
        case(
            "pull: bundle above the stable ceiling",
            Pull,
            "GET",
            PULL,
            |mut v| {
                v["stable_bundle_seq"] = json!(v["bundles"][0]["bundle_seq"].as_i64().unwrap() - 1);
                v
            },
            Invalid,
        ),
        case(
            "pull: stable_bundle_seq missing",
            Pull,
            "GET",
            PULL,
            |mut v| {
                v.as_object_mut().unwrap().remove("stable_bundle_seq");
                v
            },
            Decode,
        ),
        case(
            "pull: bundles not an array",
            Pull,
            "GET",
            PULL,
            |mut v| {
                v["bundles"] = json!({"0": 1});
                v
            },
            Decode,
        ),
    ]
}

/// Pull pages whose bundle sequence is out of order or skips a bundle: the engine must not
/// apply a later bundle before (or without) an earlier one.
fn pull_order_cases() -> Vec<Case> {
    use Expect::*;
    use Scenario::Pull;
    vec![
        case(
            "pull: bundles out of order",
            Pull,
            "GET",
            PULL,
            |mut v| {
                v["bundles"].as_array_mut().unwrap().reverse();
                v
            },
            Invalid,
        ),
        case(
            "pull: first bundle skipped (non-contiguous bundle_seq)",
            Pull,
            "GET",
            PULL,
            |mut v| {
                v["bundles"].as_array_mut().unwrap().remove(0);
                v
            },
            Invalid,
        ),
    ]
}

fn snapshot_cases() -> Vec<Case> {
    use Expect::*;
    use Scenario::Hydrate;
    vec![
        case(
            "snapshot: row_count above the rows sent",
            Hydrate,
            "POST",
            "/sync/snapshot-sessions",
            |mut v| {
                v["row_count"] = json!(v["row_count"].as_i64().unwrap() + 1);
                v
            },
            Invalid,
        ),
        case(
            "snapshot: row_count below the rows sent",
            Hydrate,
            "POST",
            "/sync/snapshot-sessions",
            |mut v| {
                v["row_count"] = json!(v["row_count"].as_i64().unwrap() - 1);
                v
            },
            Invalid,
        ),
        case(
            "snapshot: snapshot_id missing",
            Hydrate,
            "POST",
            "/sync/snapshot-sessions",
            |mut v| {
                v.as_object_mut().unwrap().remove("snapshot_id");
                v
            },
            Decode,
        ),
        case(
            "snapshot chunk: a row missing",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                v["rows"].as_array_mut().unwrap().pop();
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: row for an unmanaged table",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                row0(&mut v)["table"] = json!("secrets");
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: row for another schema",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                row0(&mut v)["schema"] = json!("public");
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: key not a UUID",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                row0(&mut v)["key"] = json!({"id": "1"});
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: payload missing a column",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                let rows = v["rows"].as_array_mut().unwrap();
                for r in rows.iter_mut() {
                    if r["table"] == "users" {
                        r["payload"].as_object_mut().unwrap().remove("name");
                    }
                }
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: another snapshot_id",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                v["snapshot_id"] = json!(new_id());
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: row_version above snapshot_bundle_seq",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                let seq = v["snapshot_bundle_seq"].as_i64().unwrap();
                row0(&mut v)["row_version"] = json!(seq + 1);
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: huge payload column name",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                row0(&mut v)["payload"][huge(1 << 20)] = json!(1);
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: payload with a column the model does not have",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                row0(&mut v)["payload"]["nickname"] = json!("x");
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: payload with the hidden _sync_scope_id column",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                row0(&mut v)["payload"]["_sync_scope_id"] = json!("someone-else");
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: rows missing",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                v.as_object_mut().unwrap().remove("rows");
                v
            },
            Invalid,
        ),
    ]
}

/// Snapshot chunks that keep `row_count` consistent but repeat rows.
fn snapshot_duplicate_cases() -> Vec<Case> {
    use Expect::*;
    use Scenario::Hydrate;
    vec![
        case(
            "snapshot chunk: a key twice, another key missing, row_count kept",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                let rows = v["rows"].as_array_mut().unwrap();
                let last = rows.len() - 1;
                rows[last] = rows[0].clone();
                v
            },
            Invalid,
        ),
        case(
            "snapshot chunk: next_row_ordinal never advances",
            Hydrate,
            "GET",
            CHUNK,
            |mut v| {
                v["has_more"] = json!(true);
                v["next_row_ordinal"] = json!(0);
                v
            },
            Invalid,
        ),
    ]
}

fn attach_cases() -> Vec<Case> {
    use Expect::*;
    use Scenario::Seed;
    vec![
        case(
            "capabilities: another protocol version",
            Seed,
            "GET",
            "/sync/capabilities",
            |mut v| {
                v["protocol_version"] = json!("v9");
                v
            },
            Unsupported,
        ),
        case(
            "capabilities: protocol_version missing",
            Seed,
            "GET",
            "/sync/capabilities",
            |mut v| {
                v.as_object_mut().unwrap().remove("protocol_version");
                v
            },
            Decode,
        ),
        case(
            "connect: initialize_local without initialization_id",
            Seed,
            "POST",
            "/sync/connect",
            |mut v| {
                v.as_object_mut().unwrap().remove("initialization_id");
                v
            },
            Invalid,
        ),
        case(
            "connect: unknown resolution",
            Seed,
            "POST",
            "/sync/connect",
            |mut v| {
                v["resolution"] = json!("take_everything");
                v
            },
            Decode,
        ),
    ]
}

fn post_row(id: &str, author: &str) -> Post {
    Post {
        id: id.into(),
        title: "t".into(),
        content: "c".into(),
        author_id: Some(author.into()),
        created_at: None,
        updated_at: None,
    }
}

/// Two users (one updated) and a post.
fn write_local(d: &mut Device, tag: &str) {
    let (u1, u2) = (new_id(), new_id());
    insert_user(d, &u1, &format!("{tag}-1"));
    insert_user(d, &u2, &format!("{tag}-2"));
    diesel::insert_into(posts::table)
        .values(&post_row(&new_id(), &u1))
        .execute(&mut *d.conn)
        .expect("insert post");
    diesel::update(oversync_e2e::schema::users::table.find(&u2))
        .set(oversync_e2e::schema::users::name.eq(format!("{tag}-2b")))
        .execute(&mut *d.conn)
        .expect("update user");
}

fn proxied(server: &Server, proxy: &Proxy, user: &str) -> Device {
    let mut d = Device::new(server, user);
    d.conn.set_transport(transport_with_timeout(
        proxy.url(),
        user,
        Duration::from_secs(20),
    ));
    d
}

fn attached(d: &mut Device) -> bool {
    matches!(
        d.conn.oversync().source_info().unwrap().binding,
        Binding::Attached { .. }
    )
}

/// Runs one case; returns a description of what went wrong, if anything.
async fn run_case(server: &Server, proxy: &Proxy, c: &Case) -> Result<(), String> {
    proxy.clear();
    let name = fresh_user("hostile");
    let mut b = Device::new(server, &name);
    let mut a = proxied(server, proxy, &name);
    let mut writers = 1;
    match c.scenario {
        Scenario::Push => {
            a.conn.oversync().attach(&name).await.expect("attach a");
            b.conn.oversync().attach(&name).await.expect("attach b");
            write_local(&mut a, "a");
        }
        Scenario::Pull => {
            b.conn.oversync().attach(&name).await.expect("attach b");
            a.conn.oversync().attach(&name).await.expect("attach a");
            for tag in ["b1", "b2"] {
                write_local(&mut b, tag);
                b.conn.oversync().sync().await.expect("b sync");
            }
            writers = 2;
        }
        Scenario::Hydrate => {
            b.conn.oversync().attach(&name).await.expect("attach b");
            write_local(&mut b, "b");
            b.conn.oversync().sync().await.expect("b sync");
            write_local(&mut a, "a");
            // The account's state replaces a's anonymous rows: only b's arrive.
            writers = 1;
        }
        Scenario::Seed => write_local(&mut a, "a"),
    }
    let before = local_state(&mut a);
    let rewrite = c.rewrite;
    proxy.rewrite(c.method, c.pattern, c.times, move |_, _, v| rewrite(v));
    let op = async {
        match c.scenario {
            Scenario::Push | Scenario::Pull => a.conn.oversync().sync().await.map(drop),
            Scenario::Hydrate | Scenario::Seed => a.conn.oversync().attach(&name).await.map(drop),
        }
    };
    let result = match tokio::time::timeout(Duration::from_secs(30), op).await {
        Ok(r) => r,
        Err(_) => return Err("did not finish within 30 s (unbounded loop?)".into()),
    };
    let fired = proxy.hits();
    let ok = matches!(
        (&result, c.expect),
        (Err(Error::InvalidResponse(_)), Expect::Invalid)
            | (
                Err(Error::Transport(TransportError::Decode { .. })),
                Expect::Decode
            )
            | (Err(Error::UnsupportedProtocol { .. }), Expect::Unsupported)
    );
    if fired == 0 {
        return Err("the rewrite never fired".into());
    }
    // Problems so far; the clean phase still runs so a report says whether it recovers.
    let mut problems = Vec::new();
    if !ok {
        problems.push(format!("expected {:?}, got {result:?}", c.expect));
    }
    let after = local_state(&mut a);
    if after != before {
        problems.push(format!(
            "local state changed:\n   before {before:?}\n   after  {after:?}"
        ));
    }
    if c.scenario == Scenario::Seed && attached(&mut a) {
        problems.push("attached although attach failed".into());
    }
    if let Err(clean) = clean_phase(&mut a, &mut b, proxy, c.scenario, &name, writers).await {
        problems.push(format!("then, with honest answers: {clean}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n  "))
    }
}

/// With honest answers again, `a` finishes and converges with `b`.
async fn clean_phase(
    a: &mut Device,
    b: &mut Device,
    proxy: &Proxy,
    scenario: Scenario,
    name: &str,
    writers: usize,
) -> Result<(), String> {
    // Clean: the proxy is honest again.
    proxy.clear();
    if !attached(a) || scenario == Scenario::Hydrate {
        let outcome = a.conn.oversync().attach(name).await;
        if !matches!(
            outcome,
            Ok(AttachOutcome::SeededFromLocal
                | AttachOutcome::UsedRemoteState { .. }
                | AttachOutcome::Resumed)
        ) {
            return Err(format!("clean attach: {outcome:?}"));
        }
    }
    for _ in 0..3 {
        a.conn
            .oversync()
            .sync()
            .await
            .map_err(|e| format!("clean sync a: {e:?}"))?;
        if !attached(b) {
            b.conn
                .oversync()
                .attach(name)
                .await
                .map_err(|e| format!("attach b: {e:?}"))?;
        }
        b.conn
            .oversync()
            .sync()
            .await
            .map_err(|e| format!("clean sync b: {e:?}"))?;
        if local_state(a) == local_state(b) {
            break;
        }
    }
    let (sa, sb) = (local_state(a), local_state(b));
    if sa != sb || sa.pending_rows != 0 {
        return Err(format!("no convergence:\n   a {sa:?}\n   b {sb:?}"));
    }
    if sa.users.len() != 2 * writers || sa.posts.len() != writers {
        return Err(format!("writes lost or duplicated: {sa:?}"));
    }
    Ok(())
}

async fn run_all(cases: Vec<Case>) {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(why) = run_case(&server, &proxy, c).await {
            failures.push(format!("{}: {why}", c.name));
        }
    }
    println!("{} cases in {:?}", cases.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_push_answers_are_rejected() {
    run_all(push_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pull_answers_are_rejected() {
    run_all(pull_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pull_bundle_order_is_rejected() {
    run_all(pull_order_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_snapshot_answers_are_rejected() {
    run_all(snapshot_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_snapshot_repeats_are_rejected() {
    run_all(snapshot_duplicate_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_attach_answers_are_rejected() {
    run_all(attach_cases()).await;
}
