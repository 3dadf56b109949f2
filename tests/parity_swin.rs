//! Parity with timm's `SwinTransformer` and the official SimMIM (fixtures from
//! tools/make_swin_fixtures.py): timm-named weights load through mim's loader, and every stage's
//! features, the pooled features, logits, both losses, the SimMIM reconstruction and every parameter
//! gradient match PyTorch on fixed weights, pixels and masks. Also the building blocks (window
//! partition, relative position index, shifted-window mask) and size validation.

mod common;

use common::{assert_gradients_close, max_diff};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use mim::io::{TensorMap, gradients, pytorch_to_burn_layout, read_safetensors};
use mim::models::simmim::{SimMim, upsample_mask};
use mim::models::swin::{
    SwinConfig, SwinTransformer, relative_position_index, shifted_window_mask, window_partition, window_reverse,
};
use mim::weights::swin::{load_simmim, load_timm, simmim_to_burn, timm_to_burn};

/// Largest tolerated absolute difference of forward values (O(1); reduction orders differ).
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture's architecture (tools/make_swin_fixtures.py `CONFIG`).
fn config() -> SwinConfig {
    SwinConfig {
        img_size: 32,
        patch_size: 2,
        in_chans: 3,
        embed_dim: 8,
        depths: vec![2, 2, 2],
        num_heads: vec![2, 2, 4],
        window_size: 4,
        mlp_ratio: 4.0,
        num_classes: 5,
        drop_path_rate: 0.0,
    }
}

struct Case {
    io: TensorMap,
    device: Device,
}

impl Case {
    fn new() -> Self {
        Case { io: read_safetensors(&fixture("swin_tiny_io.safetensors")).unwrap(), device: Device::flex().autodiff() }
    }

    fn swin(&self) -> SwinTransformer {
        load_timm(config().init(7, &self.device).unwrap(), &fixture("swin_tiny_weights.safetensors")).unwrap()
    }

    fn simmim(&self) -> SimMim {
        load_simmim(SimMim::new(&config(), 7, &self.device).unwrap(), &fixture("swin_tiny_simmim.safetensors")).unwrap()
    }

