//! `jetscale::decode::decode` told the payload is OTLP/JSON (`Jetscale-Format: otlp-json`,
//! or `Content-Type: application/json`).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::decode_picked(data, |pick| {
        let subject = common::subject(pick);
        if pick & 0x80 == 0 {
            (subject, None, Some("otlp-json"))
        } else {
            (subject, Some("application/json"), None)
        }
    });
});
