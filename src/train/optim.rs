//! Optimizers with the papers' recipes: AdamW with the MAE parameter groups, layer-wise
//! learning-rate decay for fine-tuning, LARS for linear probing, and the learning-rate schedule.

use burn::module::ParamGroup;
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor};

use crate::ops::{self, adamw::AdamWStep};

/// Parameters that get no weight decay: biases, LayerNorm weights, cls / mask tokens (position
/// embeddings are fixed constants and not parameters at all).
pub fn no_weight_decay_group() -> ParamGroup {
    ParamGroup::from_any_regexes(vec![r"\.bias$", r"norm\d*\.weight$", r"(^|\.)(cls_token|mask_token|encoder_mask_token)$"])
        .expect("static regexes are valid")
}

/// Whether the parameter at `path` is excluded from weight decay (the rule of [`no_weight_decay_group`]).
pub fn is_no_weight_decay(path: &str) -> bool {
    no_weight_decay_group().matches(&burn::module::ParamId::new(), Some(path))
}

/// AdamW as the MAE recipe: betas (0.9, 0.95), eps 1e-8 (PyTorch's), `weight_decay` on weight
/// matrices only.
pub fn adamw(weight_decay: f64) -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdamW::new(weight_decay as f32)).with_group(no_weight_decay_group(), FusedAdamW::new(0.0), None)
}

/// burn's AdamW (same update, same state record: checkpoints of either load into the other) with
/// betas (0.9, 0.95) and eps 1e-8, whose step on flex f32 parameters is one parallel pass
/// ([`crate::ops::adamw`]) instead of burn's serial element-wise ops; burn's own elsewhere.
#[derive(Clone)]
pub struct FusedAdamW {
    burn: AdamW,
    weight_decay: f32,
}

impl FusedAdamW {
    const BETAS: (f32, f32) = (0.9, 0.95);
    const EPSILON: f32 = 1e-8;

    /// With decoupled weight decay `weight_decay`.
    pub fn new(weight_decay: f32) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(Self::BETAS.0)
            .with_beta_2(Self::BETAS.1)
            .with_epsilon(Self::EPSILON)
            .with_weight_decay(weight_decay)
            .build();
        Self { burn, weight_decay }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<AdamWState<D>>) -> (Tensor<D>, Option<AdamWState<D>>) {
        if !(ops::adamw::supported(&tensor) && ops::adamw::supported(&grad)) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let (time, m, v) = match state {
            Some(s) => (s.momentum.time + 1, s.momentum.moment_1, s.momentum.moment_2),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let step = AdamWStep { lr, beta_1: Self::BETAS.0, beta_2: Self::BETAS.1, epsilon: Self::EPSILON, weight_decay: self.weight_decay, time };
        let (p, m, v) = ops::adamw::adamw_step(tensor, grad, m, v, step);
        (p, Some(AdamWState::new(AdaptiveMomentumState::new(time, m, v))))
    }

    fn to_device<const D: usize>(state: AdamWState<D>, device: &Device) -> AdamWState<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
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
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>, num_layers: usize, decay: f64, layer_of: impl Fn(&str) -> usize) -> Self {
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
    type State<const D: usize> = LarsState<D>;

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
            Some(s) => s.velocity.mul_scalar(self.momentum) + update,
            None => update,
        };
        (tensor - velocity.clone().mul_scalar(lr), Some(LarsState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        LarsState { velocity: state.velocity.to_device(device) }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let paths = ["cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.norm1.bias", "head.weight"];
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
            let (ours, theirs) = (FusedAdamW::new(wd), FusedAdamW::new(wd).burn);
            // More values than one parallel chunk.
            let p0 = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 1.0), &device);
            assert!(ops::adamw::supported(&p0), "the fused step must be the one under test");
            let (mut p1, mut p2, mut s1, mut s2) = (p0.clone(), p0, None, None);
            for (step, lr) in [1e-3, 5e-4, 2e-3].into_iter().enumerate() {
                let g = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 0.1 * (step + 1) as f64), &device);
                (p1, s1) = ours.step(lr, p1, g.clone(), s1);
                (p2, s2) = theirs.step(lr, p2, g, s2);
            }
            let (a, b) = (s1.unwrap().momentum, s2.unwrap().momentum);
            assert_eq!(a.time, b.time);
            for (name, x, y) in [("parameter", p1, p2), ("first moment", a.moment_1, b.moment_1), ("second moment", a.moment_2, b.moment_2)] {
                let diff = (x - y.clone()).abs().max().into_scalar::<f32>() / y.abs().max().into_scalar::<f32>();
                assert!(diff < 1e-6, "{name} differs by {diff} (relative) with weight decay {wd}");
            }
        }
    }

    #[test]
    fn decay_exclusions_follow_the_recipe() {
        for p in ["blocks.0.attn.qkv.bias", "blocks.3.norm1.weight", "decoder_norm.weight", "norm.weight", "cls_token", "mask_token", "encoder_mask_token"] {
            assert!(is_no_weight_decay(p), "{p} should not be decayed");
        }
        for p in ["blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "decoder_pred.weight", "blocks.1.mlp.fc2.weight"] {
            assert!(!is_no_weight_decay(p), "{p} should be decayed");
        }
    }
}
