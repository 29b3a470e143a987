//! Tidy checks: crate dependencies point down (broker → storage → protocol), and every Rust
//! source file opens with a `//!` line saying why it exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn manifest_deps(krate: &str) -> String {
    let text = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    // Only [dependencies], not dev-dependencies.
    let start = text.find("[dependencies]").map(|i| i + 14).unwrap_or(text.len());
    let rest = &text[start..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
}

#[test]
fn dependencies_point_down() {
    let protocol = manifest_deps("protocol");
    assert!(!protocol.contains("creek-"), "protocol must not depend on other creek crates");
    assert!(!protocol.contains("tokio"), "protocol must not know tokio");
    let storage = manifest_deps("storage");
    assert!(!storage.contains("creek-storage") && !storage.contains("\ncreek ="), "storage depends only on protocol");
    assert!(!storage.contains("tokio") && !storage.contains("openraft"), "storage knows no network or Raft");
    for krate in ["protocol", "storage", "tests", "bench"] {
        let deps = manifest_deps(krate);
        assert!(
            !deps.lines().any(|l| l.starts_with("creek =") || l.starts_with("creek=")),
            "{krate} depends on the broker"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !["target", "node_modules", ".venv", "corpus", "artifacts"].contains(&name.as_str()) {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_says_why_it_exists() {
    let mut files = Vec::new();
    for krate in ["protocol", "storage", "broker", "tests", "bench"] {
        rust_files(&root().join(krate), &mut files);
    }
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    let missing: Vec<_> =
        files.iter().filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!")).collect();
    assert!(missing.is_empty(), "files without a leading //! line: {missing:?}");
}
