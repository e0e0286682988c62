//! Randomized check of the capture triggers against a plain model of the coalescing rules:
//! random inserts, updates, deletes, key changes and cascades over two tables joined by a
//! cascading foreign key, with simulated syncs in between (so rows move between "never
//! synced", "synced" and "deleted on the server"). Seeds are printed on failure; set
//! `OVERSYNC_MODEL_SEED` to replay one, `OVERSYNC_MODEL_CASES` for more cases.

mod common;

use common::*;
use diesel::RunQueryDsl;
use diesel::sql_types::{BigInt, Text};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    op: &'static str,
    base: i64,
    payload: Option<Value>,
    /// Statement that first touched the key: ordinals must follow it.
    first_stmt: u64,
}

#[derive(Default)]
struct Model {
    authors: BTreeMap<String, Value>,
    books: BTreeMap<String, Value>,
    /// (table, id) -> (row_version, live) as the server last said.
    server: HashMap<(&'static str, String), (i64, bool)>,
    dirty: HashMap<(&'static str, String), Entry>,
    stmt: u64,
    version: i64,
    next_id: u32,
}

impl Model {
    fn write(&mut self, table: &'static str, id: &str, payload: Value) {
        let server = self.server.get(&(table, id.to_string())).copied();
        let op = if matches!(server, Some((_, true))) {
            "UPDATE"
        } else {
            "INSERT"
        };
        let stmt = self.stmt;
        let e = self.dirty.entry((table, id.to_string())).or_insert(Entry {
            op,
            base: server.map(|s| s.0).unwrap_or(0),
            payload: None,
            first_stmt: stmt,
        });
        e.op = op;
        e.payload = Some(payload);
    }

    fn delete(&mut self, table: &'static str, id: &str) {
        let k = (table, id.to_string());
        match self.server.get(&k).copied() {
            Some((version, true)) => {
                let stmt = self.stmt;
                let e = self.dirty.entry(k).or_insert(Entry {
                    op: "DELETE",
                    base: version,
                    payload: None,
                    first_stmt: stmt,
                });
                e.op = "DELETE";
                e.payload = None;
            }
            _ => {
                self.dirty.remove(&k);
            }
        }
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        uuid(self.next_id)
    }
}

fn author_payload(id: &str, name: &str, rating: Option<f64>) -> Value {
    json!({"id": id, "name": name, "rating": rating, "born": null})
}

fn book_payload(id: &str, author: &str, title: Option<&str>, cover: Option<&[u8]>) -> Value {
    json!({"id": id, "author_id": author, "title": title, "cover": cover.map(hex)})
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sql_str(v: Option<&str>) -> String {
    v.map(|s| format!("'{}'", s.replace('\'', "''")))
        .unwrap_or_else(|| "NULL".into())
}

fn pick<'a>(rng: &mut StdRng, keys: impl Iterator<Item = &'a String>) -> Option<String> {
    let keys: Vec<&String> = keys.collect();
    if keys.is_empty() {
        None
    } else {
        Some(keys[rng.gen_range(0..keys.len())].clone())
    }
}

/// Simulates a push that the server accepted: every pending change is now server state.
fn sync(db: &mut Db, m: &mut Model) {
    m.version += 1;
    exec(
        &mut db.conn,
        "UPDATE _sync_apply_state SET apply_mode = 1; DELETE FROM _sync_dirty_rows;",
    );
    let dirty: Vec<_> = m.dirty.drain().collect();
    for ((table, id), e) in dirty {
        let live = e.op != "DELETE";
        m.server.insert((table, id.clone()), (m.version, live));
        diesel::sql_query(
            "INSERT INTO _sync_row_state(schema_name, table_name, key_json, row_version, deleted) VALUES ('main', ?, ?, ?, ?) \
             ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET row_version = excluded.row_version, deleted = excluded.deleted",
        )
        .bind::<Text, _>(table)
        .bind::<Text, _>(key(&id))
        .bind::<BigInt, _>(m.version)
        .bind::<BigInt, _>(i64::from(!live))
        .execute(&mut *db.conn)
        .expect("row state");
    }
    exec(&mut db.conn, "UPDATE _sync_apply_state SET apply_mode = 0");
}

fn step(db: &mut Db, m: &mut Model, rng: &mut StdRng) -> String {
    m.stmt += 1;
    match rng.gen_range(0..100) {
        0..=19 => {
            // Insert an author: a new key, or the key of one deleted locally or on the server.
            let deleted: Vec<String> = m
                .server
                .keys()
                .filter(|(t, id)| *t == "authors" && !m.authors.contains_key(id))
                .map(|(_, id)| id.clone())
                .collect();
            let id = if !deleted.is_empty() && rng.gen_bool(0.3) {
                deleted[rng.gen_range(0..deleted.len())].clone()
            } else {
                m.fresh_id()
            };
            let rating = rng.gen_bool(0.5).then(|| rng.r#gen::<f64>() * 10.0);
            let name = format!("a{}", rng.gen_range(0..1000));
            // Bound, as Diesel binds it: SQLite's parsing of float literals is not exact.
            diesel::sql_query("INSERT INTO authors VALUES (?, ?, ?, NULL)")
                .bind::<Text, _>(&id)
                .bind::<Text, _>(&name)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Double>, _>(rating)
                .execute(&mut *db.conn)
                .expect("insert author");
            let p = author_payload(&id, &name, rating);
            m.authors.insert(id.clone(), p.clone());
            m.write("authors", &id, p);
            format!("insert author {id}")
        }
        20..=39 => {
            let Some(author) = pick(rng, m.authors.keys()) else {
                return "skip".into();
            };
            let id = m.fresh_id();
            let title = rng
                .gen_bool(0.7)
                .then(|| format!("t{}", rng.gen_range(0..1000)));
            let cover: Option<Vec<u8>> = rng
                .gen_bool(0.5)
                .then(|| (0..rng.gen_range(0..6)).map(|_| rng.r#gen()).collect());
            exec(
                &mut db.conn,
                &format!(
                    "INSERT INTO books VALUES ('{id}', '{author}', {}, {})",
                    sql_str(title.as_deref()),
                    cover
                        .as_ref()
                        .map(|c| format!("x'{}'", hex(c)))
                        .unwrap_or("NULL".into())
                ),
            );
            let p = book_payload(&id, &author, title.as_deref(), cover.as_deref());
            m.books.insert(id.clone(), p.clone());
            m.write("books", &id, p);
            format!("insert book {id}")
        }
        40..=54 => {
            let Some(id) = pick(rng, m.authors.keys()) else {
                return "skip".into();
            };
            let name = format!("u{}", rng.gen_range(0..1000));
            exec(
                &mut db.conn,
                &format!("UPDATE authors SET name = '{name}' WHERE id = '{id}'"),
            );
            let p = m.authors.get_mut(&id).expect("author");
            p["name"] = json!(name);
            let p = p.clone();
            m.write("authors", &id, p);
            format!("update author {id}")
        }
        55..=64 => {
            let Some(id) = pick(rng, m.books.keys()) else {
                return "skip".into();
            };
            let title = rng
                .gen_bool(0.5)
                .then(|| format!("v{}", rng.gen_range(0..1000)));
            exec(
                &mut db.conn,
                &format!(
                    "UPDATE books SET title = {} WHERE id = '{id}'",
                    sql_str(title.as_deref())
                ),
            );
            let p = m.books.get_mut(&id).expect("book");
            p["title"] = json!(title);
            let p = p.clone();
            m.write("books", &id, p);
            format!("update book {id}")
        }
        65..=72 => {
            let Some(id) = pick(rng, m.books.keys()) else {
                return "skip".into();
            };
            exec(
                &mut db.conn,
                &format!("DELETE FROM books WHERE id = '{id}'"),
            );
            m.books.remove(&id);
            m.delete("books", &id);
            format!("delete book {id}")
        }
        73..=80 => {
            let Some(id) = pick(rng, m.authors.keys()) else {
                return "skip".into();
            };
            exec(
                &mut db.conn,
                &format!("DELETE FROM authors WHERE id = '{id}'"),
            );
            let children: Vec<String> = m
                .books
                .iter()
                .filter(|(_, b)| b["author_id"] == json!(id))
                .map(|(k, _)| k.clone())
                .collect();
            for child in children {
                m.books.remove(&child);
                m.delete("books", &child);
            }
            m.authors.remove(&id);
            m.delete("authors", &id);
            format!("delete author {id} (cascade)")
        }
        81..=86 => {
            let Some(old) = pick(rng, m.authors.keys()) else {
                return "skip".into();
            };
            let new = m.fresh_id();
            exec(
                &mut db.conn,
                &format!("UPDATE authors SET id = '{new}' WHERE id = '{old}'"),
            );
            let mut p = m.authors.remove(&old).expect("author");
            p["id"] = json!(new);
            m.delete("authors", &old);
            m.authors.insert(new.clone(), p.clone());
            m.write("authors", &new, p);
            let children: Vec<String> = m
                .books
                .iter()
                .filter(|(_, b)| b["author_id"] == json!(old))
                .map(|(k, _)| k.clone())
                .collect();
            for child in children {
                let b = m.books.get_mut(&child).expect("book");
                b["author_id"] = json!(new);
                let b = b.clone();
                m.write("books", &child, b);
            }
            format!("rekey author {old} -> {new} (cascade)")
        }
        87..=91 => {
            let Some(old) = pick(rng, m.books.keys()) else {
                return "skip".into();
            };
            let new = m.fresh_id();
            exec(
                &mut db.conn,
                &format!("UPDATE books SET id = '{new}' WHERE id = '{old}'"),
            );
            let mut p = m.books.remove(&old).expect("book");
            p["id"] = json!(new);
            m.delete("books", &old);
            m.books.insert(new.clone(), p.clone());
            m.write("books", &new, p);
            format!("rekey book {old} -> {new}")
        }
        _ => {
            sync(db, m);
            "sync".into()
        }
    }
}

fn check(db: &mut Db, m: &Model, history: &[String], seed: u64) {
    let rows = dirty_rows(&mut db.conn);
    let mut actual: HashMap<(String, String), DirtyRow> = HashMap::new();
    for r in &rows {
        actual.insert((r.table_name.clone(), r.key_json.clone()), r.clone());
    }
    let context = || {
        format!(
            "seed {seed}; last steps: {:?}",
            &history[history.len().saturating_sub(8)..]
        )
    };
    assert_eq!(
        actual.len(),
        m.dirty.len(),
        "dirty row count differs; {}",
        context()
    );
    for ((table, id), e) in &m.dirty {
        let r = actual
            .get(&(table.to_string(), key(id)))
            .unwrap_or_else(|| panic!("missing dirty row {table} {id}; {}", context()));
        assert_eq!(r.op, e.op, "op of {table} {id}; {}", context());
        assert_eq!(
            r.base_row_version,
            e.base,
            "base of {table} {id}; {}",
            context()
        );
        assert_eq!(
            r.payload_json(),
            e.payload,
            "payload of {table} {id}; {}",
            context()
        );
    }
    // First-touch order: a key touched first in an earlier statement has a smaller ordinal.
    for a in &rows {
        for b in &rows {
            let ea = &m.dirty[&(table_static(&a.table_name), id_of(&a.key_json))];
            let eb = &m.dirty[&(table_static(&b.table_name), id_of(&b.key_json))];
            if ea.first_stmt < eb.first_stmt {
                assert!(
                    a.dirty_ordinal < b.dirty_ordinal,
                    "ordinal order of {} vs {}; {}",
                    a.key_json,
                    b.key_json,
                    context()
                );
            }
        }
    }
}

fn table_static(t: &str) -> &'static str {
    if t == "authors" { "authors" } else { "books" }
}

fn id_of(key_json: &str) -> String {
    let v: Value = serde_json::from_str(key_json).expect("key json");
    v["id"].as_str().expect("id").to_string()
}

#[test]
fn capture_matches_the_coalescing_model() {
    let cases: u64 = std::env::var("OVERSYNC_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seeds: Vec<u64> = match std::env::var("OVERSYNC_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => vec![seed],
        None => {
            // Fixed seeds in CI, so a red run is a regression and not a new random case.
            let base: u64 = if std::env::var_os("OVERSYNC_LONG_TESTS").is_some() {
                rand::random()
            } else {
                0x6361_7074_7572_6500
            };
            (0..cases).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut db = fresh_db(true);
        let mut model = Model::default();
        let mut history = Vec::new();
        for _ in 0..80 {
            history.push(step(&mut db, &mut model, &mut rng));
            check(&mut db, &model, &history, seed);
        }
    }
}
