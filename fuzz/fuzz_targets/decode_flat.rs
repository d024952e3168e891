//! `jetscale::decode::decode` told the payload is one of seed 001's flat records.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const HINTS: [&str; 3] = ["flat-span", "flat-metric", "flat-log"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let hint = HINTS[usize::from(pick) % HINTS.len()];
    let subject = common::SUBJECTS[usize::from(pick >> 2) % common::SUBJECTS.len()];
    common::decode(subject, None, Some(hint), payload);
});
