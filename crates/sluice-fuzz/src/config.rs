//! The config target: `Config::load` over a TOML file of the fuzzer's bytes, with
//! `key=value` flag lines after a NUL byte.

use std::path::PathBuf;
use std::sync::OnceLock;

use sluice_server::config::Sources;
use sluice_server::Config;

/// One file per process, rewritten for each input (`Config::load` reads a path).
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("sluice-fuzz-config-{}.toml", std::process::id()))
    })
}

/// Loads or errors; an error's message names what is wrong and is not empty.
pub fn config(data: &[u8]) {
    let (file, flags) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let flags: Vec<(String, String)> = String::from_utf8_lossy(flags)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    std::fs::write(path(), file).expect("writing the config file");
    let sources = Sources {
        file: Some(path().as_path()),
        env: Vec::new(),
        flags,
    };
    if let Err(e) = Config::load(sources) {
        assert!(!e.to_string().is_empty());
    }
}
