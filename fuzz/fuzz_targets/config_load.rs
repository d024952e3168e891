//! The config loader: `ConfigFile::parse` (YAML, `${VAR}` expansion, strict keys) and
//! `resolve` (defaults, validation of names, limits and durations).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A fixed environment: some variables set, the rest unset.
    let lookup = |name: &str| match name {
        "HOSTNAME" => Some("edge-7".to_owned()),
        "EMPTY" => Some(String::new()),
        "NESTED" => Some("${HOSTNAME}".to_owned()),
        _ => None,
    };
    let Ok(file) = jetscale::config::ConfigFile::parse(text, Path::new("fuzz.yaml"), &lookup)
    else {
        return;
    };
    // Password files would be read from disk: leave them out so a run has no side effects.
    if text.contains("password_file") {
        return;
    }
    let _ = jetscale::config::settings::resolve(&file, &jetscale::config::Overrides::default());
});
