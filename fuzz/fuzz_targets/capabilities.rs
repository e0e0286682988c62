//! `GET /sync/capabilities` response.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use oversync_protocol::CapabilitiesResponse;

fuzz_target!(|data: &[u8]| {
    if let Some(caps) = common::decode::<CapabilitiesResponse>(data) {
        let _ = caps.feature("bundle_change_watch");
        for (name, on) in &caps.features {
            assert_eq!(caps.feature(name), *on);
        }
    }
});
