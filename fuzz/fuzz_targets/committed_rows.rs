//! `GET /sync/committed-bundles/{bundle_seq}/rows` response, then `bundle_hash` of its rows.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::CommittedBundleRowsResponse;

fuzz_target!(|data: &[u8]| {
    if let Some(page) = common::decode::<CommittedBundleRowsResponse>(data) {
        let _ = common::hash_rows(&page.rows);
    }
});
