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
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let hint = HINTS[usize::from(pick) % HINTS.len()];
    let subject = common::SUBJECTS[usize::from(pick >> 2) % common::SUBJECTS.len()];
    if pick & 0x80 == 0 {
        common::decode(subject, None, Some(hint), payload);
    } else {
        common::decode(subject, Some("application/x-protobuf"), None, payload);
    }
});
