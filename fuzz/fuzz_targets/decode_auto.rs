//! `jetscale::decode::decode` with no header: detection by content (and subject).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the subject; the rest is the payload.
    common::decode_picked(data, |pick| (common::subject(pick), None, None));
});
