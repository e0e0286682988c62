//! `data:` of a `/sync/watch` SSE `bundle` event.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::BundleChangeEvent;

fuzz_target!(|data: &[u8]| {
    let _ = common::decode::<BundleChangeEvent>(data);
});
