//! `jetscale::decode::decode` told the payload is OTLP/JSON (`Jetscale-Format: otlp-json`,
//! or `Content-Type: application/json`).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let subject = common::SUBJECTS[usize::from(pick) % common::SUBJECTS.len()];
    if pick & 0x80 == 0 {
        common::decode(subject, None, Some("otlp-json"), payload);
    } else {
        common::decode(subject, Some("application/json"), None, payload);
    }
});
