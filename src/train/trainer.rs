//! The one training loop. A job ([`Task`]) says how to build or resume its model, the loss of a
//! batch, what happens after each batch (an EMA codebook or teacher) and at the end of an epoch
//! (monitors, test accuracy), and how its checkpoint is written. [`fit`] owns everything else: the
//! run folder's lock, fresh-or-resume, the data order and prefetching, the optimizer step
//! ([`Stepper`]), the non-finite stop, per-iteration metrics, per-epoch records, checkpoints and
//! progress reports, so every job resumes, logs and stops the same way.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::ModuleOptimizer;
use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation, all_reduce};
use burn::tensor::{Bytes, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::RunConfig;
use super::lock::{RunLock, lock_run_dir};
use crate::checkpoint::{CheckpointHeader, ClassifierSpec};
use crate::data::augment::Transform;
use crate::data::loader::{Batch, Prefetcher, epoch_order, rng_for};
use crate::data::{Dataset, Split};
use crate::models::pretrain::ModelConfig;
use crate::optim::{Stepper, Update};

/// One training iteration's numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    /// Batches done, counting this one.
    pub iteration: u64,
    /// Epoch of this batch (0-based).
    pub epoch: u64,
    /// Loss of this batch.
    pub loss: f64,
    /// Learning rate of the most recent update.
    pub lr: f64,
    /// Training throughput over the last 20 iterations (data wait included).
    pub images_per_sec: f64,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
    /// CPU seconds (all threads) since this process started training; absent in runs recorded
    /// before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
}

/// The run folder's log of starts and resumes: when, from which iteration, commit, machine, command.
pub const RUNS_LOG: &str = "runs.jsonl";

/// Seconds each step took, from the `elapsed_s` readings of a run's steps (or epochs), which
/// restart from 0 at every resume.
pub fn step_seconds(elapsed: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut previous = 0.0;
    elapsed
        .into_iter()
        .map(|e| {
            let dt = if e >= previous { e - previous } else { e };
            previous = e;
            dt
        })
        .collect()
}

/// Seconds of training behind those readings, every start of a resumed run added up.
pub fn training_seconds(elapsed: impl IntoIterator<Item = f64>) -> f64 {
    step_seconds(elapsed).iter().sum()
}

/// Core-seconds of training behind a run's readings of (`elapsed_s`, `cpu_s`), every start added
/// up: the CPU time a start measured, or for a start that did not (recorded before it was), its
/// wall time x `threads`.
pub fn training_core_seconds(readings: impl IntoIterator<Item = (f64, Option<f64>)>, threads: usize) -> f64 {
    let (mut wall, mut cpu, mut total) = (0.0, 0.0, 0.0);
    for (w, c) in readings {
        if w < wall {
            (wall, cpu) = (0.0, 0.0); // a new start: its readings count from 0 again
        }
        total += match c {
            Some(c) => c - cpu,
            None => (w - wall) * threads.max(1) as f64,
        };
        (wall, cpu) = (w, c.unwrap_or(0.0));
    }
    total
}

/// The copy of the checkpoint after `epoch` epochs that `--keep-checkpoints true` keeps.
pub fn kept_checkpoint(out: &Path, epoch: u64) -> PathBuf {
    out.join("checkpoints").join(format!("epoch_{epoch:03}.mim"))
}

/// One start or resume of a run, a line of [`RUNS_LOG`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStart {
    /// When it started (seconds since 1970, UTC).
    pub started_unix_s: u64,
    /// The iteration it started from (0 for a fresh run).
    pub iteration: u64,
    /// Commit, command, machine.
    pub info: crate::runtime::RunInfo,
}

