//! The settings every training job shares, and how a job's settings are declared, read and
//! overridden.
//!
//! A job's configuration (pretraining, fine-tuning, tokenizer training) nests two shared tables,
//! `[run]` ([`RunConfig`]: data, output, length, batch, seed, checkpoints, device) and `[optim]`
//! ([`OptimConfig`]: learning rate, warm-up, weight decay, clipping), beside its own fields.
//! The `settings!` macro declares a configuration once and derives from it the command line's flags (one
//! per field, the tables' flags flattened in): a flag overrides the TOML file or the default only
//! when it is given. Files written before the tables existed (flat `epochs = 10`) still read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Declares a configuration struct and its command-line mirror from one list of fields.
///
/// `pub struct Config / Args { sections { run: RunConfig / RunArgs } fields { /// doc  name: Type [clap attributes] }
/// }` gives `Config` (serde, unknown keys refused, missing keys from `Config::default()`) and `Args` (clap; every field
/// an `Option`, its doc comment the help, the sections' flags flattened in) with `Args::apply(&self, &mut Config)`
/// writing the flags that were given. A field of type `Option<T>` takes `--flag VALUE`, and a bare `--flag` unsets it.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $cfg:ident / $args:ident {
            $(sections { $( $(#[doc = $sdoc:literal])* $sec:ident : $scfg:ident / $sargs:ident ),* $(,)? })?
            fields { $( $(#[doc = $doc:literal])* $field:ident : $ty:ty $([$($arg:tt)*])? ),* $(,)? }
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $cfg {
            $($( $(#[doc = $sdoc])* pub $sec: $scfg, )*)?
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        #[doc = concat!("Command-line flags of [`", stringify!($cfg), "`]: each one given overrides its field.")]
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $args {
            $($( #[command(flatten)] #[allow(missing_docs)] pub $sec: $sargs, )*)?
            $( $(#[doc = $doc])* #[arg(long $(, $($arg)*)?)] pub $field: Option<$ty>, )*
        }

        impl $args {
            #[doc = concat!("Writes the flags that were given into `cfg`.")]
            pub fn apply(&self, cfg: &mut $cfg) {
                $($( self.$sec.apply(&mut cfg.$sec); )*)?
                $( if let Some(v) = &self.$field { cfg.$field = v.clone(); } )*
            }
        }
    };
}
pub(crate) use settings;

settings! {
    /// Where a run reads and writes, how long it trains and on what: the `[run]` table of every job.
    pub struct RunConfig / RunArgs {
        fields {
            /// Dataset: IDX folder/file, CIFAR-10 binary folder, or image folder.
            data: PathBuf,
            /// Output folder: checkpoint, metrics, pictures.
            out: PathBuf,
            /// Passes over the data.
            epochs: usize,
            /// Images per forward/backward.
            batch_size: usize,
            /// Batches whose gradients are summed before each optimizer update.
            accum_iter: usize,
            /// Seed of initialisation, shuffling, augmentation, masking and every other random draw.
            seed: u64,
            /// Save a checkpoint every this many epochs (and always at the end).
            checkpoint_every: usize,
            /// Keep a copy of every checkpoint as `checkpoints/epoch_NNN.mim` (to evaluate the run at
            /// several lengths).
            keep_checkpoints: bool,
            /// Use only the first N training images.
            max_images: Option<usize>,
            /// cpu, or cuda:N in a CUDA build; several CUDA devices (cuda:0,cuda:1) train data-parallel,
            /// --batch-size images on each.
            device: String [visible_alias = "devices"],
            /// Batches the loader prepares ahead of the training step.
            prefetch: usize,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from(crate::data::SHIPPED_SUBSET),
            out: PathBuf::from("runs/mim"),
            epochs: 10,
            batch_size: 256,
            accum_iter: 1,
            seed: 0,
            checkpoint_every: 1,
            keep_checkpoints: false,
            max_images: None,
            device: "cpu".into(),
            prefetch: 4,
        }
    }
}

impl RunConfig {
    /// Devices the run trains on (`device` lists them separated by commas).
    pub fn world_size(&self) -> usize {
        crate::runtime::device_names(&self.device).len()
    }

    /// Images per optimizer update, on all devices together.
    pub fn effective_batch(&self) -> usize {
        self.batch_size * self.accum_iter * self.world_size()
    }

    /// Checks values are usable, naming the flag to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.max_images != Some(0), "--max-images must be at least 1");
        ensure!(self.accum_iter > 0, "--accum-iter must be at least 1");
        ensure!(self.checkpoint_every > 0, "--checkpoint-every must be at least 1");
        Ok(())
    }

    /// Refuses to resume the run of checkpoint `path`, trained with `saved`, under settings that
    /// would change its trajectory (seed, batch, data subset).
    pub fn check_resumable(&self, saved: &RunConfig, path: &Path) -> Result<()> {
        ensure!(
            saved.seed == self.seed && saved.batch_size == self.batch_size && saved.max_images == self.max_images,
            "checkpoint '{}' was trained with another seed, batch size or data subset: resume with the settings it was trained \
             with, or start a new run with another --out",
            path.display()
        );
        ensure!(
            saved.world_size() == self.world_size(),
            "checkpoint '{}' was trained on {} device(s) ('{}'), this run names {} ('{}'): the batch of each update would \
             change; resume on as many devices as it was trained on",
            path.display(),
            saved.world_size(),
            saved.device,
            self.world_size(),
            self.device
        );
        Ok(())
    }
}

settings! {
    /// The optimizer's numbers: the `[optim]` table of every job. AdamW under warm-up and cosine,
    /// lr = base_lr x effective batch / 256 unless `lr` is given.
    pub struct OptimConfig / OptimArgs {
        fields {
            /// Learning rate per 256 images of effective batch.
            base_lr: f64 [allow_negative_numbers = true],
            /// Absolute peak learning rate (overrides --base-lr).
            lr: Option<f64> [allow_negative_numbers = true],
            /// Learning rate at the end of the cosine.
            min_lr: f64 [allow_negative_numbers = true],
            /// Warm-up epochs (pretraining's default: 5% of the epochs, at most 40, the paper's 40 of 800).
            warmup_epochs: Option<f64> [allow_negative_numbers = true],
            /// Learning rate the warm-up starts from (SimMIM's WARMUP_LR; MAE and BEiT start at 0).
            warmup_lr: f64 [allow_negative_numbers = true],
            /// AdamW weight decay, on the parameters the method's official script decays.
            weight_decay: f64 [allow_negative_numbers = true],
            /// Global gradient-norm clipping (default: the recipe's; 0 turns it off).
            clip_grad: Option<f64> [allow_negative_numbers = true],
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            base_lr: 1.5e-4,
            lr: None,
            min_lr: 0.0,
            warmup_epochs: None,
            warmup_lr: 0.0,
            weight_decay: 0.05,
            clip_grad: None,
        }
    }
}

impl OptimConfig {
    /// Warm-up length in epochs: `warmup_epochs`, or 5% of `epochs` and at most 40 (MAE's 40 of 800).
    pub fn warmup(&self, epochs: usize) -> f64 {
        self.warmup_epochs.unwrap_or((epochs as f64 * 0.05).min(40.0))
    }

    /// Peak learning rate: `lr`, or `base_lr x effective_batch / 256`.
    pub fn peak_lr(&self, effective_batch: usize) -> f64 {
        self.lr.unwrap_or(self.base_lr * effective_batch as f64 / 256.0)
    }

    /// Checks values are usable, naming the flag: a learning rate must be positive and finite
    /// (`inf` is not "not positive"), the rest finite and >= 0 (a negative weight decay grows weights).
    pub fn validate(&self, effective_batch: usize) -> Result<()> {
        let lr = self.peak_lr(effective_batch);
        ensure!(lr.is_finite(), "the learning rate is {lr}: it must be a finite number, check --base-lr / --lr");
        ensure!(lr > 0.0, "the learning rate is {lr}: it must be positive, check --base-lr / --lr");
        ensure!(self.min_lr.is_finite() && self.min_lr >= 0.0, "--min-lr {} must be a finite value >= 0", self.min_lr);
        let warmup = self.warmup_epochs.unwrap_or(0.0);
        ensure!(warmup.is_finite() && warmup >= 0.0, "--warmup-epochs {warmup} must be a finite value >= 0");
        ensure!(self.warmup_lr.is_finite() && self.warmup_lr >= 0.0, "--warmup-lr must be a finite value >= 0");
        let wd = self.weight_decay;
        ensure!(wd.is_finite() && wd >= 0.0, "--weight-decay {wd} must be a finite value >= 0 (0 turns it off)");
        ensure!(
            self.min_lr <= lr && self.warmup_lr <= lr,
            "--min-lr {} and --warmup-lr {} must not exceed the peak learning rate {lr}: the schedule would climb \
             where it should fall",
            self.min_lr,
            self.warmup_lr
        );
        ensure!(
            self.clip_grad.is_none_or(|c| c.is_finite() && c >= 0.0),
            "--clip-grad {} must be a finite value >= 0 (0 turns clipping off)",
            self.clip_grad.unwrap_or_default()
        );
        Ok(())
    }
}

/// The tables a job's configuration nests, with the keys each one holds.
fn sections() -> [(&'static str, Vec<String>); 2] {
    let keys = |v: Value| v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    [
        ("run", keys(serde_json::to_value(RunConfig::default()).expect("serialisable"))),
        ("optim", keys(serde_json::to_value(OptimConfig::default()).expect("serialisable"))),
    ]
}

/// Moves the top-level keys of a flat (pre-`[run]`/`[optim]`) configuration into their tables;
/// a nested configuration is returned as it is.
pub fn nest(value: Value) -> Value {
    let Value::Object(mut top) = value else { return value };
    for (section, keys) in sections() {
        for key in keys {
            if let Some(v) = top.remove(&key) {
                let table = top.entry(section).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(t) = table {
                    t.entry(key).or_insert(v);
                }
            }
        }
    }
    Value::Object(top)
}

/// The inverse of [`nest`]: the tables' keys lifted to the top level (their names are unique,
/// as the command line's flags are).
pub fn flatten(value: Value) -> Value {
    let Value::Object(mut top) = value else { return value };
    for (section, _) in sections() {
        if let Some(Value::Object(t)) = top.remove(section) {
            for (k, v) in t {
                top.entry(k).or_insert(v);
            }
        }
    }
    Value::Object(top)
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A configuration from JSON (a checkpoint's header), flat or nested: the given keys over `T`'s
/// defaults, table by table, so a partial `[optim]` keeps the job's own defaults for the rest.
pub fn from_json<T: Default + Serialize + DeserializeOwned>(value: Value) -> Result<T> {
    let mut merged = serde_json::to_value(T::default())?;
    merge(&mut merged, nest(value));
    Ok(serde_json::from_value(merged)?)
}

/// Reads a TOML configuration file of `T` (see [`from_json`]); unknown keys are errors naming them
/// (a typo should not silently fall back to a default).
pub fn read_toml<T: Default + Serialize + DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config '{}'", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config '{}' is not valid TOML", path.display()))?;
    from_json(serde_json::to_value(table)?).with_context(|| format!("config '{}'", path.display()))
}

/// Parses `A,B` into a pair of numbers (a flag such as `--crop-scale 0.35,1.0`).
pub fn parse_pair(s: &str) -> Result<(f64, f64), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts[..] {
        [a, b] => Ok((a.parse().map_err(|e| format!("'{a}': {e}"))?, b.parse().map_err(|e| format!("'{b}': {e}"))?)),
        _ => Err(format!("'{s}' is not two numbers: write them as A,B")),
    }
}

/// Parses a TOML inline table into `T` (a flag such as `--mask '{ kind = "grid" }'`).
pub fn parse_toml_table<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    let table: toml::Table =
        toml::from_str(&format!("value = {s}")).map_err(|e| format!("'{s}' is not a TOML inline table: {e}"))?;
    table["value"].clone().try_into().map_err(|e: toml::de::Error| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    settings! {
        /// A job for the tests.
        pub struct Job / JobArgs {
            sections {
                /// Shared.
                run: RunConfig / RunArgs,
                /// Shared.
                optim: OptimConfig / OptimArgs,
            }
            fields {
                /// Own.
                width: usize,
            }
        }
    }

    impl Default for Job {
        fn default() -> Self {
            Self {
                run: RunConfig { epochs: 7, ..RunConfig::default() },
                optim: OptimConfig { min_lr: 1e-6, ..OptimConfig::default() },
                width: 3,
            }
        }
    }

    #[test]
    fn flat_and_nested_files_read_alike_and_keep_the_jobs_defaults() {
        let flat: Job = from_json(serde_json::json!({"width": 5, "batch_size": 8, "lr": 0.1})).unwrap();
        let nested: Job =
            from_json(serde_json::json!({"width": 5, "run": {"batch_size": 8}, "optim": {"lr": 0.1}})).unwrap();
        assert_eq!(flat, nested);
        assert_eq!((flat.run.epochs, flat.run.batch_size, flat.optim.min_lr, flat.optim.lr), (7, 8, 1e-6, Some(0.1)));
        assert_eq!(flatten(serde_json::to_value(&flat).unwrap())["batch_size"], 8);
        let err = from_json::<Job>(serde_json::json!({"run": {"epoks": 3}})).unwrap_err().to_string();
        assert!(err.contains("unknown field `epoks`"), "{err}");
    }

    #[test]
    fn flags_override_only_what_was_given() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            job: JobArgs,
        }
        let mut job = Job::default();
        Cli::parse_from(["x", "--epochs", "2", "--width", "9", "--lr", "-1"]).job.apply(&mut job);
        assert_eq!((job.run.epochs, job.run.batch_size, job.width, job.optim.lr), (2, 256, 9, Some(-1.0)));
        Cli::parse_from(["x", "--lr"]).job.apply(&mut job);
        assert_eq!(job.optim.lr, None);
        assert_eq!(parse_pair("0.35, 1"), Ok((0.35, 1.0)));
    }
}
