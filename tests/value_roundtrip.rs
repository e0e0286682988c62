//! Values keep their local form through a sync. A Diesel model with one field of every value
//! kind the README's type table lists (text, integers, double, bool on a `boolean` and on a
//! `bigint` server column, bytes, `NaiveDateTime` on `timestamp` and `timestamptz`,
//! `DateTime<Utc>`, `NaiveDate`, `NaiveTime`, UUIDs as text and as 16 bytes) is written on
//! one device; after a sync every column reads back identically - as the Diesel value and as
//! the stored SQLite text/storage class - on the writer (push replay), on a second device
//! (pull), on a third device attached afterwards (snapshot) and after a rebuild.
//!
//! The table lives in the test-only schema `value_kinds` the testkit adds to the example
//! server (`with_value_kinds_table`). Fixed proptest seed; 6 cases of up to 6 rows by
//! default, 64 with `OVERSYNC_LONG_TESTS=1`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike as _, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
use oversync_e2e::{fresh_user, new_id, transport_for};
use oversync_testkit::{TestServer, VALUE_KINDS_SCHEMA, with_value_kinds_table};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};
use std::sync::OnceLock;

mod schema {
    diesel::table! {
        value_rows (id) {
            id -> Text,
            label -> Text,
            small -> Nullable<Integer>,
            big -> Nullable<BigInt>,
            ratio -> Nullable<Double>,
            flag -> Nullable<Bool>,
            flag_int -> Nullable<Bool>,
            data -> Nullable<Binary>,
            at_naive -> Nullable<Timestamp>,
            at_tz -> Nullable<TimestamptzSqlite>,
            naive_in_tz -> Nullable<Timestamp>,
            day -> Nullable<Date>,
            clock -> Nullable<Time>,
            ref_text -> Nullable<Text>,
            ref_blob -> Nullable<Binary>,
        }
    }
}
use schema::value_rows;

#[derive(Debug, Clone, PartialEq, SyncTable, Queryable, Selectable, Insertable)]
#[diesel(table_name = value_rows, treat_none_as_null = true)]
struct ValueRow {
    #[sync(key)]
    id: String,
    label: String,
    small: Option<i32>,
    big: Option<i64>,
    ratio: Option<f64>,
    flag: Option<bool>,
    /// A `bool` field on a BIGINT server column.
    flag_int: Option<bool>,
    data: Option<Vec<u8>>,
    at_naive: Option<NaiveDateTime>,
    at_tz: Option<DateTime<Utc>>,
    /// A naive timestamp on a TIMESTAMPTZ server column.
    naive_in_tz: Option<NaiveDateTime>,
    day: Option<NaiveDate>,
    clock: Option<NaiveTime>,
    /// A UUID kept as text in a String (Diesel has no SQLite `Uuid`).
    #[sync(kind = "uuid")]
    ref_text: Option<String>,
    /// A UUID kept as 16 bytes.
    #[sync(blob, kind = "uuid")]
    ref_blob: Option<Vec<u8>>,
}

const APP_SCHEMA: &str = "CREATE TABLE value_rows (id TEXT PRIMARY KEY NOT NULL, label TEXT NOT NULL,
    small INTEGER, big INTEGER, ratio REAL, flag INTEGER, flag_int INTEGER, data BLOB,
    at_naive TEXT, at_tz TEXT, naive_in_tz TEXT, day TEXT, clock TEXT, ref_text TEXT, ref_blob BLOB);";

struct Env {
    rt: tokio::runtime::Runtime,
    server: TestServer,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = TestServer::start_with(with_value_kinds_table).expect("example server");
        Env { rt, server }
    })
}

/// A device syncing only the value-kinds table.
struct Device {
    conn: OversyncConnection,
    _dir: tempfile::TempDir,
}

impl Device {
    async fn attached(user: &str) -> Device {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("device.db");
        let config = OversyncConfig::new(VALUE_KINDS_SCHEMA).table::<ValueRow>();
        let mut conn = OversyncConnection::establish(path.to_str().expect("utf-8"), config)
            .expect("open database");
        conn.batch_execute(APP_SCHEMA).expect("app schema");
        oversync_diesel::migrations::run_sync_migrations(&mut conn).expect("sync migrations");
        conn.oversync().open().expect("oversync open");
        conn.set_transport(transport_for(env().server.base_url(), user));
        conn.oversync().attach(user).await.expect("attach");
        Device { conn, _dir: dir }
    }

