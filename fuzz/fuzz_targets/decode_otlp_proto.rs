//! `jetscale::decode::decode` told the payload is OTLP protobuf, with each signal declared
//! and with none (then every signal is tried).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const HINTS: [&str; 4] = [
    "otlp-proto",
    "otlp-proto;signal=metrics",
    "otlp-proto;signal=traces",
    "otlp-proto;signal=logs",
];

fuzz_target!(|data: &[u8]| {
    common::decode_picked(data, |pick| {
        let hint = HINTS[usize::from(pick) % HINTS.len()];
        let subject = common::subject(pick >> 2);
        if pick & 0x80 == 0 {
            (subject, None, Some(hint))
        } else {
            (subject, Some("application/x-protobuf"), None)
        }
    });
});
