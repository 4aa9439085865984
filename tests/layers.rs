//! The layer rules docs/ARCHITECTURE.md states, kept by the code: the kernel layer (`src/cuda`) calls nothing above
//! it (`model`, `train`), the shards (`src/shards`: format, manifest, loader) know nothing of how they were prepared
//! (`pipelines`), and `train`'s checkpoint, resume and run-directory modules do not import each other (they share
//! `train::state`; tests/hardening.rs checks that one). A `use` or a path that breaks a rule fails here, naming the
//! file and line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every line of the code under `src/<layer>` (unit-test modules and comments left out: a test may reach anywhere)
/// that names one of `forbidden` (`crate::model`, say).
fn violations(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(layer);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty(), "no Rust files under {}", root.display());
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            for bad in forbidden {
                if l.contains(bad) {
                    found.push(format!("{}:{}: {}", f.display(), i + 1, l));
                }
            }
        }
    }
    found
}

#[test]
fn the_kernel_layer_imports_neither_the_models_nor_training() {
    let v = violations("cuda", &["crate::model", "crate::train", "crate::eval", "crate::bench"]);
    assert!(v.is_empty(), "src/cuda reaches up a layer:\n{}", v.join("\n"));
}

#[test]
fn the_shards_know_nothing_of_how_they_were_prepared() {
    let v = violations("shards", &["crate::pipelines", "crate::train", "crate::model"]);
    assert!(v.is_empty(), "src/shards reaches up a layer:\n{}", v.join("\n"));
}

#[test]
fn a_violation_is_found_and_named() {
    // The check itself: a layer that does import another is reported with its file and line.
    let v = violations("cli", &["crate::train"]);
    assert!(v.iter().any(|l| l.contains("src/cli/") && l.contains("crate::train")), "{v:?}");
}
