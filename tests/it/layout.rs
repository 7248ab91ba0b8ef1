//! The layering the README's Development section promises, checked on the source: the engine
//! never reaches up into the service, and the CLI reaches the store and the engine only
//! through the service.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The files under `src/<module>` that name any of `forbidden`, with the name found.
fn offenders(module: &str, forbidden: &[&str]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(module);
    let files = rust_files(&dir);
    assert!(!files.is_empty(), "no sources under {}", dir.display());
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for name in forbidden {
            if text.contains(name) {
                found.push(format!("{} names {name}", file.display()));
            }
        }
    }
    found
}

#[test]
fn the_engine_does_not_depend_on_the_service() {
    assert_eq!(
        offenders("pipeline", &["crate::service"]),
        Vec::<String>::new()
    );
}

#[test]
fn the_command_line_reaches_the_store_and_the_engine_only_through_the_service() {
    let found = offenders("cli", &["crate::store", "ctx.store", "crate::pipeline"]);
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn alerts_depend_on_neither_the_service_nor_the_command_line() {
    let found = offenders("alerts", &["crate::service", "crate::cli", "crate::daemon"]);
    assert_eq!(found, Vec::<String>::new());
}
