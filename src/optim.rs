//! Optimizers with the papers' recipes: AdamW with each official script's parameter groups,
//! layer-wise learning-rate decay for fine-tuning, LARS for linear probing, the learning-rate
//! schedules of the official scripts, global-norm gradient clipping, and [`Stepper`], the one
//! training step (accumulate, schedule, clip, update) every training loop runs.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsAccumulator, GradientsParams, LearningRate,
    ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource,
};
use burn::tensor::{Device, Tensor};

use crate::ops::{self, adamw::AdamWStep};

/// AdamW betas of MAE pretraining (`main_pretrain.py`).
pub const MAE_BETAS: (f32, f32) = (0.9, 0.95);
/// PyTorch's default AdamW betas, used by BEiT (`--opt_betas` default), SimMIM (`TRAIN.OPTIMIZER.BETAS`)
/// and MAE fine-tuning (`torch.optim.AdamW(param_groups, lr=args.lr)`).
pub const TORCH_BETAS: (f32, f32) = (0.9, 0.999);

/// Path and number of dimensions of every parameter of `module`, in visiting order.
pub fn param_ranks<M: Module>(module: &M) -> Vec<(String, usize)> {
    struct Ranks {
        path: Vec<String>,
        out: Vec<(String, usize)>,
    }
    impl ModuleVisitor for Ranks {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.out.push((self.path.join("."), D));
        }
    }
    let mut v = Ranks { path: Vec::new(), out: Vec::new() };
    module.visit(&mut v);
    v.out
}

/// AdamW (eps 1e-8, PyTorch's) with `betas` and decoupled weight decay `weight_decay`, except on
/// the parameters for which `no_decay(path, ndim)` holds: the official scripts' two parameter
/// groups (each model type states its script's rule, e.g. [`crate::models::pretrain::MimModel::no_weight_decay`]).
pub fn adamw<M: Module>(
    model: &M,
    weight_decay: f64,
    betas: (f32, f32),
    no_decay: impl Fn(&str, usize) -> bool,
) -> ModuleOptimizer {
    let exempt: Vec<String> = param_ranks(model).into_iter().filter(|(p, d)| no_decay(p, *d)).map(|(p, _)| p).collect();
    ModuleOptimizer::from(FusedAdamW::new(weight_decay as f32, betas)).with_group(
        ParamGroup::from_paths(exempt),
        FusedAdamW::new(0.0, betas),
        None,
    )
}

/// burn's AdamW (same update, same state record: checkpoints of either load into the other) with
/// eps 1e-8, whose step on flex f32 parameters is one parallel pass ([`crate::ops::adamw`])
/// instead of burn's serial element-wise ops; burn's own elsewhere.
#[derive(Clone)]
pub struct FusedAdamW {
    burn: AdamW,
    weight_decay: f32,
    betas: (f32, f32),
}

impl FusedAdamW {
    const EPSILON: f32 = 1e-8;

    /// With decoupled weight decay `weight_decay` and moment decay rates `betas`.
    pub fn new(weight_decay: f32, betas: (f32, f32)) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(betas.0)
            .with_beta_2(betas.1)
            .with_epsilon(Self::EPSILON)
            .with_weight_decay(weight_decay)
            .build();
        Self { burn, weight_decay, betas }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = HostLoaded<AdamWState<D>>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let state = state.map(|s| s.0);
        if !(ops::adamw::supported(&tensor) && ops::adamw::supported(&grad)) {
            let (tensor, state) = self.burn.step(lr, tensor, grad, state);
            return (tensor, state.map(HostLoaded));
        }
        let (time, m, v) = match state {
            Some(s) => (s.momentum.time + 1, s.momentum.moment_1, s.momentum.moment_2),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let step = AdamWStep {
            lr,
            beta_1: self.betas.0,
            beta_2: self.betas.1,
            epsilon: Self::EPSILON,
            weight_decay: self.weight_decay,
            time,
        };
        let (p, m, v) = ops::adamw::adamw_step(tensor, grad, m, v, step);
        (p, Some(HostLoaded(AdamWState::new(AdaptiveMomentumState::new(time, m, v)))))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        HostLoaded(<AdamW as Optimizer>::to_device(state.0, device))
    }
}