/// Receives progress (the CLI draws a progress bar; tests collect losses).
pub trait Reporter {
    /// Training starts (or resumes at `done` of `total` iterations).
    fn start(&mut self, _total: u64, _done: u64, _about: &str) {}
    /// After every iteration.
    fn step(&mut self, _m: &StepMetrics) {}
    /// A line of information (checkpoint written, test accuracy, ...).
    fn message(&mut self, _msg: &str) {}
    /// The checkpoint at `path` now holds the model after `epoch` epochs (the CLI draws a snapshot
    /// of reconstructions from it).
    fn checkpoint(&mut self, _path: &Path, _epoch: u64) {}
    /// Training ended.
    fn finish(&mut self) {}
}

/// A reporter that prints nothing.
pub struct Silent;
impl Reporter for Silent {}

/// Where a micro-batch is computed: its `iteration` (0-based over the run) and the `rank` of the
/// device computing its share of the batch (0 on a single device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Micro-batches done before this one.
    pub iteration: u64,
    /// The device's place in `--device cuda:0,cuda:1,...` (0 for the first or only one).
    pub rank: usize,
}

impl Step {
    /// Micro-batch `iteration` on a single device (or rank 0).
    pub fn new(iteration: u64) -> Self {
        Self { iteration, rank: 0 }
    }

    /// The generator of random stream `stream` (masks, mixup, drop path) for this micro-batch:
    /// rank 0 draws what a single-device run draws, every other rank a stream of its own.
    pub fn rng(self, seed: u64, stream: u64) -> ChaCha8Rng {
        match self.rank {
            0 => rng_for(&[seed, self.iteration, stream]),
            r => rng_for(&[seed, self.iteration, stream, r as u64]),
        }
    }
}

/// Where a run starts: a fresh model at iteration 0, or what a checkpoint holds.
pub struct Start<M> {
    /// The model.
    pub model: M,
    /// The optimizer's state, when resuming.
    pub optimizer: Option<Bytes>,
    /// Batches already consumed.
    pub iteration: u64,
    /// Epochs already completed.
    pub epoch: u64,
}

impl<M> Start<M> {
    /// A fresh run.
    pub fn fresh(model: M) -> Self {
        Self { model, optimizer: None, iteration: 0, epoch: 0 }
    }
}

/// How far a run has come, for checkpoint headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Batches consumed.
    pub iteration: u64,
    /// Optimizer updates applied.
    pub optimizer_steps: u64,
    /// Epochs completed.
    pub epoch: u64,
}

impl Progress {
    /// The header of a model checkpoint at this point: architecture `model`, the job's settings
    /// `train` ([`settings_for_header`]), the run's `seed`, and the head of a classifier.
    pub fn header(
        self,
        model: ModelConfig,
        train: Value,
        seed: u64,
        classifier: Option<ClassifierSpec>,
    ) -> CheckpointHeader {
        CheckpointHeader {
            mim_version: env!("CARGO_PKG_VERSION").into(),
            model,
            train,
            iteration: self.iteration,
            optimizer_steps: self.optimizer_steps,
            epoch: self.epoch,
            seed,
            classifier,
        }
    }
}

/// A job's settings as its checkpoint records them: without the output folder, so the same run
/// gives the same bytes wherever it is written.
pub fn settings_for_header<C: Serialize>(cfg: &C) -> Result<Value> {
    let mut value = serde_json::to_value(cfg)?;
    if let Some(run) = value.get_mut("run") {
        run["out"] = Value::String(String::new());
    }
    Ok(value)
}

/// An epoch just ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochEnd {
    /// Where the run is (`progress.epoch` counts this epoch).
    pub progress: Progress,
    /// Mean training loss of the epoch's batches.
    pub mean_loss: f64,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
    /// CPU seconds (all threads) since this process started training.
    pub cpu_s: Option<f64>,
}

/// What a job adds to the loop's records at the end of an epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochReport {
    /// A line for the reporter.
    pub message: Option<String>,
    /// A JSON object (with an `epoch` key) appended to the job's epoch log.
    pub record: Option<Value>,
}

