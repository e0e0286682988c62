//! Turns a [`Model`] into `impl oversync_diesel::SyncTable`.

use crate::attrs::ValueKindOverride as ValueKind;
use crate::model::Model;
use crate::triggers::TableTriggers;
use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

pub fn derive(item: DeriveInput) -> syn::Result<TokenStream> {
    let model = Model::from_item(&item)?;
    Ok(expand(&model))
}

fn expand(model: &Model) -> TokenStream {
    let table = TableTriggers {
        table: &model.table_name,
        key_column: &model.key_field().column_name,
        key_is_blob: model.key_is_blob,
    };
    let triggers = table.triggers();
    let up_sql = table.up_sql(&triggers);
    let down_sql = table.down_sql(&triggers);

    let ident = &model.ident;
    let (impl_generics, ty_generics, where_clause) = model.generics.split_for_impl();
    let table_name = &model.table_name;
    let key_column = &model.key_field().column_name;
    let key_kind = if model.key_is_blob {
        quote!(::oversync_diesel::KeyKind::Blob)
    } else {
        quote!(::oversync_diesel::KeyKind::Text)
    };
    let columns = model.fields.iter().map(|f| {
        let name = &f.column_name;
        let is_blob = f.is_blob();
        let kind = value_kind_tokens(f.value_kind());
        quote!(::oversync_diesel::ColumnSpec { name: #name, is_blob: #is_blob, kind: #kind })
    });
    let trigger_specs = triggers.iter().map(|t| {
        let (name, sql) = (&t.name, &t.sql);
        quote!(::oversync_diesel::TriggerSpec { name: #name, sql: #sql })
    });

    quote! {
        impl #impl_generics ::oversync_diesel::SyncTable for #ident #ty_generics #where_clause {
            const SPEC: &'static ::oversync_diesel::TableSpec = &::oversync_diesel::TableSpec {
                table_name: #table_name,
                key_column: #key_column,
                key_kind: #key_kind,
                columns: &[#(#columns),*],
                triggers: &[#(#trigger_specs),*],
                up_sql: #up_sql,
                down_sql: #down_sql,
            };
        }
    }
}

fn value_kind_tokens(kind: ValueKind) -> TokenStream {
    let variant = match kind {
        ValueKind::Text => quote!(Text),
        ValueKind::Integer => quote!(Integer),
        ValueKind::Real => quote!(Real),
        ValueKind::Bool => quote!(Bool),
        ValueKind::Blob => quote!(Blob),
        ValueKind::Timestamp => quote!(Timestamp),
        ValueKind::TimestampTz => quote!(TimestampTz),
        ValueKind::Date => quote!(Date),
        ValueKind::Time => quote!(Time),
        ValueKind::Uuid => quote!(Uuid),
    };
    quote!(::oversync_diesel::ValueKind::#variant)
}

#[cfg(test)]
pub(crate) fn expand_for_test(item: DeriveInput) -> syn::Result<TokenStream> {
    derive(item)
}