/// An optimizer state that a checkpoint loads into host memory (flex), under the same names as `S`.
///
/// burn loads optimizer state onto `Device::default()`, which a CUDA build makes the first GPU:
/// a CPU run would then fail to resume where there is no GPU, and every rank of a data-parallel
/// run would load onto GPU 0. burn's `ModuleOptimizer` moves each state to its parameter's device
/// at every step, so a state loaded on the host lands on the right device at the first step.
#[derive(Clone)]
pub struct HostLoaded<S>(pub S);

impl<S: RecordState> RecordState for HostLoaded<S> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.0.state_flatten(prefix, out);
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, _device: &Device) -> Option<Self> {
        S::state_unflatten(prefix, src, &Device::flex()).map(Self)
    }
}

/// Scales `grads` of `model`'s parameters so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (factor `max_norm / (norm + 1e-6)`, capped at 1); returns the
/// norm before clipping.
pub fn clip_grad_norm<M: Module>(model: &M, mut grads: GradientsParams, max_norm: f64) -> (GradientsParams, f64) {
    struct SumSquares<'a>(&'a GradientsParams, f64);
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                // Per tensor in f32 as torch, summed in f64.
                self.1 += g.powi_scalar(2).sum().into_scalar::<f32>() as f64;
            }
        }
    }
    struct Scale<'a>(&'a mut GradientsParams, f64);
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, g.mul_scalar(self.1));
            }
        }
    }
    let mut sum = SumSquares(&grads, 0.0);
    model.visit(&mut sum);
    let norm = sum.1.sqrt();
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        model.visit(&mut Scale(&mut grads, factor));
    }
    (grads, norm)
}

/// Layer-wise learning-rate decay (BEiT, MAE fine-tuning): a parameter of layer `i` of `n + 1`
/// layers learns at `lr x decay^(n + 1 - i)`, so the head and last block move most and the
/// embedding least.
#[derive(Clone)]
pub struct LayerDecay {
    groups: Vec<(ParamGroup, f64)>,
}

impl LayerDecay {
    /// Groups the parameter `paths` by `layer_of(path)` (in `0..=num_layers`).
    pub fn new<'a>(
        paths: impl IntoIterator<Item = &'a str>,
        num_layers: usize,
        decay: f64,
        layer_of: impl Fn(&str) -> usize,
    ) -> Self {
        let mut by_layer: Vec<Vec<String>> = vec![Vec::new(); num_layers + 1];
        for p in paths {
            by_layer[layer_of(p).min(num_layers)].push(p.to_string());
        }
        let groups = by_layer
            .into_iter()
            .enumerate()
            .filter(|(_, paths)| !paths.is_empty())
            .map(|(i, paths)| (ParamGroup::from_paths(paths), decay.powi((num_layers - i) as i32)))
            .collect();
        Self { groups }
    }

    /// The learning rate of every parameter when the schedule says `lr`.
    pub fn lr(&self, lr: f64) -> ModuleLearningRate {
        let mut policy = ModuleLrScheduler::new(lr);
        for (group, scale) in &self.groups {
            policy = policy.with_group(group.clone(), lr * scale);
        }
        policy.step()
    }

    /// The multiplier of the parameter at `path`.
    pub fn scale(&self, path: &str) -> f64 {
        let id = burn::module::ParamId::new();
        self.groups.iter().rev().find(|(g, _)| g.matches(&id, Some(path))).map_or(1.0, |(_, s)| *s)
    }
}

