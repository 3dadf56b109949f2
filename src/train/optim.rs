//! AdamW with the MAE parameter groups, and the learning-rate schedule.

use burn::module::ParamGroup;
use burn::optim::{AdamWConfig, ModuleOptimizer};

/// Parameters that get no weight decay: biases, LayerNorm weights, cls / mask tokens (position
/// embeddings are fixed constants and not parameters at all).
pub fn no_weight_decay_group() -> ParamGroup {
    ParamGroup::from_any_regexes(vec![r"\.bias$", r"norm\d*\.weight$", r"(^|\.)(cls_token|mask_token)$"])
        .expect("static regexes are valid")
}

/// Whether the parameter at `path` is excluded from weight decay (the rule of [`no_weight_decay_group`]).
pub fn is_no_weight_decay(path: &str) -> bool {
    no_weight_decay_group().matches(&burn::module::ParamId::new(), Some(path))
}

/// AdamW as the MAE recipe: betas (0.9, 0.95), eps 1e-8 (PyTorch's), `weight_decay` on weight
/// matrices only.
pub fn adamw(weight_decay: f64) -> ModuleOptimizer {
    let base = AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.95).with_epsilon(1e-8);
    base.clone()
        .with_weight_decay(weight_decay as f32)
        .init()
        .with_group(no_weight_decay_group(), base.with_weight_decay(0.0).build(), None)
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
    fn decay_exclusions_follow_the_recipe() {
        for p in ["blocks.0.attn.qkv.bias", "blocks.3.norm1.weight", "decoder_norm.weight", "norm.weight", "cls_token", "mask_token"] {
            assert!(is_no_weight_decay(p), "{p} should not be decayed");
        }
        for p in ["blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "decoder_pred.weight", "blocks.1.mlp.fc2.weight"] {
            assert!(!is_no_weight_decay(p), "{p} should be decayed");
        }
    }
}