/// Extra per-iteration metrics a job logs beside [`StepMetrics`], in order.
pub type Extras = Vec<(&'static str, Value)>;

/// A training job: what [`fit`] needs to know about it. On several devices each device trains a
/// clone of it.
pub trait Task: Clone + Send {
    /// The model trained (on the autodiff device).
    type Model: Module;
    /// What the loss of a batch hands on to [`Task::after_batch`] (the tokenizer's codes).
    type Output;

    /// What the output folder holds, for messages ("run", "tokenizer run").
    const WHAT: &'static str = "run";

    /// The shared run settings.
    fn run(&self) -> &RunConfig;

    /// The resumable checkpoint of the run.
    fn checkpoint_path(&self) -> PathBuf {
        self.run().out.join("checkpoint.mim")
    }

    /// One JSON line per iteration: [`StepMetrics`] and the job's [`Extras`].
    fn metrics_path(&self) -> PathBuf {
        self.run().out.join("metrics.jsonl")
    }

    /// One JSON line per [`EpochReport::record`], if the job writes any.
    fn epoch_log(&self) -> Option<PathBuf> {
        None
    }

    /// Checks the settings before anything is read or written, naming the flag to change.
    fn validate(&self) -> Result<()>;

    /// Refuses data-parallel training on several devices where the job cannot do it (state that
    /// every device would update on its own share of the batch), naming what to do instead.
    fn data_parallel(&self) -> Result<()> {
        Ok(())
    }

    /// Moves what the loss uses besides the model (BEiT's frozen tokenizer) to `device`, for the
    /// copy of the job that another device of a data-parallel run trains.
    fn to_device(&mut self, _device: &Device) {}

    /// Learns what it needs of the training data (channels, size) before the folder is touched;
    /// `device` is the run's device without autodiff (frozen models, evaluation).
    fn prepare(&mut self, _data: &Dataset, _device: &Device) -> Result<()> {
        Ok(())
    }

    /// A fresh model, or the run saved in `resume` after checking it is this run.
    fn start(&mut self, data: &Dataset, resume: Option<&Path>, device: &Device) -> Result<Start<Self::Model>>;

    /// The optimizer step of this job for `model` (groups, schedule, clipping, layer decay).
    fn stepper(
        &self,
        model: &Self::Model,
        iters_per_epoch: usize,
        optimizer: Option<Bytes>,
    ) -> Result<Stepper<Self::Model>>;

    /// The training augmentation.
    fn transform(&self) -> Transform;

    /// One line describing the run.
    fn about(&self, data: &Dataset, iters_per_epoch: usize) -> String;

    /// The loss of the micro-batch (this device's share of it) at `step`.
    fn loss(
        &mut self,
        model: &Self::Model,
        batch: &mut Batch,
        step: Step,
        device: &Device,
    ) -> Result<(Tensor<1>, Self::Output)>;

    /// After the backward of micro-batch `iteration` and the optimizer `update` it completed, if
    /// any: where an EMA codebook or an EMA teacher follows the trained weights.
    fn after_batch(
        &mut self,
        model: Self::Model,
        _output: Self::Output,
        _iteration: u64,
        _update: Option<&Update>,
    ) -> Result<(Self::Model, Extras)> {
        Ok((model, Vec::new()))
    }

    /// At the end of each epoch, before its checkpoint.
    fn end_of_epoch(&mut self, _model: &Self::Model, _end: &EpochEnd) -> Result<EpochReport> {
        Ok(EpochReport::default())
    }

    /// Writes the resumable checkpoint.
    fn save(&self, path: &Path, model: &Self::Model, optimizer: &ModuleOptimizer, progress: Progress) -> Result<()>;
}

/// What [`fit`] leaves.
pub struct Fit<M> {
    /// The trained model.
    pub model: M,
    /// This process's iterations (after any resume point), with the job's extras.
    pub steps: Vec<(StepMetrics, Extras)>,
    /// The run folder's lock, still held: the caller writes its own files (pictures, exported
    /// weights) before dropping it, so no other run starts in between.
    pub lock: RunLock,
}

/// Keeps the JSON lines of `path` whose `key` is at most `max` (a resumed run rewrites what came
/// after). A line that does not parse is the tail a killed process left half-written: dropped.
pub fn keep_records(path: &Path, key: &str, max: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v[key].as_u64().is_some_and(|k| k <= max)))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::io::write_atomic(path, &[kept.as_bytes()])
}