/// LARS (You et al. 2017) as MAE's linear probing uses it (`util/lars.py`): SGD with momentum whose
/// update of each weight matrix is rescaled by `trust x |w| / |g + wd w|`; vectors (biases, norms)
/// take plain momentum SGD.
#[derive(Clone, Debug)]
pub struct Lars {
    /// Weight decay on matrices.
    pub weight_decay: f64,
    /// Momentum.
    pub momentum: f64,
    /// Trust coefficient (0.001 as MAE).
    pub trust_coefficient: f64,
}

/// Momentum buffer of [`Lars`].
#[derive(Clone)]
pub struct LarsState<const D: usize> {
    /// Velocity.
    pub velocity: Tensor<D>,
}

// Written by hand: burn's `#[derive(RecordState)]` only expands inside burn-optim itself.
impl<const D: usize> RecordState for LarsState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "velocity", self.velocity.clone().into_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        Some(Self { velocity: Tensor::from_data(src.take_tensor(prefix, "velocity")?, device) })
    }
}

impl Optimizer for Lars {
    type State<const D: usize> = HostLoaded<LarsState<D>>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let mut update = grad;
        if D > 1 {
            update = update + tensor.clone().mul_scalar(self.weight_decay);
            let p_norm = tensor.clone().powi_scalar(2).sum().sqrt().into_scalar::<f32>() as f64;
            let u_norm = update.clone().powi_scalar(2).sum().sqrt().into_scalar::<f32>() as f64;
            if p_norm > 0.0 && u_norm > 0.0 {
                update = update.mul_scalar(self.trust_coefficient * p_norm / u_norm);
            }
        }
        let velocity = match state {
            Some(s) => s.0.velocity.mul_scalar(self.momentum) + update,
            None => update,
        };
        (tensor - velocity.clone().mul_scalar(lr), Some(HostLoaded(LarsState { velocity })))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        HostLoaded(LarsState { velocity: state.0.velocity.to_device(device) })
    }
}

/// Per-iteration linear warmup then half-cycle cosine, as MAE's `lr_sched.adjust_learning_rate`.
///
/// `epoch` is fractional (`epoch + iteration / iterations_per_epoch`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warmup length in epochs.
    pub warmup_epochs: f64,
    /// Total epochs.
    pub epochs: f64,
}

impl CosineSchedule {
    /// Learning rate at fractional `epoch`.
    pub fn at(&self, epoch: f64) -> f64 {
        if epoch < self.warmup_epochs {
            return self.lr * epoch / self.warmup_epochs;
        }
        let progress = (epoch - self.warmup_epochs) / (self.epochs - self.warmup_epochs).max(f64::MIN_POSITIVE);
        self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }
}

/// Which official script's learning-rate schedule a run follows. Every one warms up, then decays
/// by a half cosine to `min_lr`; they differ in the details, which [`LrSchedule::at`] reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// MAE's `util/lr_sched.adjust_learning_rate` at the fractional epoch of the update's first
    /// micro-batch: linear from 0 over `warmup_epochs`, then cosine over the remaining epochs.
    Mae,
    /// BEiT's `utils.cosine_scheduler`, one value per iteration: `np.linspace(0, lr, W)` over the
    /// `W = warmup_epochs x iterations per epoch` warm-up iterations (it reaches `lr` at W - 1),
    /// then cosine over the rest.
    Beit,
    /// SimMIM's timm `CosineLRScheduler(t_initial = all iterations, warmup_t, warmup_lr_init,
    /// lr_min, cycle_limit = 1, t_in_epochs = False)`, whose `step_update(i)` runs after the
    /// update of iteration i: an update uses the value of the iteration before its first
    /// micro-batch (`warmup_lr` for the very first).
    Timm,
}

/// A run's learning rate at each update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// The official formula.
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Where the warm-up starts ([`ScheduleKind::Timm`]; the others start at 0 as their scripts).
    pub warmup_lr: f64,
    /// Warm-up length in epochs (whole iterations of it for BEiT and SimMIM, as their scripts).
    pub warmup_epochs: f64,
    /// Total epochs.
    pub epochs: usize,
    /// Iterations (micro-batches) per epoch.
    pub iters_per_epoch: usize,
}

