//! Integration tests of sluice-pipeline's public API: the processor and the sinks,
//! against real files in temp dirs and real HTTP servers on 127.0.0.1:0.

mod file;
mod http;
mod processor;
mod retry;

/// Every line of the files in `dir`, oldest file first (for the tests of sinks that
/// write files, and of the dead letters).
fn read_lines(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
        .collect()
}
