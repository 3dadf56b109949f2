//! Training fidelity: mim's own training step ([`Stepper`], built by the same configuration code
//! `mim pretrain` / `mim finetune` use) replays 50 optimizer steps of each paper's official script,
//! recorded in PyTorch by tools/make_trajectory_fixtures.py on fixed batches and masks:
//!
//! - `mae`, `mae_accum2`: facebookresearch/mae `main_pretrain.py` (timm `add_weight_decay`
//!   groups, betas 0.9/0.95, per-iteration `adjust_learning_rate`, `accum_iter` 1 and 2);
//! - `beit`: unilm `run_beit_pretraining.py` (`get_parameter_groups`, `cosine_scheduler`,
//!   gradient clipping, layer scale);
//! - `simmim`: `main_simmim.py` (`get_pretrain_param_groups` with its keyword quirk, timm's
//!   `CosineLRScheduler` updated after each step, gradient clipping);
//! - `mae_finetune`: `main_finetune.py` (`param_groups_lrd` layer-wise decay, label smoothing).
//!
//! Each step asserts the loss, every parameter's learning rate and weight decay (so every
//! parameter group) and, where the recipe clips, the gradient norm; the end asserts every
//! parameter. Tolerances: the losses are float32 sums over a few hundred values (1e-5 relative
//! leaves room for 50 steps of drift while catching a wrong step); learning rates and weight decays are
//! f64 formulas stored in float32 (2e-7); final parameters are compared relative to each tensor's
//! largest entry at 5e-5, ten times the worst seen (4.7e-6, BEiT): the fixture generator measured
//! that a 1e-6 relative perturbation of every gradient moves final weights by up to 1e-5 through
//! Adam's normalisation, while a wrong rule fails long before (a decayed or undecayed tensor, a
//! wrong beta or schedule changes the loss or the per-step checks within a few steps). Attention
//! key biases are left out of the final comparison (see [`without_key_bias`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mim::data::loader::Batch;
use mim::io::{TensorMap, gradients, load_tensor_map, parameters, pytorch_to_burn_layout, read_safetensors};
use mim::masking::{BoolMask, Mask};
use mim::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use mim::models::classifier::{Classifier, Pool, VitClassifier};
use mim::models::mae::{MaeConfig, MaskedAutoencoder};
use mim::models::pretrain::MimModel;
use mim::models::simmim::SimMim;
use mim::models::swin::SwinConfig;
use mim::optim::{Stepper, param_ranks};
use mim::train::finetune::{FinetuneConfig, batch_loss};
use mim::train::methods::Method;
use mim::train::pretrain::PretrainConfig;
use mim::train::{OptimConfig, RunConfig, Step};
use mim::weights::swin::simmim_to_burn;
use mim::weights::{beit_from_official, from_pytorch_layout, hf_to_official, mae_config_from_hf};

const LOSS_TOL: f64 = 1e-5;
const LR_TOL: f64 = 2e-7;
const PARAM_TOL: f32 = 5e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Group {
    name: String,
    weight_decay: f64,
    params: Vec<String>,
}

/// One recorded official run.
struct Case {
    json: serde_json::Value,
    t: TensorMap,
    device: Device,
}