    async fn sync(&mut self) {
        self.conn.oversync().sync().await.expect("sync");
    }

    /// Rows as Diesel reads them, by key.
    fn rows(&mut self) -> Vec<ValueRow> {
        value_rows::table
            .order(value_rows::id)
            .select(ValueRow::as_select())
            .load(&mut *self.conn)
            .expect("load rows")
    }

    /// Rows as stored: every column's SQLite `quote()` (storage class and exact text), so a
    /// timestamp written back in another text form fails even where Diesel reads it alike.
    fn stored(&mut self) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Stored {
            #[diesel(sql_type = diesel::sql_types::Text)]
            row: String,
        }
        let columns: Vec<String> = ValueRow::SPEC
            .columns
            .iter()
            .map(|c| format!("quote(\"{}\")", c.name))
            .collect();
        let sql = format!(
            "SELECT {} AS row FROM value_rows ORDER BY id",
            columns.join(" || '|' || ")
        );
        diesel::sql_query(sql)
            .load::<Stored>(&mut *self.conn)
            .expect("stored rows")
            .into_iter()
            .map(|s| s.row)
            .collect()
    }
}

/// Instants of years 1900..2200 (the server's TIMESTAMPTZ prints them plainly in any zone)
/// with microsecond precision, PostgreSQL's; fractions of 0, 3, 6 digits as Diesel writes them.
fn instant() -> impl Strategy<Value = NaiveDateTime> {
    let secs = -2_208_988_800i64..7_258_118_400;
    let micros = prop_oneof![
        Just(0u32),
        (0u32..1000).prop_map(|ms| ms * 1000),
        0u32..1_000_000
    ];
    (secs, micros).prop_map(|(s, us)| {
        DateTime::from_timestamp(s, us * 1000)
            .expect("in range")
            .naive_utc()
    })
}

fn row() -> impl Strategy<Value = ValueRow> {
    let day =
        (1i32..=3_652_059).prop_map(|d| NaiveDate::from_num_days_from_ce_opt(d).expect("in range"));
    let clock = (0u32..86_400, prop_oneof![Just(0u32), 0u32..1_000_000]).prop_map(|(s, us)| {
        NaiveTime::from_num_seconds_from_midnight_opt(s, us * 1000).expect("in range")
    });
    let ratio = prop_oneof![
        proptest::num::f64::NORMAL,
        Just(0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE)
    ];
    let uuid = any::<u128>().prop_map(uuid::Uuid::from_u128);
    (
        (
            "\\PC{0,12}",
            proptest::option::of(any::<i32>()),
            // The protocol hashes numbers as doubles: integers round-trip within ±2^53 (README).
            proptest::option::of(-(1i64 << 53) + 1..(1i64 << 53)),
            proptest::option::of(ratio),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
        ),
        (
            proptest::option::of(instant()),
            proptest::option::of(instant().prop_map(|t| t.and_utc())),
            proptest::option::of(instant()),
            proptest::option::of(day),
            proptest::option::of(clock),
            proptest::option::of(uuid.clone().prop_map(|u| u.to_string())),
            proptest::option::of(uuid.prop_map(|u| u.as_bytes().to_vec())),
        ),
    )
        .prop_map(
            |(
                (label, small, big, ratio, flag, flag_int, data),
                (at_naive, at_tz, naive_in_tz, day, clock, ref_text, ref_blob),
            )| ValueRow {
                id: new_id(),
                label,
                small,
                big,
                ratio,
                flag,
                flag_int,
                data,
                at_naive,
                at_tz,
                naive_in_tz,
                day,
                clock,
                ref_text,
                ref_blob,
            },
        )
}

fn cases() -> u32 {
    if std::env::var_os("OVERSYNC_LONG_TESTS").is_some() {
        64
    } else {
        6
    }
}

