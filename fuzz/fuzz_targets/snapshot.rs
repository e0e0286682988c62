//! Snapshot responses; the first byte picks the decoder: 0 session create, 1 chunk.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::{SnapshotChunkResponse, SnapshotSession};

fuzz_target!(|data: &[u8]| {
    let Some((which, doc)) = common::select(data, 2) else {
        return;
    };
    if which == 0 {
        let _ = common::decode::<SnapshotSession>(doc);
    } else if let Some(chunk) = common::decode::<SnapshotChunkResponse>(doc) {
        for row in &chunk.rows {
            common::canonical(&serde_json::Value::Object(row.key.clone()));
            common::canonical(&row.payload);
        }
    }
});