impl Case {
    fn new(name: &str) -> Self {
        let all: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("trajectory.json")).unwrap()).unwrap();
        let json = all["cases"][name].clone();
        let t = read_safetensors(&fixture(json["file"].as_str().unwrap())).unwrap();
        Case { json, t, device: Device::flex().autodiff() }
    }

    fn hyper(&self, key: &str) -> f64 {
        self.json["hyper"][key].as_f64().unwrap_or_else(|| panic!("hyper.{key}"))
    }

    fn count(&self, key: &str) -> usize {
        self.hyper(key) as usize
    }

    fn groups(&self) -> Vec<Group> {
        self.json["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| Group {
                name: g["name"].as_str().unwrap().into(),
                weight_decay: g["weight_decay"].as_f64().unwrap(),
                params: g["params"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect(),
            })
            .collect()
    }

    /// The tensors under `prefix` (`init.`, `final.`), prefix removed.
    fn weights(&self, prefix: &str) -> TensorMap {
        self.t.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
    }

    /// Row `i` of the tensor `name` (its first axis), with the row's shape.
    fn row(&self, name: &str, i: usize) -> (Vec<usize>, Vec<f32>) {
        let (shape, v) = &self.t[name];
        let n: usize = shape[1..].iter().product();
        (shape[1..].to_vec(), v[i * n..(i + 1) * n].to_vec())
    }

    fn images(&self, s: usize) -> Tensor<4> {
        let n = self.t["images"].0[0];
        let (shape, v) = self.row("images", s % n);
        Tensor::from_data(TensorData::new(v, shape), &self.device)
    }

    /// mim's settings for the recorded pretraining run: the learning rates as the script applied
    /// them (SimMIM's `*_abs`: after its batch / 512 scaling), the recipe's clipping.
    fn pretrain_config(&self, method: Method) -> PretrainConfig {
        let h = &self.json["hyper"];
        let abs = |k: &str| h[format!("{k}_abs")].as_f64().unwrap_or_else(|| self.hyper(k));
        PretrainConfig {
            method,
            run: RunConfig {
                epochs: self.count("epochs"),
                batch_size: self.count("batch_size"),
                accum_iter: h["accum_iter"].as_u64().unwrap_or(1) as usize,
                ..RunConfig::default()
            },
            optim: OptimConfig {
                lr: Some(self.hyper("lr")),
                min_lr: abs("min_lr"),
                warmup_lr: if method == Method::Simmim { abs("warmup_lr") } else { 0.0 },
                warmup_epochs: Some(self.hyper("warmup_epochs")),
                weight_decay: self.hyper("weight_decay"),
                clip_grad: h["clip_grad"].as_f64(),
                ..OptimConfig::default()
            },
            ..Default::default()
        }
    }

    fn scalar(&self, name: &str, i: usize) -> f64 {
        self.t[name].1[i] as f64
    }
}

