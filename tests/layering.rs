//! The layering written at the top of `src/lib.rs` holds: no module of `src/` names a module of
//! a higher layer (`crate::…` outside comments), so there are no import cycles between them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first (as in `src/lib.rs`).
const LAYERS: &[&[&str]] = &[
    &[
        "clock",
        "wire",
        "logging",
        "proto",
        "lifecycle",
        "analytics",
    ],
    &["store"],
    &["config"],
    &["auth", "sweep", "notify"],
    &["scheduler"],
    &["ops"],
    &["api"],
    &["server"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read src") {
            rust_files(&entry.expect("dir entry").path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// The top-level modules a source text names as `crate::NAME`, outside comments.
fn named_modules(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn no_module_names_a_module_of_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("read src") {
        let path = entry.expect("dir entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        modules.entry(name).or_default().extend(files);
    }
    let mut violations = Vec::new();
    for (module, files) in &modules {
        let own = layer_of(module)
            .unwrap_or_else(|| panic!("src/{module} is in no layer: add it to LAYERS and lib.rs"));
        for file in files {
            let text = std::fs::read_to_string(file).expect("read source");
            for named in named_modules(&text) {
                if let Some(layer) = layer_of(&named)
                    && layer > own
                {
                    violations.push(format!(
                        "{} names crate::{named} (layer {layer} > {module}'s {own})",
                        file.strip_prefix(&src).unwrap_or(file).display()
                    ));
                }
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(
        violations.is_empty(),
        "imports that go up a layer:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_sees_imports_and_skips_comments() {
    let text = "use crate::store::X; // crate::api\n    let x = crate::ops::y(); /// crate::cli\n";
    assert_eq!(named_modules(text), vec!["store", "ops"]);
}
