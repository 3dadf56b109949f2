//! Parity with the official BEiT masked-image-modeling model (microsoft/unilm
//! `VisionTransformerForMaskedImageModeling` on timm's BEiT blocks; fixtures from
//! tools/make_beit_fixtures.py): official weights load through mim's loader, and encoder features,
//! masked-position logits, the loss and every parameter gradient match PyTorch on fixed weights,
//! pixels, boolean mask and token ids. Two variants: BEiT pretraining's settings (shared relative
//! position bias, layer scale) and the options (per-block bias, absolute position embedding, no
//! layer scale).

mod common;

use common::{assert_gradients_close, max_diff};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use mim::io::{TensorMap, gradients, read_safetensors};
use mim::masking::BoolMask;
use mim::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use mim::weights::{beit_from_official, load_beit_weights};

/// Largest tolerated absolute difference (values are O(1); PyTorch and burn differ in reduction order).
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Case {
    cfg: BeitConfig,
    io: TensorMap,
    weights: PathBuf,
    device: Device,
}

impl Case {
    fn new(variant: &str) -> Self {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("beit_tiny_config.json")).unwrap()).unwrap();
        Case {
            cfg: serde_json::from_value(json["models"][variant].clone()).unwrap(),
            io: read_safetensors(&fixture(&format!("beit_tiny_{variant}_io.safetensors"))).unwrap(),
            weights: fixture(&format!("beit_tiny_{variant}_weights.safetensors")),
            device: Device::flex().autodiff(),
        }
    }

    fn model(&self) -> BeitForMaskedImageModeling {
        load_beit_weights(self.cfg.init(123, &self.device).unwrap(), &self.cfg, &self.weights).unwrap()
    }

    fn pixels(&self) -> Tensor<4> {
        let (shape, v) = &self.io["pixel_values"];
        Tensor::from_data(TensorData::new(v.clone(), shape.clone()), &self.device)
    }

    fn mask(&self) -> BoolMask {
        let (shape, v) = &self.io["bool_masked_pos"];
        BoolMask::new(v.iter().map(|&m| m > 0.5).collect(), shape[0], (self.cfg.grid(), self.cfg.grid())).unwrap()
    }

    fn token_ids(&self) -> Tensor<2, Int> {
        let (shape, v) = &self.io["token_ids"];
        let ids: Vec<i64> = v.iter().map(|&t| t as i64).collect();
        Tensor::from_data(TensorData::new(ids, shape.clone()), &self.device)
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
    let d = max_diff(ours, theirs);
    eprintln!("{what}: max |mim - torch| = {d:.2e}");
    assert!(d <= TOL, "{what}: max difference {d} > {TOL}");
}

fn forward_and_loss_match(variant: &str) {
    let c = Case::new(variant);
    let model = c.model();
    let mask = c.mask();
    let features = model.forward_features(c.pixels(), &mask);
    assert_close(&format!("{variant}: encoder features"), &values(features), &c.io["features"].1);
    let logits = model.forward(c.pixels(), &mask);
    assert_eq!(logits.dims(), [mask.count(), c.cfg.vocab_size]);
    assert_close(&format!("{variant}: masked logits"), &values(logits.clone()), &c.io["logits"].1);
    let loss = BeitForMaskedImageModeling::forward_loss(
        logits,
        BeitForMaskedImageModeling::masked_targets(c.token_ids(), &mask),
    );
    assert_close(&format!("{variant}: loss"), &values(loss), &c.io["loss"].1);
}

fn gradients_match(variant: &str) {
    let c = Case::new(variant);
    let model = c.model();
    let mask = c.mask();
    let logits = model.forward(c.pixels(), &mask);
    let loss = BeitForMaskedImageModeling::forward_loss(
        logits,
        BeitForMaskedImageModeling::masked_targets(c.token_ids(), &mask),
    );
    let ours = gradients(&model, &loss.backward());

    // The loader's conversion applies to gradients as to weights; the key part of the qkv bias
    // gets zeros (BEiT has no key bias), which ours must match up to rounding.
    let torch: TensorMap =
        c.io.iter().filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n.to_string(), v.clone()))).collect();
    let theirs = beit_from_official(&c.cfg, &torch).unwrap();
    assert_gradients_close(variant, &ours, &theirs, TOL);
    let key_bias = ours
        .iter()
        .filter(|(name, _)| name.ends_with("attn.qkv.bias"))
        .map(|(_, (_, g))| g[g.len() / 3..2 * g.len() / 3].iter().fold(0f32, |m, v| m.max(v.abs())))
        .fold(0f32, f32::max);
    eprintln!("{variant}: largest key-bias gradient {key_bias:.1e}");
    assert!(key_bias <= 1e-6, "the key-bias gradient should vanish, got {key_bias}");
}

#[test]
fn pretraining_variant_forward_and_loss_match_pytorch() {
    forward_and_loss_match("shared");
}

#[test]
fn pretraining_variant_gradients_match_pytorch() {
    gradients_match("shared");
}

#[test]
fn per_block_bias_and_absolute_position_variant_matches_pytorch() {
    forward_and_loss_match("block");
    gradients_match("block");
}

#[test]
fn weights_for_another_configuration_are_rejected_with_a_hint() {
    let c = Case::new("shared");
    let device = Device::flex();
    let wider = BeitConfig { embed_dim: 64, ..c.cfg.clone() };
    let err = load_beit_weights(wider.init(0, &device).unwrap(), &wider, &c.weights).unwrap_err().to_string();
    assert!(err.contains("another configuration"), "{err}");
    let bigger = BeitConfig { img_size: 32, ..c.cfg.clone() };
    let err = load_beit_weights(bigger.init(0, &device).unwrap(), &bigger, &c.weights).unwrap_err().to_string();
    assert!(err.contains("relative position index of a 8x8 patch grid"), "{err}");
    let per_block = BeitConfig { use_rel_pos_bias: true, ..c.cfg.clone() };
    let err = load_beit_weights(per_block.init(0, &device).unwrap(), &per_block, &c.weights).unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("block_rel_pos_bias.0"), "{err}");
}

#[test]
fn bad_configs_are_rejected_with_one_line_errors() {
    let base = BeitConfig::preset("beit_tiny_32").unwrap();
    for (cfg, needle) in [
        (BeitConfig { patch_size: 5, ..base.clone() }, "not divisible by patch size 5"),
        (BeitConfig { embed_dim: 100, ..base.clone() }, "not divisible by 3 heads"),
        (BeitConfig { in_chans: 0, ..base.clone() }, "in_chans"),
        (BeitConfig { depth: 0, ..base.clone() }, "depth"),
        (BeitConfig { init_std: 0.0, ..base.clone() }, "0.02"),
    ] {
        let err = cfg.init(0, &Device::flex()).unwrap_err().to_string();
        assert!(err.contains(needle) && !err.contains('\n'), "{err}");
    }
    let json = r#"{"img_size": 32, "patch_size": 4, "unknown": 1}"#;
    assert!(serde_json::from_str::<BeitConfig>(json).is_err());
}

/// The same checks through burn's generic ops instead of mim's fused kernels: the code path a GPU
/// backend runs.
#[test]
fn generic_ops_path_matches_pytorch_too() {
    let before = mim::ops::fused_dispatches();
    mim::ops::with_generic_ops(|| {
        forward_and_loss_match("shared");
        gradients_match("shared");
        forward_and_loss_match("block");
    });
    assert_eq!(mim::ops::fused_dispatches(), before, "a fused kernel ran inside with_generic_ops");
}
