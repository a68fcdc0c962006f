//! Any text as a configuration file: loading gives settings or one error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let dir = std::env::temp_dir();
    let path = dir.join(format!("kcld-fuzz-{}.toml", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(text.as_bytes()).is_err() {
        return;
    }
    drop(f);
    let _ = kcld_config::load(Some(&path), std::iter::empty());
});
