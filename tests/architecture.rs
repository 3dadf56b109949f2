//! The crate's top-level modules form layers: a module may use (by a `crate::` path) only modules
//! of lower layers, so there are no module cycles and each layer can be read, tested and changed
//! without the ones above it. The layers are the table below; src/lib.rs lists the same.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level module -> layer.
const LAYERS: &[(&str, u32)] = &[
    // Generic building blocks: kernels, data, masks, process settings, file formats.
    ("ops", 0),
    ("data", 0),
    ("masking", 0),
    ("runtime", 0),
    ("io", 0),
    ("optim", 1),
    ("models", 2),
    // What is built on the models: checkpoints, pictures, then the weight formats (which read
    // checkpoints too).
    ("checkpoint", 3),
    ("viz", 3),
    ("weights", 4),
    ("eval", 5),
    // Training jobs (pretraining, tokenizer, fine-tuning) use the evaluation protocols.
    ("train", 6),
    ("bench", 7),
    // Parity with the PyTorch fixtures on any device (the GPU check).
    ("check", 7),
    // Reconstruction pictures of a pretraining checkpoint (its data, its method's mask ratio).
    ("reconstruct", 7),
    // Attention maps of a pretrained ViT (its weights, the pictures).
    ("attention", 7),
    // Result records and the tables and plots generated from them (checkpoints' pretraining).
    ("results", 7),
    // The ablation studies train, evaluate, and count FLOPs with bench.
    ("ablate", 8),
    // The web viewer shows reconstructions, attention and neighbours (eval's features).
    ("serve", 8),
    // A run's report draws its checkpoints' reconstructions.
    ("report", 8),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// Every `.rs` file under `dir`, except the binaries' (src/bin) and the crate root.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path != src().join("bin") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && path != src().join("lib.rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file under src/ belongs to: `src/io.rs` -> `io`, `src/train/x.rs` -> `train`.
fn top_module(file: &Path) -> String {
    let first = file.strip_prefix(src()).unwrap().components().next().unwrap();
    first.as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string()
}

/// The code of `text` without `//` comments (doc comments included: a doc link is no dependency).
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_string = false;
        let mut end = line.len();
        let bytes = line.as_bytes();
        for i in 0..bytes.len() {
            match bytes[i] {
                b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
                b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..end]);
        out.push('\n');
    }
    out
}

/// The top-level modules `code` names by `crate::NAME` paths, each with the path as written
/// (`crate::a::b`, or every item of a `crate::{a::b, c}` group).
fn crate_paths(code: &str) -> Vec<(String, String)> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(ident) {
            continue; // `mycrate::`, not this crate
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas, up to its closing brace.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(item.trim().to_string());
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(item.trim().to_string());
        } else {
            out.push(
                rest.chars()
                    .take_while(|&c| ident(c) || c == ':')
                    .collect::<String>()
                    .trim_end_matches(':')
                    .to_string(),
            );
        }
    }
    out.into_iter()
        .filter(|p| !p.is_empty() && p != "self")
        .map(|p| {
            let name: String = p.chars().take_while(|&c| ident(c)).collect();
            (name, format!("crate::{}", p.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[test]
fn top_level_modules_use_only_lower_layers() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    files.sort();
    assert!(files.len() > 10, "found only {} source files under {}", files.len(), src().display());
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for file in &files {
        let from = top_module(file);
        seen.insert(from.clone());
        let shown = file.strip_prefix(src().parent().unwrap()).unwrap().display().to_string();
        let Some(from_layer) = layer(&from) else {
            failures.push(format!("{shown}: module `{from}` has no layer: add it to LAYERS in tests/architecture.rs"));
            continue;
        };
        for (to, path) in crate_paths(&code(&std::fs::read_to_string(file).unwrap())) {
            if to == from {
                continue;
            }
            match layer(&to) {
                None => failures.push(format!("{shown}: `{path}` names `{to}`, which is no top-level module of LAYERS")),
                Some(to_layer) if to_layer >= from_layer => failures.push(format!(
                    "{shown}: `{path}`: `{from}` (layer {from_layer}) may not use `{to}` (layer {to_layer}), only lower layers"
                )),
                Some(_) => {}
            }
        }
    }
    for (module, _) in LAYERS.iter().filter(|(m, _)| !seen.contains(*m)) {
        failures.push(format!("LAYERS names `{module}`, which has no file under src/"));
    }
    assert!(failures.is_empty(), "module layering broken:\n{}", failures.join("\n"));
}

#[test]
fn the_scanner_sees_plain_paths_groups_and_not_comments() {
    let text = "use crate::io::TensorMap;\nuse crate::{\n    data::{Dataset, loader::Batch},\n    masking::Mask,\n};\n\
                // crate::train is a comment\n/// [`crate::eval`] too\nlet s = \"a // b\"; crate::ops::gelu(x); mycrate::viz::f();\n";
    let names: Vec<String> = crate_paths(&code(text)).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["io", "data", "masking", "ops"]);
}