fn append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write '{}'", path.display()))
}

/// The devices a run trains on: one, or several whose gradients burn's collectives average.
pub(crate) struct Ranks {
    /// The devices without autodiff, rank 0 first.
    devices: Vec<Device>,
    /// Whether backward averages gradients across the devices (burn's collectives over NCCL,
    /// CUDA only); off only where a CPU test drives the multi-device plumbing.
    sync: bool,
    /// Keeps the collectives' communication server up while the run trains.
    _context: Option<DistributedContext>,
}

impl Ranks {
    /// `devices`, with the collectives started between them when there are several.
    pub(crate) fn new(devices: Vec<Device>) -> Self {
        let sync = devices.len() > 1;
        let config = DistributedConfig { all_reduce_op: ReduceOperation::Mean };
        let context = sync.then(|| DistributedContext::init(devices.clone(), config));
        Self { devices, sync, _context: context }
    }

    /// `devices` trained side by side without averaging their gradients: what a CPU can check of
    /// a data-parallel run (sharding, seeds, what rank 0 alone writes) without collectives.
    #[cfg(test)]
    pub(crate) fn unsynced(devices: Vec<Device>) -> Self {
        Self { devices, sync: false, _context: None }
    }
}

/// Marks every parameter as shared by the devices of a data-parallel run, so that backward
/// averages its gradient across them (burn-train's `ModuleSharder`).
struct Sharded;

impl ModuleMapper for Sharded {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_distributed(id), mapper)
    }
}

/// Rank `rank`'s share of an epoch's `order` on `world` devices of `batch` images each: the
/// `rank`-th slice of every global batch of `batch x world` images (an incomplete last global batch
/// is dropped), so that the devices together see what one device given the global batch would.
pub fn rank_order(order: &[usize], batch: usize, world: usize, rank: usize) -> Vec<usize> {
    order.chunks_exact(batch * world).flat_map(|g| &g[rank * batch..(rank + 1) * batch]).copied().collect()
}

/// Trains `task`; with `resume`, continues the run saved in that checkpoint on exactly the
/// trajectory an uninterrupted run would have followed. With several devices
/// (`--device cuda:0,cuda:1`) every device trains a copy of the model on its share of each batch
/// and backward averages the gradients (burn's collectives); rank 0 writes metrics and checkpoints.
pub fn fit<T: Task>(task: &mut T, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<Fit<T::Model>> {
    task.validate()?;
    if task.run().world_size() > 1 {
        task.data_parallel()?;
    }
    let devices = crate::runtime::devices(&task.run().device)?;
    fit_on(task, resume, reporter, Ranks::new(devices))
}

/// What every rank trains with.
struct Shared {
    run: RunConfig,
    ds: Arc<Dataset>,
    transform: Transform,
    /// Iterations per epoch (global batches).
    spe: usize,
    devices: Vec<Device>,
    sync: bool,
}

/// What rank 0 alone does: metrics, epoch records, checkpoints and progress.
struct Writer<'a> {
    reporter: &'a mut dyn Reporter,
    metrics: std::fs::File,
    mpath: PathBuf,
}