/// Replays the case: micro-batch `s`'s loss is `loss(model, s)`; `to_burn` converts the
/// fixture's names and layout to mim's (as mim's loader does); `exempt` is mim's weight-decay rule.
fn replay<M: Module>(
    case: &Case,
    model: M,
    mut stepper: Stepper<M>,
    weight_decay: f64,
    exempt: impl Fn(&str, usize) -> bool,
    to_burn: impl Fn(&TensorMap) -> TensorMap,
    loss: impl Fn(&M, usize) -> Tensor<1>,
) -> M {
    let init = case.weights("init.");
    let ranks: BTreeMap<String, usize> = param_ranks(&model).into_iter().collect();
    // Each official group's parameters under mim's names (a parameter mim keeps in one tensor,
    // such as BEiT's q/v biases in the qkv bias, appears once).
    let groups: Vec<(Group, Vec<String>)> = case
        .groups()
        .into_iter()
        .map(|g| {
            let subset: TensorMap = g.params.iter().map(|p| (p.clone(), init[p].clone())).collect();
            let ours: Vec<String> = to_burn(&subset).into_keys().collect();
            for p in &ours {
                assert!(ranks.contains_key(p), "group {}: '{p}' is not a parameter of mim's model", g.name);
            }
            (g, ours)
        })
        .collect();
    // Every parameter mim trains (those with a gradient; fixed position embeddings have none) is in
    // exactly one official group.
    let trained = gradients(&model, &loss(&model, 0).backward());
    let mut covered: Vec<&String> = groups.iter().flat_map(|(_, ours)| ours).collect();
    covered.sort();
    assert_eq!(
        covered,
        trained.keys().collect::<Vec<_>>(),
        "the official groups cover every parameter mim trains, once"
    );

    let (steps, lr, wd) = (&case.t["loss"].1, &case.t["lr"], &case.t["weight_decay"]);
    let g_count = lr.0[1];
    let clips = !case.json["hyper"]["clip_grad"].is_null();
    let (mut model, mut update_index, mut worst_loss, mut worst_lr, mut worst_norm) = (model, 0, 0f64, 0f64, 0f64);
    let mut samples = Vec::new();
    for s in 0..steps.len() {
        let l = loss(&model, s);
        let value = l.clone().into_scalar::<f32>() as f64;
        let reference = steps[s] as f64;
        let rel = (value - reference).abs() / reference.abs();
        worst_loss = worst_loss.max(rel);
        if s % 10 == 0 || s + 1 == steps.len() {
            samples.push(format!("{s}: {value:.6} / {reference:.6}"));
        }
        assert!(rel <= LOSS_TOL, "micro-batch {s}: loss {value} against PyTorch's {reference} ({rel:.1e} relative)");
        let update;
        (model, update) = stepper.backward(model, l, s as u64);
        let Some(update) = update else { continue };
        let o = update_index;
        for (gi, (group, ours)) in groups.iter().enumerate() {
            let (want_lr, want_wd) = (lr.1[o * g_count + gi] as f64, wd.1[o * g_count + gi] as f64);
            assert!(
                (want_wd - group.weight_decay).abs() <= LR_TOL * group.weight_decay,
                "the fixture's group {} changed its weight decay",
                group.name
            );
            for p in ours {
                let got = stepper.lr_of(p, update.lr);
                worst_lr = worst_lr.max((got - want_lr).abs() / want_lr.abs().max(1e-12));
                assert!(
                    (got - want_lr).abs() <= LR_TOL * want_lr.abs().max(1e-12),
                    "update {o}, '{p}' (group {}): lr {got} against {want_lr}",
                    group.name
                );
                let got_wd = if exempt(p, ranks[p]) { 0.0 } else { weight_decay };
                assert!(
                    (got_wd - want_wd).abs() <= LR_TOL * want_wd,
                    "'{p}' (official group {}): weight decay {got_wd}, the official script uses {want_wd}",
                    group.name
                );
            }
        }
        if clips {
            let (got, want) = (update.grad_norm.expect("the recipe clips"), case.scalar("grad_norm", o));
            worst_norm = worst_norm.max((got - want).abs() / want);
            assert!((got - want).abs() <= 1e-4 * want, "update {o}: gradient norm {got} against {want}");
        }
        update_index += 1;
    }
    assert_eq!(update_index, lr.0[0], "number of optimizer steps");

    let ours = parameters(&model);
    let theirs = to_burn(&case.weights("final."));
    let (mut worst, mut at) = (0f32, String::new());
    for (name, (shape, want)) in &theirs {
        let Some((s, got)) = ours.get(name) else { continue };
        assert_eq!(s, shape, "{name}");
        let (got, want) = (without_key_bias(name, got), without_key_bias(name, want));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        if d > worst {
            (worst, at) = (d, name.clone());
        }
    }
    // One line per case for docs/FIDELITY.md (`cargo test --release --test trajectory -- --nocapture`).
    eprintln!(
        "{}: {} micro-batches, {update_index} updates, {} groups; worst relative difference: loss {worst_loss:.1e}, lr {worst_lr:.1e}, \
         gradient norm {}, final parameter {worst:.1e} of its tensor's largest entry ({at}); loss mim / torch at {}",
        case.json["file"],
        steps.len(),
        groups.len(),
        if clips { format!("{worst_norm:.1e}") } else { "(no clipping)".into() },
        samples.join(", ")
    );
    assert!(
        worst <= PARAM_TOL,
        "after {update_index} updates '{at}' differs from PyTorch by {worst:.2e} of its largest entry"
    );
    model
}

/// The values of parameter `name` without an attention key bias (the middle third of a fused qkv
/// bias): softmax is invariant to it, so its gradient is zero up to rounding, which AdamW turns into
/// steps of up to lr in either implementation; it never changes the model's output.
fn without_key_bias(name: &str, v: &[f32]) -> Vec<f32> {
    if !name.ends_with("attn.qkv.bias") {
        return v.to_vec();
    }
    let d = v.len() / 3;
    [&v[..d], &v[2 * d..]].concat()
}

