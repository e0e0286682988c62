//! Error bodies; the first byte picks the decoder: 0 `{"error","message"}`,
//! 1 `push_conflict`, 2 `source_retired`.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::{ErrorResponse, PushConflictResponse, SourceRetiredResponse};

fuzz_target!(|data: &[u8]| {
    let Some((which, doc)) = common::select(data, 3) else {
        return;
    };
    match which {
        0 => {
            let _ = common::decode::<ErrorResponse>(doc);
        }
        1 => {
            if let Some(c) = common::decode::<PushConflictResponse>(doc) {
                common::canonical(&serde_json::Value::Object(c.conflict.key.clone()));
                if let Some(row) = &c.conflict.server_row {
                    common::canonical(row);
                }
            }
        }
        _ => {
            let _ = common::decode::<SourceRetiredResponse>(doc);
        }
    }
});
