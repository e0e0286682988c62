//! One struct field as a synced column: its SQL name and what its Rust type says about storage.

use crate::attrs::{
    FieldAttrs, KeyKindOverride, ValueKindOverride as ValueKind, parse_field_attrs,
};
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, Type};

/// How a Rust type can store a sync key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// `String` or `uuid::Uuid`: canonical UUID text.
    Text,
    /// `Vec<u8>` or `[u8; 16]`: 16 UUID bytes.
    Blob,
    /// `Option<_>`: a key can never be NULL.
    Optional,
    /// An integer type: protocol keys are UUIDs, never integers.
    Integer,
    /// A type that cannot hold a UUID (floats, bool, ...).
    Unsuitable,
    /// A type the derive cannot see through (a newtype, an alias): needs `kind = ...`.
    Unknown,
}

pub struct Field {
    pub ident: syn::Ident,
    pub column_name: String,
    pub ty: Type,
    pub attrs: FieldAttrs,
}

impl Field {
    pub fn from_syn(field: &syn::Field) -> syn::Result<Self> {
        let ident = field
            .ident
            .clone()
            .ok_or_else(|| syn::Error::new(field.span(), "SyncTable needs named fields"))?;
        let attrs = parse_field_attrs(&field.attrs)?;
        if let Some(span) = attrs.embed {
            return Err(syn::Error::new(
                span,
                "`#[diesel(embed)]` is not supported on a SyncTable: list the columns of the synced table directly",
            ));
        }
        let column_name = match &attrs.column_name {
            Some(name) => name.value.clone(),
            None => ident.to_string().trim_start_matches("r#").to_string(),
        };
        Ok(Field {
            ident,
            column_name,
            ty: field.ty.clone(),
            attrs,
        })
    }

    pub fn span(&self) -> Span {
        self.ty.span()
    }

    /// Whether the column stores BLOBs, which the capture triggers hex-encode.
    pub fn is_blob(&self) -> bool {
        self.attrs.blob.is_some()
            || matches!(self.attrs.key_kind, Some((KeyKindOverride::Blob, _)))
            || matches!(self.attrs.value_kind, Some((ValueKind::Blob, _)))
            || is_byte_type(strip_option(&self.ty))
    }

    /// What the column's values are: the key holds a UUID; otherwise `#[sync(kind = ...)]`,
    /// `#[sync(blob)]`, then the Rust type decide.
    pub fn value_kind(&self) -> ValueKind {
        if self.attrs.key.is_some() {
            return ValueKind::Uuid;
        }
        if let Some((kind, _)) = self.attrs.value_kind {
            return kind;
        }
        if self.attrs.blob.is_some() {
            return ValueKind::Blob;
        }
        classify_value_type(strip_option(&self.ty))
    }

    /// Whether the field is a float, whose JSON rendering needs 17 significant digits: SQLite's
    /// `json_object` keeps only 15, which would change the value on its way to the server.
    pub fn key_type(&self) -> KeyType {
        if let Some((kind, _)) = self.attrs.key_kind {
            return match kind {
                KeyKindOverride::Text => KeyType::Text,
                KeyKindOverride::Blob => KeyType::Blob,
            };
        }
        classify_key_type(&self.ty)
    }
}

/// Sees through `(T)` and the invisible groups `macro_rules!` wraps around `$t:ty`.
fn unwrap_type(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => unwrap_type(&g.elem),
        Type::Paren(p) => unwrap_type(&p.elem),
        other => other,
    }
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match unwrap_type(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

fn single_generic_arg(seg: &syn::PathSegment) -> Option<&Type> {
    match &seg.arguments {
        PathArguments::AngleBracketed(args) if args.args.len() == 1 => match args.args.first() {
            Some(GenericArgument::Type(t)) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

fn strip_option(ty: &Type) -> &Type {
    match last_segment(ty) {
        Some(seg) if seg.ident == "Option" => single_generic_arg(seg).unwrap_or(ty),
        _ => ty,
    }
}

fn is_u8(ty: &Type) -> bool {
    let ty = unwrap_type(ty);
    last_segment(ty).is_some_and(|s| s.ident == "u8" && s.arguments.is_empty())
}

/// `Vec<u8>`, `[u8; N]`, `&[u8]`, `Box<[u8]>`, `Cow<[u8]>`.
fn is_byte_type(ty: &Type) -> bool {
    let ty = unwrap_type(ty);
    match ty {
        Type::Array(a) => is_u8(&a.elem),
        Type::Slice(s) => is_u8(&s.elem),
        Type::Reference(r) => is_byte_type(&r.elem),
        Type::Path(_) => match last_segment(ty) {
            Some(seg) if seg.ident == "Vec" => single_generic_arg(seg).is_some_and(is_u8),
            Some(seg) if seg.ident == "Box" || seg.ident == "Cow" => {
                single_generic_arg(seg).is_some_and(is_byte_type)
            }
            _ => false,
        },
        _ => false,
    }
}

fn classify_key_type(ty: &Type) -> KeyType {
    let ty = unwrap_type(ty);
    if let Type::Array(a) = ty {
        let is_16 = matches!(&a.len, syn::Expr::Lit(l) if matches!(&l.lit, syn::Lit::Int(i) if i.base10_digits() == "16"));
        return if is_u8(&a.elem) && is_16 {
            KeyType::Blob
        } else {
            KeyType::Unsuitable
        };
    }
    if is_byte_type(ty) {
        return KeyType::Blob;
    }
    let Some(seg) = last_segment(ty) else {
        return KeyType::Unsuitable;
    };
    match seg.ident.to_string().as_str() {
        "Option" => KeyType::Optional,
        "String" | "Uuid" | "UuidText" => KeyType::Text,
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
        | "usize" => KeyType::Integer,
        "f32" | "f64" | "bool" | "char" | "NaiveDate" | "NaiveDateTime" | "NaiveTime"
        | "DateTime" | "SystemTime" | "Duration" => KeyType::Unsuitable,
        _ => KeyType::Unknown,
    }
}

/// The value kind a (non-`Option`) Rust type implies. Types the derive cannot see through
/// (newtypes, aliases) are stored as they come (`Text`) unless `kind = ...` says otherwise.
fn classify_value_type(ty: &Type) -> ValueKind {
    if is_byte_type(ty) {
        return ValueKind::Blob;
    }
    let Some(seg) = last_segment(ty) else {
        return ValueKind::Text;
    };
    match seg.ident.to_string().as_str() {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" => ValueKind::Integer,
        "f32" | "f64" => ValueKind::Real,
        "bool" => ValueKind::Bool,
        "NaiveDateTime" => ValueKind::Timestamp,
        "DateTime" => ValueKind::TimestampTz,
        "NaiveDate" => ValueKind::Date,
        "NaiveTime" => ValueKind::Time,
        "Uuid" | "UuidText" => ValueKind::Uuid,
        _ => ValueKind::Text,
    }
}