impl LrSchedule {
    /// The learning rate of the update whose first micro-batch is `iteration` (0-based, counted
    /// over the whole run).
    pub fn at(&self, iteration: u64) -> f64 {
        let spe = self.iters_per_epoch.max(1) as u64;
        let total = self.epochs as u64 * spe;
        let warmup = (self.warmup_epochs * spe as f64) as u64;
        let cosine = |t: f64, len: f64| {
            self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t / len).cos())
        };
        match self.kind {
            ScheduleKind::Mae => {
                let epoch = (iteration / spe) as f64 + (iteration % spe) as f64 / spe as f64;
                CosineSchedule {
                    lr: self.lr,
                    min_lr: self.min_lr,
                    warmup_epochs: self.warmup_epochs,
                    epochs: self.epochs as f64,
                }
                .at(epoch)
            }
            ScheduleKind::Beit if iteration < warmup => match warmup {
                1 => 0.0,
                w => self.lr * iteration as f64 / (w - 1) as f64,
            },
            ScheduleKind::Beit => cosine((iteration - warmup) as f64, total.saturating_sub(warmup).max(1) as f64),
            ScheduleKind::Timm => {
                let Some(t) = iteration.checked_sub(1) else {
                    return if warmup > 0 { self.warmup_lr } else { self.lr };
                };
                if t < warmup {
                    self.warmup_lr + t as f64 * (self.lr - self.warmup_lr) / warmup as f64
                } else if t < total {
                    cosine(t as f64, total as f64)
                } else {
                    self.min_lr
                }
            }
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// The schedule's learning rate (before any layer-wise scale).
    pub lr: f64,
    /// Global gradient norm before clipping (when the run clips).
    pub grad_norm: Option<f64>,
}

/// The training step of every loop, in the official scripts' order: backward of the micro-batch
/// loss divided by the accumulation steps, gradients summed until the group is complete (or the
/// epoch ends), then the schedule's learning rate for the group's first micro-batch, global-norm
/// clipping, and the optimizer's update.
pub struct Stepper<M: Module> {
    optim: ModuleOptimizer,
    schedule: LrSchedule,
    accum_iter: usize,
    clip_grad: Option<f64>,
    layer_decay: Option<LayerDecay>,
    accum: GradientsAccumulator<M>,
    pending: usize,
}

impl<M: Module> Stepper<M> {
    /// Steps `optim` every `accum_iter` micro-batches at `schedule`'s learning rate.
    pub fn new(optim: ModuleOptimizer, schedule: LrSchedule, accum_iter: usize) -> Self {
        Self {
            optim,
            schedule,
            accum_iter: accum_iter.max(1),
            clip_grad: None,
            layer_decay: None,
            accum: GradientsAccumulator::new(),
            pending: 0,
        }
    }

    /// Clips the global gradient norm of each update to `max_norm` (`None` or a non-positive value: no clipping).
    pub fn with_clip_grad(mut self, max_norm: Option<f64>) -> Self {
        self.clip_grad = max_norm.filter(|&n| n > 0.0);
        self
    }

    /// Scales each parameter's learning rate by its layer's factor.
    pub fn with_layer_decay(mut self, decay: LayerDecay) -> Self {
        self.layer_decay = Some(decay);
        self
    }

    /// The optimizer (its state goes into checkpoints).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// The learning rate of the parameter at `path` when the schedule says `lr`.
    pub fn lr_of(&self, path: &str, lr: f64) -> f64 {
        self.layer_decay.as_ref().map_or(lr, |d| lr * d.scale(path))
    }

