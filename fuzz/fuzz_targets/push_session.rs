//! Push-session responses; the first byte picks the decoder: 0 create (staging or
//! already_committed), 1 chunk, 2 commit.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::{
    PushSessionChunkResponse, PushSessionCommitResponse, PushSessionCreateResponse,
};

fuzz_target!(|data: &[u8]| {
    let Some((which, doc)) = common::select(data, 3) else {
        return;
    };
    match which {
        0 => {
            let _ = common::decode::<PushSessionCreateResponse>(doc);
        }
        1 => {
            let _ = common::decode::<PushSessionChunkResponse>(doc);
        }
        _ => {
            let _ = common::decode::<PushSessionCommitResponse>(doc);
        }
    }
});
