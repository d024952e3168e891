//! `jetscale::decode::decode` with no header: detection by content (and subject).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the subject; the rest is the payload.
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let subject = common::SUBJECTS[usize::from(pick) % common::SUBJECTS.len()];
    common::decode(subject, None, None, payload);
});
