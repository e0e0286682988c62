//! Expansion snapshots (insta) and the model's error messages, without a compiler round trip.
//! The compile-fail suite in `tests/compile_fail.rs` pins what users see.

use crate::sync_table::expand_for_test;

fn expand(src: &str) -> String {
    let item: syn::DeriveInput = syn::parse_str(src).expect("test input parses");
    let tokens = expand_for_test(item).expect("derive succeeds");
    let file: syn::File = syn::parse2(tokens).expect("expansion is valid Rust");
    prettyplease::unparse(&file)
}

fn error(src: &str) -> String {
    let item: syn::DeriveInput = syn::parse_str(src).expect("test input parses");
    match expand_for_test(item) {
        Ok(_) => panic!("derive should fail for: {src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn text_key_model_expansion() {
    insta::assert_snapshot!(expand(
        r#"
        #[derive(SyncTable)]
        #[diesel(table_name = crate::schema::posts, check_for_backend(diesel::sqlite::Sqlite))]
        struct Post {
            #[sync(key)]
            id: String,
            title: String,
            #[diesel(column_name = body)]
            content: Option<String>,
            author_id: Option<String>,
        }
        "#
    ));
}

#[test]
fn blob_key_and_blob_columns_are_hex_encoded() {
    let out = expand(
        r#"
        #[diesel(table_name = files)]
        struct File {
            #[sync(key)]
            id: Vec<u8>,
            name: String,
            data: Option<Vec<u8>>,
            #[sync(blob)]
            thumbnail: Thumb,
        }
        "#,
    );
    assert!(
        out.contains("key_kind: ::oversync_diesel::KeyKind::Blob"),
        "{out}"
    );
    let compact: String = out.split_whitespace().collect();
    for column in ["id", "data", "thumbnail"] {
        assert!(
            compact.contains(&format!("name:\"{column}\",is_blob:true")),
            "{column} should be a blob column:\n{out}"
        );
    }
    assert!(compact.contains("name:\"name\",is_blob:false"), "{out}");
    // Triggers render only the key (BLOB keys as hex); row payloads are read at freeze.
    assert!(out.contains("lower(hex(NEW.\\\"id\\\"))"), "{out}");
    assert!(!out.contains("NEW.\\\"data\\\""), "{out}");
    assert!(out.contains("length(NEW.\\\"id\\\") = 16"), "{out}");
}

#[test]
fn table_name_defaults_like_diesel() {
    let out = expand("struct TodoItem { #[sync(key)] id: String }");
    assert!(out.contains("table_name: \"todo_items\""), "{out}");
}

#[test]
fn custom_key_type_with_kind() {
    let out = expand(r#"struct Note { #[sync(key, kind = "text")] id: NoteId }"#);
    assert!(out.contains("KeyKind::Text"), "{out}");
}

#[test]
fn value_kinds_follow_the_rust_types() {
    let out = expand(
        r#"
        struct Row {
            #[sync(key)]
            id: String,
            name: String,
            small: Option<i32>,
            big: i64,
            ratio: Option<f64>,
            flag: bool,
            data: Option<Vec<u8>>,
            at: chrono::NaiveDateTime,
            at_tz: Option<DateTime<Utc>>,
            day: NaiveDate,
            clock: Option<chrono::NaiveTime>,
            other: uuid::Uuid,
            typed: Option<oversync_diesel::types::UuidText>,
            wrapped: Wrapped,
            #[sync(kind = "timestamp")]
            stamp: Stamp,
            #[sync(blob, kind = "uuid")]
            owner: Vec<u8>,
            #[sync(kind = "bool")]
            on: MyBool,
        }
        "#,
    );
    let compact: String = out.split_whitespace().collect();
    for (column, kind) in [
        ("id", "Uuid"),
        ("name", "Text"),
        ("small", "Integer"),
        ("big", "Integer"),
        ("ratio", "Real"),
        ("flag", "Bool"),
        ("data", "Blob"),
        ("at", "Timestamp"),
        ("at_tz", "TimestampTz"),
        ("day", "Date"),
        ("clock", "Time"),
        ("other", "Uuid"),
        ("typed", "Uuid"),
        ("wrapped", "Text"),
        ("stamp", "Timestamp"),
        ("owner", "Uuid"),
        ("on", "Bool"),
    ] {
        assert!(
            compact.contains(&format!(
                "name:\"{column}\",is_blob:{},kind:::oversync_diesel::ValueKind::{kind},",
                matches!(column, "data" | "owner")
            )),
            "{column} should be {kind}:\n{out}"
        );
    }
}

#[test]
fn rejections_say_what_to_do() {
    assert!(
        error("struct A { id: String }")
            .contains("mark the field that holds the row's UUID with `#[sync(key)]`")
    );
    assert!(
        error("struct A { #[sync(key)] id: String, #[sync(key)] other: String }")
            .contains("only one field can be `#[sync(key)]`")
    );
    assert!(error("struct A { #[sync(key)] id: i64 }").contains("integer keys are not supported"));
    assert!(error("struct A { #[sync(key)] id: Option<String> }").contains("can never be NULL"));
    assert!(error("struct A { #[sync(key)] id: f64 }").contains("cannot hold a UUID key"));
    assert!(error("struct A { #[sync(key)] id: [u8; 8] }").contains("cannot hold a UUID key"));
    assert!(
        error("struct A { #[sync(key)] id: MyId }").contains("kind = \\\"text\\\"")
            || error("struct A { #[sync(key)] id: MyId }").contains("kind = \"text\"")
    );
    assert!(
        error("struct A { #[sync(key)] id: String, #[diesel(column_name = id)] b: String }")
            .contains("already mapped")
    );
    assert!(error("struct A(String);").contains("named fields"));
    assert!(
        error("#[diesel(table_name = _sync_x)] struct A { #[sync(key)] id: String }")
            .contains("reserved")
    );
    assert!(
        error("struct A { #[sync(key, nope)] id: String }").contains("unknown sync option `nope`")
    );
    assert!(
        error(r#"struct A { #[sync(key, kind = "uuid")] id: String }"#)
            .contains("on the key `kind` is")
    );
    assert!(
        error(r#"struct A { #[sync(key)] id: String, #[sync(kind = "datetime")] at: X }"#)
            .contains("unknown value kind \"datetime\"")
    );
}

#[test]
fn types_from_macro_rules_are_seen_through_their_invisible_group() {
    // `macro_rules!` passes `$t:ty` as a `Type::Group`; build that shape by hand.
    let mut item: syn::DeriveInput =
        syn::parse_str("struct F { #[sync(key)] id: Vec<u8>, data: Option<Vec<u8>>, r: f64 }")
            .unwrap();
    if let syn::Data::Struct(s) = &mut item.data {
        for field in s.fields.iter_mut() {
            field.ty = syn::Type::Group(syn::TypeGroup {
                group_token: Default::default(),
                elem: Box::new(field.ty.clone()),
            });
        }
    }
    let tokens = expand_for_test(item).expect("derive succeeds through groups");
    let compact: String = tokens.to_string().split_whitespace().collect();
    assert!(compact.contains("KeyKind::Blob"), "{compact}");
    assert!(compact.contains("name:\"data\",is_blob:true"), "{compact}");
    assert!(
        compact.contains("name:\"r\",is_blob:false,kind:::oversync_diesel::ValueKind::Real"),
        "the f64 column is a REAL (rendered with 17 digits at freeze): {compact}"
    );
}
