//! The parsed model of one `#[derive(SyncTable)]` struct, validated once.

use crate::attrs::parse_struct_attrs;
use crate::field::{Field, KeyType};
use syn::{Data, DeriveInput, Fields};

pub struct Model {
    pub ident: syn::Ident,
    pub generics: syn::Generics,
    pub table_name: String,
    pub fields: Vec<Field>,
    /// Index into `fields` of the `#[sync(key)]` field.
    pub key: usize,
    pub key_is_blob: bool,
}

impl Model {
    pub fn from_item(item: &DeriveInput) -> syn::Result<Self> {
        let struct_attrs = parse_struct_attrs(&item.attrs)?;
        let named = match &item.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => named,
                _ => {
                    return Err(syn::Error::new(
                        item.ident.span(),
                        "SyncTable needs a struct with named fields, one per column",
                    ));
                }
            },
            _ => {
                return Err(syn::Error::new(
                    item.ident.span(),
                    "SyncTable can only be derived for a struct with one field per column",
                ));
            }
        };
        let fields = named
            .named
            .iter()
            .map(Field::from_syn)
            .collect::<syn::Result<Vec<_>>>()?;

        for (i, field) in fields.iter().enumerate() {
            if let Some(first) = fields[..i]
                .iter()
                .find(|f| f.column_name.eq_ignore_ascii_case(&field.column_name))
            {
                return Err(syn::Error::new(
                    field.ident.span(),
                    format!(
                        "column `{}` is already mapped by field `{}`",
                        field.column_name, first.ident
                    ),
                ));
            }
        }

        let mut keys = fields
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.attrs.key.map(|span| (i, span)));
        let key = match keys.next() {
            Some((i, _)) => i,
            None => {
                return Err(syn::Error::new(
                    item.ident.span(),
                    "SyncTable needs a key: mark the field that holds the row's UUID with `#[sync(key)]`",
                ));
            }
        };
        if let Some((_, span)) = keys.next() {
            return Err(syn::Error::new(
                span,
                format!(
                    "only one field can be `#[sync(key)]`, and `{}` already is: oversync tables have exactly one UUID key column",
                    fields[key].ident
                ),
            ));
        }

        let key_field = &fields[key];
        let key_is_blob = match key_field.key_type() {
            KeyType::Text => false,
            KeyType::Blob => true,
            KeyType::Optional => {
                return Err(syn::Error::new(
                    key_field.span(),
                    "the sync key can never be NULL: use `String` (or `Vec<u8>`) instead of `Option<_>` and declare the column NOT NULL",
                ));
            }
            KeyType::Integer => {
                return Err(syn::Error::new(
                    key_field.span(),
                    "integer keys are not supported: oversync keys are UUIDs; use `String` for a TEXT UUID column or `Vec<u8>`/`[u8; 16]` for a BLOB UUID column",
                ));
            }
            KeyType::Unsuitable => {
                return Err(syn::Error::new(
                    key_field.span(),
                    "this type cannot hold a UUID key: use `String` for a TEXT UUID column or `Vec<u8>`/`[u8; 16]` for a BLOB UUID column",
                ));
            }
            KeyType::Unknown => {
                return Err(syn::Error::new(
                    key_field.span(),
                    "cannot tell how this type stores the UUID key: write `#[sync(key, kind = \"text\")]` for a TEXT UUID column or `#[sync(key, kind = \"blob\")]` for a 16-byte BLOB column",
                ));
            }
        };

        let (table_name, table_span) = match struct_attrs.table_name {
            Some(name) => (name.value, name.span),
            None => (infer_table_name(&item.ident.to_string()), item.ident.span()),
        };
        if table_name.to_ascii_lowercase().starts_with("_sync_") {
            return Err(syn::Error::new(
                table_span,
                "tables named `_sync_*` are reserved for oversync's own state",
            ));
        }

        Ok(Model {
            ident: item.ident.clone(),
            generics: item.generics.clone(),
            table_name,
            fields,
            key,
            key_is_blob,
        })
    }

    pub fn key_field(&self) -> &Field {
        &self.fields[self.key]
    }
}

/// Diesel's default: the struct name in snake_case with an `s` appended (`TodoItem` -> `todo_items`).
fn infer_table_name(struct_name: &str) -> String {
    let mut out = String::with_capacity(struct_name.len() + 4);
    for (i, ch) in struct_name.chars().enumerate() {
        if ch.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(ch.to_lowercase());
        } else {
            out.push(ch);
        }
    }
    out.push('s');
    out
}