    fn tensor<const D: usize>(&self, name: &str) -> Tensor<D> {
        let (shape, v) = &self.io[name];
        Tensor::from_data(TensorData::new(v.clone(), shape.clone()), &self.device)
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

fn reference_grads(io: &TensorMap, prefix: &str) -> TensorMap {
    io.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
}

#[test]
fn stages_features_and_logits_match_timm() {
    let c = Case::new();
    let model = c.swin();
    let x = c.tensor::<4>("pixel_values");
    let stages = model.forward_stages(x.clone());
    assert_eq!(stages.len(), 3);
    for (i, s) in stages.into_iter().enumerate() {
        assert_eq!(s.dims().to_vec(), c.io[&format!("stage.{i}")].0, "stage {i} shape");
        assert_close(&format!("stage {i} features"), &values(s), &c.io[&format!("stage.{i}")].1);
    }
    let features = model.forward_features(x);
    assert_close("normalised features", &values(features.clone()), &c.io["features"].1);
    assert_close("pooled features", &values(SwinTransformer::pool(features.clone())), &c.io["pooled"].1);
    assert_close("logits", &values(model.forward_head(features)), &c.io["logits"].1);
}

#[test]
fn classifier_gradients_match_timm() {
    let c = Case::new();
    let model = c.swin();
    let loss = (model.forward(c.tensor::<4>("pixel_values")) * c.tensor::<2>("logit_weights")).sum();
    assert_close("classifier loss", &values(loss.clone()), &c.io["cls_loss"].1);
    let ours = gradients(&model, &loss.backward());
    assert_gradients_close("Swin", &ours, &timm_to_burn(&reference_grads(&c.io, "grad.")).unwrap(), TOL);
}

#[test]
fn simmim_loss_reconstruction_and_gradients_match_official() {
    let c = Case::new();
    let model = c.simmim();
    let x = c.tensor::<4>("pixel_values");
    let mask = c.tensor::<2>("mask");
    let out = model.forward(x, mask);
    assert_close("SimMIM reconstruction", &values(out.reconstruction), &c.io["simmim_reconstruction"].1);
    assert_close("SimMIM loss", &values(out.loss.clone()), &c.io["simmim_loss"].1);
    let ours = gradients(&model, &out.loss.backward());
    assert_gradients_close("SimMIM", &ours, &simmim_to_burn(&reference_grads(&c.io, "simmim_grad.")).unwrap(), TOL);
}

#[test]
fn mask_upsampling_matches_official_repeat_interleave() {
    let c = Case::new();
    let grid = c.tensor::<3>("mask_grid");
    let [b, _, _] = grid.dims();
    assert_eq!(values(upsample_mask(grid, 4).reshape([b, 256])), c.io["mask"].1);
}

#[test]
fn relative_position_index_and_shift_masks_match_timm() {
    let c = Case::new();
    let index: Vec<f32> = relative_position_index(4).into_iter().map(|v| v as f32).collect();
    assert_eq!(index, c.io["relative_position_index"].1);
    // Stage 0: 16x16 tokens, stage 1: 8x8; window 4, shift 2. Stage 2 (4x4, one window) has none.
    assert_eq!(shifted_window_mask(16, 4, 2), c.io["attn_mask.0"].1);
    assert_eq!(shifted_window_mask(8, 4, 2), c.io["attn_mask.1"].1);
    assert!(!c.io.contains_key("attn_mask.2"));
    let cfg = config();
    assert_eq!((0..3).map(|i| (cfg.stage_window(i), cfg.stage_shift(i))).collect::<Vec<_>>(), [(4, 2), (4, 2), (4, 0)]);
    let built: Vec<_> = c.swin().layers.iter().map(|s| (s.resolution(), s.window(), s.shift())).collect();
    assert_eq!(built, [(16, 4, 2), (8, 4, 2), (4, 4, 0)]);
}

#[test]
fn shift_mask_only_separates_tokens_from_different_regions() {
    // 8x8 map, window 4, shift 2: the top-left window is untouched by the roll (all zeros); the
    // bottom-right one holds four regions of 2x2 tokens, each attending only to itself.
    let m = shifted_window_mask(8, 4, 2);
    let (n, win) = (16, |k: usize| &m[k * 256..(k + 1) * 256]);
    assert!(win(0).iter().all(|&v| v == 0.0));
    let region = |t: usize| (t / 4 >= 2) as usize * 2 + (t % 4 >= 2) as usize;
    for i in 0..n {
        for j in 0..n {
            let want = if region(i) == region(j) { 0.0 } else { -100.0 };
            assert_eq!(win(3)[i * n + j], want, "window 3, query {i}, key {j}");
        }
    }
}

#[test]
fn window_partition_round_trips_and_keeps_windows_contiguous() {
    let device = Device::flex();
    let x = Tensor::<4>::random([2, 8, 12, 3], Distribution::Normal(0.0, 1.0), &device);
    let w = window_partition(x.clone(), 4);
    assert_eq!(w.dims(), [2 * 2 * 3, 16, 3]);
    assert_eq!(values(window_reverse(w.clone(), 4, 8, 12)), values(x.clone()));
    // Window 4 of image 1 is rows 4..8, columns 4..8 (image-major, then row-major windows).
    let expect = x.slice([1..2, 4..8, 4..8, 0..3]).reshape([16, 3]);
    assert_eq!(values(w.slice([6 + 4..6 + 5]).reshape([16, 3])), values(expect));
}

#[test]
fn stochastic_depth_applies_only_with_an_rng() {
    let device = Device::flex();
    let model = SwinConfig { drop_path_rate: 0.5, ..config() }.init(0, &device).unwrap();
    let x = model.embed(Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device));
    let last = |v: Vec<Tensor<4>>| values(v.into_iter().last().unwrap());
    let eval = last(model.forward_stages_from(x.clone(), None));
    assert_eq!(eval, last(model.forward_stages_from(x.clone(), None)), "inference is deterministic");
    let mut rng = <mim::models::init::InitRng as rand::SeedableRng>::seed_from_u64(1);
    let train = last(model.forward_stages_from(x, Some(&mut rng)));
    assert!(max_diff(&train, &eval) > 1e-3, "drop path changed nothing");
}

#[test]
fn imagenet_presets_have_timms_parameter_counts() {
    // sum(p.numel() for p in timm.create_model(name).parameters()), timm 1.0.31
    for (name, timm) in [("swin_tiny_patch4_window7_224", 28_288_354), ("swin_small_patch4_window7_224", 49_606_258)] {
        let model = SwinConfig::preset(name).unwrap().init(0, &Device::flex()).unwrap();
        assert_eq!(burn::module::Module::num_params(&model), timm, "{name}");
    }
}

#[test]
fn bad_sizes_are_clear_errors() {
    let err = |cfg: SwinConfig| cfg.validate().unwrap_err().to_string();
    let e = err(SwinConfig { img_size: 30, ..config() });
    assert!(e.contains("not divisible by patch size 2") || e.contains("cannot be halved"), "{e}");
    let e = err(SwinConfig { img_size: 33, ..config() });
    assert!(e.contains("image size 33 is not divisible by patch size 2"), "{e}");
    let e = err(SwinConfig { window_size: 3, ..config() });
    assert!(e.contains("stage 0 resolution 16 is not divisible by window size 3"), "{e}");
    let e = err(SwinConfig { num_heads: vec![2, 2], ..config() });
    assert!(e.contains("give one head count per stage"), "{e}");
    let e = err(SwinConfig { num_heads: vec![3, 2, 4], ..config() });
    assert!(e.contains("stage 0 width 8 is not divisible by its 3 heads"), "{e}");
    assert!(SwinConfig::preset("swin_huge").unwrap_err().to_string().contains("swin_tiny_patch4_window7_224"));
    for (name, _) in SwinConfig::PRESETS {
        SwinConfig::preset(name).unwrap().validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(config().init(0, &Device::flex()).is_ok());
    assert!(SwinConfig { window_size: 5, ..config() }.init(0, &Device::flex()).is_err());
}

#[test]
fn loader_rejects_weights_of_another_configuration() {
    let model = SwinConfig { embed_dim: 16, num_heads: vec![2, 4, 8], ..config() }.init(0, &Device::flex()).unwrap();
    let e = load_timm(model, &fixture("swin_tiny_weights.safetensors")).unwrap_err().to_string();
    assert!(e.contains("has shape") && e.contains("another configuration"), "{e}");
}

#[test]
fn official_checkpoint_layout_loads_like_timm() {
    // Microsoft's checkpoints (and timm < 0.9) merge patches at the end of stage i and name the head
    // `head.weight`; they also carry the derived buffers, which the loader drops.
    let timm = read_safetensors(&fixture("swin_tiny_weights.safetensors")).unwrap();
    let mut official: TensorMap = timm
        .iter()
        .map(|(k, t)| {
            let k = match k.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
                Some((i, rest)) if rest.starts_with("downsample.") => {
                    format!("layers.{}.{rest}", i.parse::<usize>().unwrap() - 1)
                }
                _ => k.replace("head.fc.", "head."),
            };
            (k, t.clone())
        })
        .collect();
    official.insert("layers.0.blocks.1.attn_mask".into(), (vec![1], vec![0.0]));
    official.insert("layers.0.blocks.0.attn.relative_position_index".into(), (vec![1], vec![0.0]));
    assert!(official.contains_key("layers.0.downsample.reduction.weight") && official.contains_key("head.weight"));
    assert_eq!(timm_to_burn(&official).unwrap(), pytorch_to_burn_layout(&timm).unwrap());
}

/// The same checks through burn's generic ops instead of mim's fused kernels: the code path a GPU
/// backend runs.
#[test]
fn generic_ops_path_matches_timm_and_simmim_too() {
    let before = mim::ops::fused_dispatches();
    mim::ops::with_generic_ops(|| {
        stages_features_and_logits_match_timm();
        classifier_gradients_match_timm();
        simmim_loss_reconstruction_and_gradients_match_official();
    });
    assert_eq!(mim::ops::fused_dispatches(), before, "a fused kernel ran inside with_generic_ops");
}