fn mae_case(name: &str) {
    let c = Case::new(name);
    let cfg = mae_config_from_hf(&c.json["model"]).unwrap();
    let to_burn = |m: &TensorMap| from_pytorch_layout(&cfg, &hf_to_official(m).unwrap()).unwrap();
    let model = load_tensor_map(cfg.init(0, &c.device).unwrap(), &to_burn(&c.weights("init.")), name).unwrap();
    let mut run = c.pretrain_config(Method::Mae);
    (run.optim.lr, run.optim.base_lr) = (None, c.hyper("blr"));
    assert_eq!(run.peak_lr(), c.hyper("lr"), "lr = blr x effective batch / 256");
    let stepper = run.stepper(&model, c.count("iters_per_epoch"), None).unwrap();
    let b = run.run.batch_size;
    replay(
        &c,
        model,
        stepper,
        run.optim.weight_decay,
        MaskedAutoencoder::no_weight_decay,
        to_burn,
        |m: &MaskedAutoencoder, s| {
            let mask =
                Mask::from_noise(&c.row("noise", s).1, b, c.json["model"]["mask_ratio"].as_f64().unwrap()).unwrap();
            m.forward(c.images(s), &mask).loss
        },
    );
}

#[test]
fn mae_pretraining_follows_main_pretrain() {
    mae_case("mae");
}

#[test]
fn mae_pretraining_with_accumulation_follows_main_pretrain() {
    mae_case("mae_accum2");
}

#[test]
fn beit_pretraining_follows_run_beit_pretraining() {
    let c = Case::new("beit");
    let mut json = c.json["model"].clone();
    json.as_object_mut().unwrap().remove("drop_path");
    let cfg: BeitConfig = serde_json::from_value(json).unwrap();
    // mim's qkv bias holds unilm's q_bias and v_bias with a zero key part, which has no effect
    // (softmax is invariant to it) and no official counterpart: compared and grouped without it.
    let to_burn = |m: &TensorMap| beit_from_official(&cfg, m).unwrap();
    let model = load_tensor_map(cfg.init(0, &c.device).unwrap(), &to_burn(&c.weights("init.")), "beit").unwrap();
    let run = c.pretrain_config(Method::Beit);
    let stepper = run.stepper(&model, c.count("iters_per_epoch"), None).unwrap();
    let (b, grid) = (run.run.batch_size, cfg.grid());
    let n = c.t["images"].0[0];
    replay(
        &c,
        model,
        stepper,
        run.optim.weight_decay,
        BeitForMaskedImageModeling::no_weight_decay,
        to_burn,
        |m: &BeitForMaskedImageModeling, s| {
            let mask = BoolMask::new(c.row("bool_masked_pos", s).1.iter().map(|&v| v > 0.5).collect(), b, (grid, grid))
                .unwrap();
            let ids: Vec<i64> = c.row("token_ids", s % n).1.iter().map(|&v| v as i64).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, grid * grid]), &c.device);
            BeitForMaskedImageModeling::forward_loss(
                m.forward(c.images(s), &mask),
                BeitForMaskedImageModeling::masked_targets(ids, &mask),
            )
        },
    );
}

#[test]
fn simmim_pretraining_follows_main_simmim() {
    let c = Case::new("simmim");
    let j = &c.json["model"];
    let list = |k: &str| j[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect::<Vec<_>>();
    let cfg = SwinConfig {
        img_size: j["img_size"].as_u64().unwrap() as usize,
        patch_size: j["patch_size"].as_u64().unwrap() as usize,
        in_chans: j["in_chans"].as_u64().unwrap() as usize,
        embed_dim: j["embed_dim"].as_u64().unwrap() as usize,
        depths: list("depths"),
        num_heads: list("num_heads"),
        window_size: j["window_size"].as_u64().unwrap() as usize,
        mlp_ratio: j["mlp_ratio"].as_f64().unwrap(),
        num_classes: 0,
        drop_path_rate: 0.0,
    };
    let to_burn = |m: &TensorMap| simmim_to_burn(m).unwrap();
    let model =
        load_tensor_map(SimMim::new(&cfg, 0, &c.device).unwrap(), &to_burn(&c.weights("init.")), "simmim").unwrap();
    let run = c.pretrain_config(Method::Simmim);
    let stepper = run.stepper(&model, c.count("iters_per_epoch"), None).unwrap();
    let b = run.run.batch_size;
    replay(&c, model, stepper, run.optim.weight_decay, SimMim::no_weight_decay, to_burn, |m: &SimMim, s| {
        let (shape, mask) = c.row("mask", s);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, shape[1..].iter().product()]), &c.device);
        m.forward(c.images(s), mask).loss
    });
}