/// [`fit`] on the devices of `ranks`.
pub(crate) fn fit_on<T: Task>(
    task: &mut T,
    resume: Option<&Path>,
    reporter: &mut dyn Reporter,
    ranks: Ranks,
) -> Result<Fit<T::Model>> {
    let run = task.run().clone();
    // The context keeps the collectives up until this function returns.
    let Ranks { devices, sync, _context } = ranks;
    let world = devices.len();
    let plain = devices[0].clone();
    let mut ds = Dataset::open(&run.data, Split::Train)?;
    if let Some(n) = run.max_images {
        ds.truncate(n);
    }
    task.prepare(&ds, &plain)?;
    let global = run.batch_size * world;
    let spe = ds.len() / global;
    ensure!(
        spe > 0,
        "the dataset has {} images, fewer than one batch of {global}{}: lower --batch-size or add images",
        ds.len(),
        if world > 1 { format!(" ({} on each of {world} devices)", run.batch_size) } else { String::new() }
    );
    let ckpt = task.checkpoint_path();
    // Taken before the folder is looked at, and held to the end: a second run into the same
    // folder is refused instead of interleaving its checkpoints and metrics with this one's.
    let lock = lock_run_dir(&run.out)?;
    if resume.is_none() && ckpt.exists() {
        bail!(
            "'{}' already holds a {}: pass --resume to continue it, or choose another --out (nothing was overwritten)",
            run.out.display(),
            T::WHAT
        );
    }
    if let Some(from) = resume
        && ckpt.exists()
        && !crate::io::same_file(from, &ckpt)
    {
        bail!(
            "'{}' already holds a {} of another run: --resume-from continues '{}' in a folder of its own, so choose \
             an --out without a checkpoint, or pass --resume to continue the run in '{}' (nothing was overwritten)",
            run.out.display(),
            T::WHAT,
            from.display(),
            run.out.display()
        );
    }
    let start = task.start(&ds, resume, &plain.clone().autodiff())?;
    if let Some(path) = resume {
        crate::checkpoint::check_iterations_per_epoch(path, start.epoch, start.iteration, spe, &run.data)?;
    }

    std::fs::create_dir_all(&run.out)
        .with_context(|| format!("cannot create output folder '{}'", run.out.display()))?;
    let mpath = task.metrics_path();
    keep_records(&mpath, "iteration", start.iteration)?;
    let metrics = append(&mpath)?;
    if let Some(log) = task.epoch_log() {
        keep_records(&log, "epoch", start.iteration / spe as u64)?;
    }
    // Who trained what where: one record per start or resume, the provenance `mim report` shows.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let record = RunStart {
        started_unix_s: started,
        iteration: start.iteration,
        info: crate::runtime::RunInfo::here(command, run.seed),
    };
    let runs = run.out.join(RUNS_LOG);
    writeln!(append(&runs)?, "{}", serde_json::to_string(&record)?)
        .with_context(|| format!("cannot write '{}'", runs.display()))?;

    let mut about = task.about(&ds, spe);
    if world > 1 {
        about.push_str(&format!(" | data-parallel on {world} devices ({}), batch {global} per iteration", run.device));
    }
    reporter.start((run.epochs * spe) as u64, start.iteration, &about);
    let shared = Shared { transform: task.transform(), run, ds: Arc::new(ds), spe, devices, sync };
    let (model, steps) = std::thread::scope(|scope| {
        // Every other device starts from a copy of rank 0's model (the same initialisation or
        // checkpoint) and the same optimizer state.
        let workers: Vec<_> = (1..world)
            .map(|rank| {
                let mut task = task.clone();
                task.to_device(&shared.devices[rank]);
                let start = Start {
                    model: start.model.clone().fork(&shared.devices[rank].clone().autodiff()),
                    optimizer: start.optimizer.clone(),
                    ..start
                };
                let shared = &shared;
                scope.spawn(move || train(&mut task, start, rank, shared, None))
            })
            .collect();
        let writer = Writer { reporter: &mut *reporter, metrics, mpath };
        let main = train(task, start, 0, &shared, Some(writer));
        for (rank, worker) in (1..).zip(workers) {
            match worker.join() {
                Ok(result) => drop(result.with_context(|| format!("the device of rank {rank} failed"))?),
                Err(_) => bail!("the device of rank {rank} panicked (its message is printed above)"),
            }
        }
        main
    })?;
    reporter.finish();
    Ok(Fit { model, steps, lock })
}