    /// Backpropagates `loss`, the mean loss of micro-batch `iteration` (0-based over the run),
    /// and updates `model` when that micro-batch completes an update.
    pub fn backward(&mut self, model: M, loss: Tensor<1>, iteration: u64) -> (M, Option<Update>) {
        let grads = GradientsParams::from_grads((loss / self.accum_iter as f64).backward(), &model);
        self.accum.accumulate(&model, grads);
        self.pending += 1;
        let spe = self.schedule.iters_per_epoch.max(1) as u64;
        if self.pending < self.accum_iter && !(iteration + 1).is_multiple_of(spe) {
            return (model, None);
        }
        let lr = self.schedule.at(iteration + 1 - self.pending as u64);
        self.pending = 0;
        let (grads, grad_norm) = match self.clip_grad {
            Some(max) => {
                let (g, n) = clip_grad_norm(&model, self.accum.grads(), max);
                (g, Some(n))
            }
            None => (self.accum.grads(), None),
        };
        let model = match &self.layer_decay {
            Some(d) => self.optim.step(d.lr(lr), model, grads),
            None => self.optim.step(lr, model, grads),
        };
        (model, Some(Update { lr, grad_norm }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_state_loads_on_the_host_under_burns_names() {
        let host = Device::flex();
        let m = Tensor::<1>::from_floats([1.0, -2.0], &host);
        let burns = AdamWState::new(AdaptiveMomentumState::new(7, m.clone(), m.clone().abs()));
        let mut sink = StateSink::default();
        burns.state_flatten("3", &mut sink);
        let mut ours = StateSink::default();
        HostLoaded(burns).state_flatten("3", &mut ours);
        assert_eq!(format!("{:?}", ours.tensors), format!("{:?}", sink.tensors));
        assert_eq!(format!("{:?}", ours.scalars), format!("{:?}", sink.scalars));

        let mut src = StateSource::new(sink.scalars.into_iter().collect());
        for (name, data) in sink.tensors {
            src.insert_tensor(name, data);
        }
        // What burn's `load_record` passes: the first GPU in a CUDA build, where there may be none.
        let loaded = HostLoaded::<AdamWState<1>>::state_unflatten("3", &mut src, &Device::default()).unwrap().0;
        assert_eq!(loaded.momentum.time, 7);
        assert_eq!(loaded.momentum.moment_1.device(), host);
        assert_eq!(loaded.momentum.moment_2.into_data().try_to_vec::<f32>().unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_half_cosine() {
        let s = CosineSchedule { lr: 1.0, min_lr: 0.1, warmup_epochs: 2.0, epochs: 10.0 };
        assert_eq!(s.at(0.0), 0.0);
        assert!((s.at(1.0) - 0.5).abs() < 1e-12);
        assert!((s.at(2.0) - 1.0).abs() < 1e-12);
        assert!((s.at(6.0) - 0.55).abs() < 1e-12);
        assert!((s.at(10.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn layer_decay_scales_by_depth_from_the_head() {
        let paths =
            ["cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.norm1.bias", "head.weight"];
        let layer_of = |p: &str| match p {
            "cls_token" | "patch_embed.proj.weight" => 0,
            "blocks.0.attn.qkv.weight" => 1,
            "blocks.1.norm1.bias" => 2,
            _ => 3,
        };
        let d = LayerDecay::new(paths, 3, 0.5, layer_of);
        assert_eq!(d.scale("cls_token"), 0.125);
        assert_eq!(d.scale("blocks.0.attn.qkv.weight"), 0.25);
        assert_eq!(d.scale("blocks.1.norm1.bias"), 0.5);
        assert_eq!(d.scale("head.weight"), 1.0);
    }

    #[test]
    fn fused_adamw_matches_burns() {
        use burn::tensor::Distribution;
        let device = Device::flex();
        device.seed(0);
        for wd in [0.0, 0.05] {
            let (ours, theirs) = (FusedAdamW::new(wd, MAE_BETAS), FusedAdamW::new(wd, MAE_BETAS).burn);
            // More values than one parallel chunk.
            let p0 = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 1.0), &device);
            assert!(ops::adamw::supported(&p0), "the fused step must be the one under test");
            let (mut p1, mut p2, mut s1, mut s2) = (p0.clone(), p0, None, None);
            for (step, lr) in [1e-3, 5e-4, 2e-3].into_iter().enumerate() {
                let g = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 0.1 * (step + 1) as f64), &device);
                (p1, s1) = ours.step(lr, p1, g.clone(), s1);
                (p2, s2) = theirs.step(lr, p2, g, s2);
            }
            let (a, b) = (s1.unwrap().0.momentum, s2.unwrap().momentum);
            assert_eq!(a.time, b.time);
            for (name, x, y) in [
                ("parameter", p1, p2),
                ("first moment", a.moment_1, b.moment_1),
                ("second moment", a.moment_2, b.moment_2),
            ] {
                let diff = (x - y.clone()).abs().max().into_scalar::<f32>() / y.abs().max().into_scalar::<f32>();
                assert!(diff < 1e-6, "{name} differs by {diff} (relative) with weight decay {wd}");
            }
        }
    }

    #[test]
    fn official_schedules() {
        let base = LrSchedule {
            kind: ScheduleKind::Mae,
            lr: 1.0,
            min_lr: 0.1,
            warmup_lr: 0.01,
            warmup_epochs: 2.0,
            epochs: 10,
            iters_per_epoch: 4,
        };
        // MAE: the fractional epoch of the update's first micro-batch.
        assert!((base.at(4) - 0.5).abs() < 1e-12);
        assert!((base.at(24) - 0.55).abs() < 1e-12);
        // BEiT: np.linspace(0, 1, 8) over the 8 warm-up iterations, then cosine over the other 32.
        let beit = LrSchedule { kind: ScheduleKind::Beit, ..base };
        assert_eq!(beit.at(0), 0.0);
        assert!((beit.at(7) - 1.0).abs() < 1e-12);
        assert!((beit.at(8) - 1.0).abs() < 1e-12);
        assert!((beit.at(8 + 16) - 0.55).abs() < 1e-12);
        // SimMIM (timm, updated after each step): one iteration late, warmup_lr first.
        let timm = LrSchedule { kind: ScheduleKind::Timm, ..base };
        assert_eq!(timm.at(0), 0.01);
        assert_eq!(timm.at(1), 0.01);
        assert!((timm.at(5) - (0.01 + 4.0 * 0.99 / 8.0)).abs() < 1e-12);
        assert!((timm.at(21) - 0.55).abs() < 1e-12);
        assert_eq!(LrSchedule { warmup_epochs: 0.0, ..timm }.at(0), 1.0);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        use burn::module::Module;
        #[derive(Module, Debug)]
        struct Two {
            a: Param<Tensor<1>>,
            b: Param<Tensor<2>>,
        }
        let device = Device::flex().autodiff();
        let m = Two {
            a: Param::from_tensor(Tensor::from_floats([1.0, 2.0], &device)),
            b: Param::from_tensor(Tensor::from_floats([[3.0], [4.0]], &device)),
        };
        // d/dp of sum(p^2)/2 is p: the gradient's global norm is |(1, 2, 3, 4)| = sqrt(30).
        let loss = m.a.val().powi_scalar(2).sum() / 2.0 + m.b.val().powi_scalar(2).sum() / 2.0;
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let (grads, norm) = clip_grad_norm(&m, grads, 1.0);
        assert!((norm - 30f64.sqrt()).abs() < 1e-5);
        let a = grads.get::<1>(m.a.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let f = 1.0 / (30f64.sqrt() + 1e-6);
        assert!((a[1] as f64 - 2.0 * f).abs() < 1e-6, "{a:?}");
        let (_, unclipped) = clip_grad_norm(
            &m,
            GradientsParams::from_grads((m.a.val().sum() * 0.0 + m.b.val().sum() * 0.0).backward(), &m),
            1.0,
        );
        assert_eq!(unclipped, 0.0);
    }
}