#[test]
fn mae_finetuning_follows_main_finetune() {
    let c = Case::new("mae_finetune");
    let j = &c.json["model"];
    let get = |k: &str| j[k].as_u64().unwrap() as usize;
    let mae = MaeConfig {
        img_size: get("img_size"),
        patch_size: get("patch_size"),
        in_chans: get("in_chans"),
        embed_dim: get("embed_dim"),
        depth: get("depth"),
        num_heads: get("num_heads"),
        mlp_ratio: j["mlp_ratio"].as_f64().unwrap(),
        ..MaeConfig::preset("mae_micro").unwrap()
    };
    let classes = get("num_classes");
    // mim's classifier calls models_vit's `fc_norm` (after the pooled tokens) `norm`.
    let to_burn = |m: &TensorMap| {
        pytorch_to_burn_layout(m).unwrap().into_iter().map(|(k, t)| (k.replacen("fc_norm.", "norm.", 1), t)).collect()
    };
    let fresh = VitClassifier::from_scratch(&mae, classes, Pool::Avg, 0, &c.device).unwrap();
    let model = load_tensor_map(fresh, &to_burn(&c.weights("init.")), "mae_finetune").unwrap();
    let run = FinetuneConfig {
        run: RunConfig {
            epochs: c.count("epochs"),
            batch_size: c.count("batch_size"),
            accum_iter: c.count("accum_iter"),
            ..RunConfig::default()
        },
        optim: OptimConfig {
            base_lr: c.hyper("blr"),
            min_lr: c.hyper("min_lr"),
            warmup_epochs: Some(c.hyper("warmup_epochs")),
            weight_decay: c.hyper("weight_decay"),
            ..OptimConfig::default()
        },
        layer_decay: c.hyper("layer_decay"),
        smoothing: c.hyper("smoothing"),
        drop_path: 0.0,
        ..Default::default()
    };
    assert_eq!(run.peak_lr(), c.hyper("lr"));
    let stepper = run.stepper(&model, c.count("iters_per_epoch"), None).unwrap();
    let n = c.t["images"].0[0];
    replay(
        &c,
        model,
        stepper,
        run.optim.weight_decay,
        VitClassifier::no_weight_decay,
        to_burn,
        |m: &VitClassifier, s| {
            let (shape, images) = c.row("images", s % n);
            let labels = c.row("labels", s % n).1.iter().map(|&l| l as u32).collect::<Vec<_>>();
            let mut batch =
                Batch { indices: (0..labels.len()).collect(), labels, images, channels: shape[1], side: shape[2] };
            batch_loss(m, &mut batch, classes, &run, Step::new(s as u64), 0, &c.device)
        },
    );
}

/// Training steps through burn's generic ops (and burn's AdamW step) instead of mim's fused
/// kernels, the code path a GPU backend runs: the same updates of MAE, BEiT, SimMIM and MAE's
/// fine-tuning, to the same tolerances.
#[test]
fn generic_ops_path_follows_the_official_scripts_too() {
    let before = mim::ops::fused_dispatches();
    mim::ops::with_generic_ops(|| {
        mae_case("mae");
        beit_pretraining_follows_run_beit_pretraining();
        simmim_pretraining_follows_main_simmim();
        mae_finetuning_follows_main_finetune();
    });
    assert_eq!(mim::ops::fused_dispatches(), before, "a fused kernel ran inside with_generic_ops");
}