/// Writes `rows` on a device and checks every other device and path reads them identically.
async fn round_trip(rows: Vec<ValueRow>) -> Result<(), TestCaseError> {
    let user = fresh_user("values");
    let mut writer = Device::attached(&user).await;
    let mut puller = Device::attached(&user).await;
    diesel::insert_into(value_rows::table)
        .values(&rows)
        .execute(&mut *writer.conn)
        .expect("insert");
    let (want_rows, want_stored) = (writer.rows(), writer.stored());
    let mut sorted = rows.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    prop_assert_eq!(&want_rows, &sorted, "Diesel reads back what it wrote");

    writer.sync().await;
    prop_assert_eq!(&writer.rows(), &want_rows, "writer after push replay");
    prop_assert_eq!(&writer.stored(), &want_stored, "writer after push replay");

    puller.sync().await;
    prop_assert_eq!(&puller.rows(), &want_rows, "second device after pull");
    prop_assert_eq!(&puller.stored(), &want_stored, "second device after pull");

    let mut hydrated = Device::attached(&user).await;
    prop_assert_eq!(
        &hydrated.stored(),
        &want_stored,
        "device attached afterwards"
    );

    puller.conn.oversync().rebuild().await.expect("rebuild");
    prop_assert_eq!(&puller.rows(), &want_rows, "after rebuild");
    prop_assert_eq!(&puller.stored(), &want_stored, "after rebuild");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        rng_seed: RngSeed::Fixed(0x0005_a1e5_2026_1201),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/value_roundtrip.txt",
        ))),
        max_shrink_iters: 32,
        ..ProptestConfig::default()
    })]

    #[test]
    fn values_read_back_identically_after_push_pull_and_rebuild(
        rows in proptest::collection::vec(row(), 1..6),
    ) {
        env().rt.block_on(round_trip(rows))?;
    }
}

/// Nanoseconds do not fit PostgreSQL's microseconds: the first sync rounds them, and from
/// then on the value is stable - equal on every device and unchanged by further syncs.
#[test]
fn nanosecond_timestamps_are_stable_after_the_first_sync() {
    env().rt.block_on(async {
        let user = fresh_user("values-nanos");
        let mut writer = Device::attached(&user).await;
        let mut puller = Device::attached(&user).await;
        let at = NaiveDate::from_ymd_opt(2026, 12, 1)
            .unwrap()
            .and_hms_nano_opt(19, 39, 31, 502_061_202)
            .unwrap();
        let clock = NaiveTime::from_hms_nano_opt(19, 39, 31, 502_061_702).unwrap();
        let row = ValueRow {
            id: new_id(),
            label: "nanos".into(),
            small: None,
            big: None,
            ratio: None,
            flag: Some(true),
            flag_int: Some(false),
            data: None,
            at_naive: Some(at),
            at_tz: Some(at.and_utc()),
            naive_in_tz: Some(at),
            day: None,
            clock: Some(clock),
            ref_text: None,
            ref_blob: None,
        };
        diesel::insert_into(value_rows::table)
            .values(&row)
            .execute(&mut *writer.conn)
            .unwrap();
        writer.sync().await;
        puller.sync().await;
        let once = writer.stored();
        assert_eq!(puller.stored(), once, "devices agree after one sync");
        let got = &writer.rows()[0];
        let micros = at.with_nanosecond(502_061_000).unwrap();
        assert_eq!(
            got.at_naive,
            Some(micros),
            "rounded to PostgreSQL's microseconds"
        );
        assert_eq!(got.at_tz, Some(micros.and_utc()));
        assert_eq!(got.naive_in_tz, Some(micros));
        assert_eq!(
            got.clock,
            Some(NaiveTime::from_hms_micro_opt(19, 39, 31, 502_062).unwrap())
        );
        assert!(
            once[0].contains("'2026-12-01 19:39:31.502061'"),
            "{}",
            once[0]
        );

        // A second round trip through the server changes nothing.
        diesel::update(value_rows::table)
            .set(value_rows::label.eq("again"))
            .execute(&mut *writer.conn)
            .unwrap();
        writer.sync().await;
        puller.sync().await;
        let twice = writer.stored();
        assert_eq!(puller.stored(), twice);
        assert_eq!(twice[0].replace("'again'", "'nanos'"), once[0]);
        let mut hydrated = Device::attached(&user).await;
        assert_eq!(hydrated.stored(), twice, "a device attached afterwards");
    });
}
