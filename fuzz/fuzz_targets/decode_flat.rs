//! `jetscale::decode::decode` told the payload is one of the NATS-native service design's flat
//! records.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const HINTS: [&str; 3] = ["flat-span", "flat-metric", "flat-log"];

fuzz_target!(|data: &[u8]| {
    common::decode_picked(data, |pick| {
        let hint = HINTS[usize::from(pick) % HINTS.len()];
        (common::subject(pick >> 2), None, Some(hint))
    });
});
