//! `#[derive(SyncTable)]`: declares a Diesel model's table as synced by oversync.
//!
//! Use it through `oversync_diesel::SyncTable`; the full reference of the attributes is on
//! that re-export. The derive parses the struct once into a `model::Model` (attributes in
//! `attrs`, fields in `field`), then `sync_table` turns the model into an
//! `impl SyncTable` whose trigger SQL comes from `triggers`.

mod attrs;
mod field;
mod model;
mod sync_table;
mod triggers;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Derives `oversync_diesel::SyncTable`. See the documentation of that trait.
#[proc_macro_derive(SyncTable, attributes(sync, diesel))]
pub fn derive_sync_table(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    sync_table::derive(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
