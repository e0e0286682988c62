//! `POST /sync/connect` response.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::ConnectResponse;

fuzz_target!(|data: &[u8]| {
    let _ = common::decode::<ConnectResponse>(data);
});
