//! Parsing of the `#[diesel(...)]` options we read and of our own `#[sync(...)]` options.
//!
//! Diesel options we do not need (`check_for_backend`, `primary_key`, `belongs_to`, ...) are
//! skipped, so a model keeps every attribute it already had.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, Lit, LitStr, Meta, Token};

/// A name with the span to point errors at.
#[derive(Clone, Debug)]
pub struct SpannedName {
    pub value: String,
    pub span: Span,
}

/// Struct-level options.
#[derive(Default)]
pub struct StructAttrs {
    /// `#[diesel(table_name = ...)]`: the last path segment names the SQLite table.
    pub table_name: Option<SpannedName>,
}

/// How the key column stores its UUID, when the Rust type does not tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKindOverride {
    Text,
    Blob,
}

/// A column's value kind named by `#[sync(kind = "...")]` on a non-key field; mirrors
/// `oversync_diesel::ValueKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKindOverride {
    Text,
    Integer,
    Real,
    Bool,
    Blob,
    Timestamp,
    TimestampTz,
    Date,
    Time,
    Uuid,
}

impl ValueKindOverride {
    /// The names `kind = "..."` accepts, in the order the error message lists them.
    const NAMES: [(&'static str, ValueKindOverride); 10] = [
        ("text", ValueKindOverride::Text),
        ("integer", ValueKindOverride::Integer),
        ("real", ValueKindOverride::Real),
        ("bool", ValueKindOverride::Bool),
        ("blob", ValueKindOverride::Blob),
        ("timestamp", ValueKindOverride::Timestamp),
        ("timestamptz", ValueKindOverride::TimestampTz),
        ("date", ValueKindOverride::Date),
        ("time", ValueKindOverride::Time),
        ("uuid", ValueKindOverride::Uuid),
    ];

    fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, kind)| *kind)
    }
}

/// Field-level options.
#[derive(Default)]
pub struct FieldAttrs {
    /// `#[diesel(column_name = ...)]`.
    pub column_name: Option<SpannedName>,
    /// `#[diesel(embed)]`: not supported for synced tables.
    pub embed: Option<Span>,
    /// `#[sync(key)]`: this field is the sync key; the span points at `key`.
    pub key: Option<Span>,
    /// `#[sync(key, kind = "text" | "blob")]`, for key types the derive cannot classify.
    pub key_kind: Option<(KeyKindOverride, Span)>,
    /// `#[sync(kind = "...")]` on a non-key field, for value types the derive cannot classify.
    pub value_kind: Option<(ValueKindOverride, Span)>,
    /// `#[sync(blob)]`: this column stores BLOBs although its Rust type is not a byte type.
    pub blob: Option<Span>,
}

pub fn parse_struct_attrs(attrs: &[Attribute]) -> syn::Result<StructAttrs> {
    let mut out = StructAttrs::default();
    for attr in attrs {
        if attr.path().is_ident("diesel") {
            for meta in attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)? {
                if let Meta::NameValue(nv) = &meta
                    && nv.path.is_ident("table_name")
                {
                    out.table_name = Some(name_from_expr(&nv.value)?);
                }
            }
        } else if attr.path().is_ident("sync") {
            return Err(syn::Error::new(
                attr.span(),
                "`#[sync(...)]` goes on a field: mark the key field with `#[sync(key)]`",
            ));
        }
    }
    Ok(out)
}

pub fn parse_field_attrs(attrs: &[Attribute]) -> syn::Result<FieldAttrs> {
    let mut out = FieldAttrs::default();
    let mut kind_given: Option<(String, Span)> = None;
    for attr in attrs {
        if attr.path().is_ident("diesel") {
            for meta in attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)? {
                match &meta {
                    Meta::NameValue(nv) if nv.path.is_ident("column_name") => {
                        out.column_name = Some(name_from_expr(&nv.value)?);
                    }
                    Meta::Path(p) if p.is_ident("embed") => out.embed = Some(p.span()),
                    _ => {}
                }
            }
        } else if attr.path().is_ident("sync") {
            for option in
                attr.parse_args_with(Punctuated::<SyncOption, Token![,]>::parse_terminated)?
            {
                match option {
                    SyncOption::Key(span) => {
                        if out.key.is_some() {
                            return Err(syn::Error::new(
                                span,
                                "`key` is given twice on this field",
                            ));
                        }
                        out.key = Some(span);
                    }
                    SyncOption::Kind(kind, span) => kind_given = Some((kind, span)),
                    SyncOption::Blob(span) => out.blob = Some(span),
                }
            }
        }
    }
    // On the key field `kind` says how the UUID is stored; elsewhere it names the value kind.
    if let Some((name, span)) = kind_given {
        if out.key.is_some() {
            let kind = match name.as_str() {
                "text" => KeyKindOverride::Text,
                "blob" => KeyKindOverride::Blob,
                _ => {
                    return Err(syn::Error::new(
                        span,
                        "on the key `kind` is \"text\" (canonical UUID string) or \"blob\" (16 bytes)",
                    ));
                }
            };
            out.key_kind = Some((kind, span));
        } else {
            let kind = ValueKindOverride::from_name(&name).ok_or_else(|| {
                let names: Vec<String> = ValueKindOverride::NAMES
                    .iter()
                    .map(|(n, _)| format!("\"{n}\""))
                    .collect();
                syn::Error::new(
                    span,
                    format!(
                        "unknown value kind {name:?}: expected one of {}",
                        names.join(", ")
                    ),
                )
            })?;
            out.value_kind = Some((kind, span));
        }
    }
    Ok(out)
}

/// One option inside `#[sync(...)]`.
enum SyncOption {
    Key(Span),
    Kind(String, Span),
    Blob(Span),
}

impl Parse for SyncOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let ident: Ident = input.parse()?;
        match ident.to_string().as_str() {
            "key" => {
                if input.peek(Token![=]) {
                    return Err(syn::Error::new(
                        ident.span(),
                        "write `#[sync(key)]` on the key field itself, without a value",
                    ));
                }
                Ok(SyncOption::Key(ident.span()))
            }
            "kind" => {
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                Ok(SyncOption::Kind(lit.value(), lit.span()))
            }
            "blob" => Ok(SyncOption::Blob(ident.span())),
            other => Err(syn::Error::new(
                ident.span(),
                format!(
                    "unknown sync option `{other}`: expected `key`, `kind = \"...\"` or `blob`"
                ),
            )),
        }
    }
}

/// Reads `name`, `path::to::name` or `"name"` as a SQL identifier.
fn name_from_expr(expr: &Expr) -> syn::Result<SpannedName> {
    match expr {
        Expr::Path(p) => match p.path.segments.last() {
            Some(seg) => Ok(SpannedName {
                value: seg.ident.to_string(),
                span: p.span(),
            }),
            None => Err(syn::Error::new(p.span(), "expected a table or column name")),
        },
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(s) => Ok(SpannedName {
                value: s.value(),
                span: s.span(),
            }),
            _ => Err(syn::Error::new(
                lit.span(),
                "expected a table or column name",
            )),
        },
        other => Err(syn::Error::new(
            other.span(),
            "expected a table or column name",
        )),
    }
}
