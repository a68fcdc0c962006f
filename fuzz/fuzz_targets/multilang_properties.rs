//! Any bytes as a MultiLangDaemon properties file: loading gives settings
//! or one error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("kcld-fuzz-{}.properties", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    let _ = kcld_config::multilang::load_properties(&path, None, std::iter::empty());
});
