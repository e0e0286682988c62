//! `GET /sync/pull` response, then `bundle_hash` of every bundle.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::PullResponse;

fuzz_target!(|data: &[u8]| {
    if let Some(pull) = common::decode::<PullResponse>(data) {
        for bundle in &pull.bundles {
            let _ = common::hash_rows(&bundle.rows);
        }
    }
});