/// The training loop of one device (`rank`): every device runs it in step with the others;
/// `writer` is rank 0's.
#[allow(clippy::type_complexity)]
fn train<T: Task>(
    task: &mut T,
    start: Start<T::Model>,
    rank: usize,
    shared: &Shared,
    mut writer: Option<Writer>,
) -> Result<(T::Model, Vec<(StepMetrics, Extras)>)> {
    let Shared { run, ds, transform, spe, devices, sync } = shared;
    let (spe, world) = (*spe, devices.len());
    let device = devices[rank].clone().autodiff();
    let ckpt = task.checkpoint_path();
    let mut model = if *sync { start.model.map(&mut Sharded) } else { start.model };
    let mut stepper = task.stepper(&model, spe, start.optimizer)?;
    let mut it = start.iteration;
    let started = crate::runtime::Stopwatch::start();
    let mut steps = Vec::new();
    let mut recent = VecDeque::new();
    let (mut lr, mut optimizer_steps) = (0.0, it / run.accum_iter as u64);
    for epoch in (it / spe as u64)..run.epochs as u64 {
        let first = (it % spe as u64) as usize;
        let order = rank_order(&epoch_order(ds.len(), run.seed, epoch), run.batch_size, world, rank);
        let loader = Prefetcher::spawn(
            ds.clone(),
            transform.clone(),
            order,
            run.batch_size,
            first,
            run.seed,
            epoch,
            run.prefetch,
        );
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        let mut t0 = Instant::now();
        for batch in loader {
            let mut batch = batch?;
            let b = batch.len() * world;
            let (loss_t, output) = task.loss(&model, &mut batch, Step { iteration: it, rank }, &device)?;
            // The loss of the whole batch: every device sees the same value, so all stop together.
            let loss = if *sync {
                all_reduce(loss_t.clone().detach(), ReduceOperation::Mean, devices.clone()).resolve()
            } else {
                loss_t.clone()
            };
            let loss = loss.into_scalar::<f32>() as f64;
            if !loss.is_finite() {
                bail!(
                    "the loss is {loss} at iteration {it}: training diverged; lower the learning rate (--base-lr or --lr) or \
                     lengthen --warmup-epochs (the last good checkpoint, if any, is '{}')",
                    ckpt.display()
                );
            }
            let update;
            (model, update) = stepper.backward(model, loss_t, it);
            if let Some(u) = &update {
                lr = u.lr;
                optimizer_steps += 1;
            }
            let extras;
            (model, extras) = task.after_batch(model, output, it, update.as_ref())?;
            it += 1;
            (loss_sum, batches) = (loss_sum + loss, batches + 1);
            let Some(w) = writer.as_mut() else { continue };
            recent.push_back((b, t0.elapsed().as_secs_f64()));
            if recent.len() > 20 {
                recent.pop_front();
            }
            let rate =
                recent.iter().map(|r| r.0).sum::<usize>() as f64 / recent.iter().map(|r| r.1).sum::<f64>().max(1e-9);
            let m = StepMetrics {
                iteration: it,
                epoch,
                loss,
                lr,
                images_per_sec: rate,
                elapsed_s: started.wall_s(),
                cpu_s: started.cpu_s(),
            };
            let mut line = serde_json::to_string(&m)?;
            line.pop();
            for (k, v) in &extras {
                line.push_str(&format!(",\"{k}\":{v}"));
            }
            writeln!(w.metrics, "{line}}}").with_context(|| format!("cannot write '{}'", w.mpath.display()))?;
            w.reporter.step(&m);
            steps.push((m, extras));
            t0 = Instant::now();
        }
        ensure!(it == (epoch + 1) * spe as u64, "the data loader stopped early in epoch {epoch}");
        let Some(w) = writer.as_mut() else { continue };
        w.metrics.flush().with_context(|| format!("cannot write '{}'", w.mpath.display()))?;
        let progress = Progress { iteration: it, optimizer_steps, epoch: epoch + 1 };
        let end = EpochEnd {
            progress,
            mean_loss: loss_sum / batches.max(1) as f64,
            elapsed_s: started.wall_s(),
            cpu_s: started.cpu_s(),
        };
        let report = task.end_of_epoch(&model, &end)?;
        if let (Some(record), Some(log)) = (&report.record, task.epoch_log()) {
            writeln!(append(&log)?, "{record}").with_context(|| format!("cannot write '{}'", log.display()))?;
        }
        if let Some(msg) = &report.message {
            w.reporter.message(msg);
        }
        if (epoch + 1) % run.checkpoint_every as u64 == 0 || epoch + 1 == run.epochs as u64 {
            task.save(&ckpt, &model, stepper.optimizer(), progress)?;
            w.reporter.message(&format!("epoch {}: checkpoint written to {}", epoch + 1, ckpt.display()));
            if run.keep_checkpoints {
                let kept = kept_checkpoint(&run.out, epoch + 1);
                std::fs::create_dir_all(kept.parent().expect("a folder"))?;
                std::fs::copy(&ckpt, &kept)
                    .with_context(|| format!("cannot copy '{}' to '{}'", ckpt.display(), kept.display()))?;
            }
            w.reporter.checkpoint(&ckpt, epoch + 1);
        }
    }
    Ok((model, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_time_adds_up_across_resumes() {
        assert!((training_seconds([1.0, 2.0, 3.0, 0.5, 1.5]) - 4.5).abs() < 1e-12);
    }

    #[test]
    fn core_seconds_take_cpu_time_where_measured_and_wall_time_x_threads_before() {
        // A first start without CPU readings (3 s on 2 threads), a resume with them (1.5 s of CPU
        // in 4 s of wall time: the core was shared).
        let readings = [(1.0, None), (3.0, None), (2.0, Some(0.5)), (4.0, Some(1.5))];
        assert!((training_core_seconds(readings, 2) - 7.5).abs() < 1e-12);
        assert!((training_core_seconds([(1.0, Some(0.9)), (2.0, Some(1.9))], 8) - 1.9).abs() < 1e-12);
    }

    #[test]
    fn each_device_takes_its_slice_of_every_global_batch() {
        let order: Vec<usize> = (100..123).collect(); // 23 images: 3 global batches of 2 x 3, 5 left over
        let shares: Vec<_> = (0..2).map(|r| rank_order(&order, 3, 2, r)).collect();
        assert_eq!(shares[0], [100, 101, 102, 106, 107, 108, 112, 113, 114]);
        assert_eq!(shares[1], [103, 104, 105, 109, 110, 111, 115, 116, 117]);
        assert_eq!(rank_order(&order, 3, 1, 0), order[..21], "one device: the order, whole batches only");
    }

    #[test]
    fn rank_zero_draws_the_single_device_stream_and_other_ranks_their_own() {
        use rand::RngCore;
        let draw = |step: Step| step.rng(7, 0x4D41534B).next_u64();
        assert_eq!(draw(Step::new(3)), rng_for(&[7, 3, 0x4D41534B]).next_u64());
        assert_ne!(draw(Step { iteration: 3, rank: 1 }), draw(Step::new(3)));
        assert_ne!(draw(Step { iteration: 3, rank: 1 }), draw(Step { iteration: 3, rank: 2 }));
    }

    #[test]
    fn keep_records_drops_later_and_half_written_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.jsonl");
        std::fs::write(&path, "{\"iteration\":1}\n{\"iteration\":2}\n{\"iteration\":3}\n{\"itera").unwrap();
        keep_records(&path, "iteration", 2).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"iteration\":1}\n{\"iteration\":2}\n");
    }
}
