//! `--resume` continues the run that was started: its settings come from the checkpoint header
//! (`train`, the full config as JSON), and the command line may change only what cannot alter the
//! trajectory's definition (more epochs, device, intervals, the output folder). Any other flag the
//! user actually typed must equal the saved value, or the resume is refused naming it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Serialize;

/// The flags that continue a training run.
#[derive(clap::Args)]
pub struct ResumeArgs {
    /// Continue the run saved in --out on the same trajectory.
    #[arg(long)]
    resume: bool,
    /// Continue from this checkpoint instead of the one in --out.
    #[arg(long)]
    resume_from: Option<PathBuf>,
}

impl ResumeArgs {
    /// The checkpoint to continue from: --resume-from's, or with --resume the one `in_out` names.
    pub fn checkpoint(&self, in_out: impl FnOnce() -> PathBuf) -> Option<PathBuf> {
        self.resume_from.clone().or_else(|| self.resume.then(in_out))
    }
}
use serde::de::DeserializeOwned;
use serde_json::Value;

use mim::train::config::{flatten, from_json, nest};

/// Ids (field names) of the arguments given on the command line, not defaulted.
static GIVEN: OnceLock<Vec<String>> = OnceLock::new();

/// Records which arguments of the innermost subcommand the user typed.
pub fn record_given(matches: &ArgMatches) {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let ids = m
        .ids()
        .map(|id| id.as_str().to_string())
        .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
        .collect();
    let _ = GIVEN.set(ids);
}

/// Ids of the arguments the user typed (see [`record_given`]).
pub fn given() -> &'static [String] {
    GIVEN.get().map_or(&[], |v| v.as_slice())
}

/// `path` made absolute (not canonicalised: a symlinked data folder stays as named), so a run
/// started here resumes from any working directory.
pub fn absolute(path: &mut PathBuf) {
    if let Ok(p) = std::path::absolute(&*path) {
        *path = p;
    }
}

fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

fn same_path(a: &Value, b: &Value) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(a), Some(b)) => {
            let norm = |p: &str| {
                std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| PathBuf::from(p))
            };
            norm(a) == norm(b)
        }
        _ => a == b,
    }
}

/// The configuration a resumed run continues with: the checkpoint's `saved` one, with the given
/// `mutable` settings taken from `requested` (flags and `--config` over defaults), into `out`.
/// `paths` name path settings: compared as paths, and taken from the command line when the saved
/// one no longer exists (the data moved); the run's size checks still guard what they hold.
pub fn resumed<T: Default + Serialize + DeserializeOwned>(
    ckpt: &Path,
    saved: &Value,
    requested: &T,
    config_file: Option<&Path>,
    mutable: &[&str],
    paths: &[&str],
    out: &Path,
) -> Result<T> {
    // Compared key by key with the `[run]` and `[optim]` tables flattened, as the flags are.
    let req = flatten(serde_json::to_value(requested)?);
    let Value::Object(mut merged) = flatten(saved.clone()) else {
        bail!("checkpoint '{}' holds no training configuration: it cannot be resumed", ckpt.display());
    };
    let mut keys: Vec<String> = given().iter().filter(|k| req.get(k.as_str()).is_some()).cloned().collect();
    if let Some(f) = config_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read config '{}'", f.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("config '{}' is not valid TOML", f.display()))?;
        if let Value::Object(flat) = flatten(nest(serde_json::to_value(table)?)) {
            keys.extend(flat.keys().cloned());
        }
    }
    keys.sort();
    keys.dedup();
    let mut refused = Vec::new();
    for k in keys.iter().filter(|k| k.as_str() != "out") {
        let new = &req[k.as_str()];
        let old = merged.get(k.as_str()).cloned().unwrap_or(Value::Null);
        let moved = || {
            old.as_str().is_some_and(|p| !Path::new(p).exists()) && new.as_str().is_some_and(|p| Path::new(p).exists())
        };
        if paths.contains(&k.as_str()) && (same_path(new, &old) || moved()) {
            let mut p = PathBuf::from(new.as_str().unwrap_or_default());
            absolute(&mut p);
            merged.insert(k.clone(), Value::String(p.to_string_lossy().into()));
        } else if *new == old {
        } else if mutable.contains(&k.as_str()) {
            merged.insert(k.clone(), new.clone());
        } else {
            refused.push((
                k.clone(),
                format!("{} ({} {}; the run has {})", k.replace('_', " "), flag(k), show(new), show(&old)),
            ));
        }
    }
    if !refused.is_empty() {
        bail!(
            "cannot resume '{}' with a different {}: a resumed run keeps the settings it was started with; drop {} \
             (only {} may change), or start a new run with another --out",
            ckpt.display(),
            refused.iter().map(|r| r.1.as_str()).collect::<Vec<_>>().join(", "),
            refused.iter().map(|r| flag(&r.0)).collect::<Vec<_>>().join(" "),
            mutable.iter().map(|k| flag(k)).collect::<Vec<_>>().join(", ")
        );
    }
    // A fine-tuning run's pretrained checkpoint is only read at its start, so it may be gone.
    for k in paths.iter().filter(|k| **k != "checkpoint") {
        if let Some(p) = merged.get(*k).and_then(|v| v.as_str()).filter(|p| !p.is_empty() && !Path::new(p).exists()) {
            bail!(
                "the run in '{}' was trained with {} '{p}', which does not exist from here: pass {} with where it is now",
                ckpt.display(),
                k.replace('_', " "),
                flag(k)
            );
        }
    }
    merged.insert("out".into(), serde_json::to_value(out)?);
    from_json(Value::Object(merged))
        .with_context(|| format!("checkpoint '{}' holds a configuration this mim cannot read", ckpt.display()))
}
