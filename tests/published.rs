//! Published weight formats, each a small model saved exactly as its repository saves
//! (tools/make_published_fixtures.py, manifest in tests/fixtures/published/manifest.json), loaded
//! through the one loader `mim::weights::open` with nothing but the file, and compared with the
//! PyTorch outputs recorded beside it.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use mim::io::{Precision, TensorMap, read_safetensors};
use mim::masking::Mask;
use mim::models::mae::MaeConfig;
use mim::models::pretrain::ModelConfig;
use mim::weights::{Holds, Naming, open};

/// Forward passes in f32 over a few blocks; the fixtures reproduce PyTorch to 0 in PyTorch.
const TOL: f32 = 2e-5;

fn published(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published").join(name)
}

fn io(name: &str) -> TensorMap {
    read_safetensors(&published(name)).unwrap()
}

fn tensor<const D: usize>(io: &TensorMap, name: &str) -> Tensor<D> {
    let (s, v) = &io[name];
    Tensor::from_data(TensorData::new(v.clone(), s.clone()), &Device::flex())
}

fn assert_close<const D: usize>(what: &str, ours: Tensor<D>, io: &TensorMap, name: &str) {
    let (shape, theirs) = &io[name];
    assert_eq!(&ours.dims().to_vec(), shape, "{what}: shape");
    let ours = ours.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let worst = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
    assert!(worst < TOL, "{what}: {name} differs by {worst:e}");
    eprintln!("{what}: {name} within {worst:.1e}");
}

/// The manifest's entry for `file`.
fn manifest(file: &str) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(published("manifest.json")).unwrap()).unwrap();
    let fixtures = m["fixtures"].as_array().unwrap();
    fixtures.iter().find(|f| f["file"] == file).unwrap_or_else(|| panic!("{file} not in the manifest")).clone()
}

/// The config the fixture was built with, field by field from the manifest.
fn manifest_config(file: &str) -> serde_json::Value {
    manifest(file)["config"].clone()
}

/// The reference outputs recorded for `file`.
fn io_of(file: &str) -> TensorMap {
    io(manifest(file)["io"].as_str().unwrap())
}

fn mae_config(file: &str) -> MaeConfig {
    let c = manifest_config(file);
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    MaeConfig {
        img_size: u("img_size"),
        patch_size: u("patch_size"),
        in_chans: u("in_chans"),
        embed_dim: u("embed_dim"),
        depth: u("depth"),
        num_heads: u("num_heads"),
        decoder_embed_dim: c["decoder_embed_dim"].as_u64().map_or(512, |v| v as usize),
        decoder_depth: c["decoder_depth"].as_u64().map_or(8, |v| v as usize),
        decoder_num_heads: c["decoder_num_heads"].as_u64().map_or(16, |v| v as usize),
        mlp_ratio: c["mlp_ratio"].as_f64().unwrap(),
        norm_pix_loss: c["norm_pix_loss"].as_bool().unwrap_or(false),
        layer_norm_eps: c["layer_norm_eps"].as_f64().unwrap(),
        ..MaeConfig::preset("mae_micro").unwrap()
    }
}

/// MAE with its decoder: masking from the recorded noise, encoder, decoder and loss.
fn check_mae(what: &str, model: &mim::models::mae::MaskedAutoencoder, io: &TensorMap, latent: &str, pred: &str) {
    let x = tensor::<4>(io, "pixel_values");
    let (s, noise) = &io["noise"];
    let mask = Mask::from_noise(noise, s[0], 0.75).unwrap();
    assert_close(what, mask.mask_tensor(&Device::flex()), io, "mask");
    let z = model.forward_encoder(x.clone(), &mask);
    assert_close(what, z.clone(), io, latent);
    let p = model.forward_decoder(z, &mask);
    assert_close(what, p.clone(), io, pred);
    assert_close(what, model.forward_loss(x, p, &mask), io, "loss");
}

#[test]
fn hugging_face_vit_mae_with_its_config_json() {
    // save_pretrained's safetensors, and the pytorch_model.bin transformers 4.x wrote.
    for (dir, file) in [("mae_hf/", "model.safetensors"), ("mae_hf_bin/", "pytorch_model.bin")] {
        let w = open(&published(&format!("{dir}{file}"))).unwrap();
        assert_eq!((w.detected.naming, w.detected.holds), (Naming::HuggingFace, Holds::Mae { decoder: true }));
        assert!(w.config_source.contains("config.json"), "{}", w.config_source);
        let (model, cfg) = w.mae(&Device::flex()).unwrap();
        // Hugging Face's eps 1e-12 is honoured, not mim's 1e-6.
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        check_mae(dir, &model, &io_of(dir), "encoder_last_hidden_state", "logits");
    }
}

#[test]
fn official_mae_pth_files_load_as_torch_saved_them() {
    for file in ["mae_official_visualize.pth", "mae_official_train_checkpoint.pth"] {
        let w = open(&published(file)).unwrap();
        assert_eq!((w.detected.naming, w.detected.holds), (Naming::Official, Holds::Mae { decoder: true }));
        assert_eq!(w.file.nested.as_deref(), Some("model"));
        let w = w.with_config(ModelConfig::Mae(mae_config(file)), "manifest".into()).unwrap();
        let (model, _) = w.mae(&Device::flex()).unwrap();
        check_mae(file, &model, &io_of(file), "latent", "pred");
    }
    // misc.save_model's other entries are reported, not silently dropped.
    let w = open(&published("mae_official_train_checkpoint.pth")).unwrap();
    assert_eq!(w.file.ignored, ["args", "epoch", "optimizer", "scaler"]);
}

#[test]
fn official_mae_encoder_only_and_fine_tuned_pth() {
    let file = "mae_official_pretrain.pth";
    let w = open(&published(file)).unwrap();
    assert_eq!(w.detected.holds, Holds::Mae { decoder: false });
    let w = w.with_config(ModelConfig::Mae(mae_config(file)), "manifest".into()).unwrap();
    let (model, cfg) = w.mae_encoder(0, &Device::flex()).unwrap();
    let io = io_of(file);
    let z = model.forward_encoder(tensor::<4>(&io, "pixel_values"), &Mask::keep_all(2, cfg.num_patches()));
    assert_close(file, z, &io, "latent_all_tokens");

    let file = "mae_official_finetuned.pth";
    let w = open(&published(file)).unwrap();
    assert_eq!(w.detected.holds, Holds::VitClassifier { global_pool: true, num_classes: 5 });
    let w = w.with_config(ModelConfig::Mae(mae_config(file)), "manifest".into()).unwrap();
    let model = w.vit_classifier(&Device::flex()).unwrap();
    let io = io_of(file);
    assert_close(file, model.forward(tensor::<4>(&io, "pixel_values")), &io, "logits");
}

/// BEiT's bool mask from the recorded `bool_masked_pos`.
fn beit_mask(io: &TensorMap, grid: usize) -> mim::masking::BoolMask {
    let (s, v) = &io["bool_masked_pos"];
    mim::masking::BoolMask::new(v.iter().map(|&m| m > 0.5).collect(), s[0], (grid, grid)).unwrap()
}

#[test]
fn beit_official_pth_and_hugging_face_files() {
    for (file, features, logits) in [
        ("beit_official_pretrain.pth", "features", "logits"),
        ("beit_hf/model.safetensors", "sequence_output", "masked_logits"),
    ] {
        let w = open(&published(file)).unwrap();
        assert_eq!(w.detected.holds, Holds::Beit, "{file}");
        // Every BEiT hyper-parameter is in the shapes (heads: the relative position table's columns).
        let ModelConfig::Beit(cfg) = w.detected.config.clone() else { panic!("{file}") };
        assert_eq!((cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.vocab_size), (32, 2, 2, 32), "{file}");
        let model = w.beit(&Device::flex()).unwrap();
        let io = io_of(file.split_once('/').map_or(file, |(d, _)| &file[..d.len() + 1]));
        let mask = beit_mask(&io, cfg.grid());
        let x = tensor::<4>(&io, "pixel_values");
        assert_close(file, model.forward_features(x.clone(), &mask), &io, features);
        assert_close(file, model.forward(x, &mask), &io, logits);
    }
}

#[test]
fn beit_official_fine_tuned_pth() {
    let file = "beit_official_finetuned.pth";
    let w = open(&published(file)).unwrap();
    assert_eq!(w.detected.holds, Holds::BeitClassifier { num_classes: 5 });
    let model = w.beit_classifier(&Device::flex()).unwrap();
    let io = io_of(file);
    use mim::models::classifier::Classifier;
    assert_close(file, model.logits(tensor::<4>(&io, "pixel_values")), &io, "logits");
}

/// SimMIM's reconstruction and loss for the recorded mask `[B, H, W]`.
fn check_simmim(file: &str, model: &mim::models::simmim::SimMim, io: &TensorMap) {
    let (s, m) = &io["mask"];
    let mask: Tensor<3> = Tensor::from_data(TensorData::new(m.clone(), s.clone()), &Device::flex());
    let [b, h, ww] = mask.dims();
    let out = model.forward(tensor::<4>(io, "pixel_values"), mask.reshape([b, h * ww]));
    assert_close(file, out.reconstruction, io, "reconstruction");
    assert_close(file, out.loss, io, "loss");
}

#[test]
fn simmim_and_official_swin_pth() {
    let file = "simmim_swin.pth";
    let w = open(&published(file)).unwrap();
    assert_eq!(w.detected.holds, Holds::SimMim);
    assert!(w.file.ignored.contains(&"config".to_string()), "{:?}", w.file.ignored);
    let model = w.simmim(&Device::flex()).unwrap();
    let io = io_of(file);
    check_simmim(file, &model, &io);

    let file = "swin_official_finetuned.pth";
    let w = open(&published(file)).unwrap();
    assert_eq!((w.detected.naming, w.detected.holds), (Naming::Official, Holds::Swin { num_classes: 5 }));
    let model = w.swin(&Device::flex()).unwrap();
    let io = io_of(file);
    assert_close(file, model.forward(tensor::<4>(&io, "pixel_values")), &io, "logits");
}

#[test]
fn timm_vit_mae_encoder() {
    let w = open(&published("mae_timm.safetensors")).unwrap();
    assert_eq!(w.detected.holds, Holds::Mae { decoder: false });
    // The reconstruction picture needs the decoder, which this file does not have.
    let e = w.mae(&Device::flex()).unwrap_err().to_string();
    assert!(e.contains("only the MAE encoder"), "{e}");
    let want = mae_config("mae_timm.safetensors");
    let w = w.with_config(ModelConfig::Mae(want.clone()), "manifest".into()).unwrap();
    let (model, _) = w.mae_encoder(0, &Device::flex()).unwrap();
    let io = io("mae_timm_io.safetensors");
    let x = tensor::<4>(&io, "pixel_values");
    let mask = Mask::keep_all(2, want.num_patches());
    assert_close("timm ViT (MAE)", model.forward_encoder(x, &mask), &io, "features");
}

#[test]
fn timm_swin_classifier() {
    let w = open(&published("swin_timm.safetensors")).unwrap();
    assert_eq!((w.detected.naming, w.detected.holds), (Naming::Timm, Holds::Swin { num_classes: 5 }));
    let model = w.swin(&Device::flex()).unwrap();
    let io = io("swin_timm_io.safetensors");
    assert_close("timm Swin", model.forward(tensor::<4>(&io, "pixel_values")), &io, "logits");
}

/// A tiny ImageNet-layout folder of `side`-pixel RGB images, two classes, train and val splits.
fn image_folder(root: &std::path::Path, side: u32) {
    for split in ["train", "val"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..4u32 {
                let img = image::RgbImage::from_fn(side, side, |x, y| {
                    image::Rgb([(x * 9 + i * 13) as u8, (y * 7 + c as u32 * 120) as u8, (i * 40) as u8])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn fine_tuning_starts_from_published_files_of_each_family() {
    use mim::train::finetune::{FinetuneConfig, finetune};
    let dir = tempfile::tempdir().unwrap();
    for (file, side) in [
        ("mae_official_pretrain.pth", 24),
        ("mae_official_finetuned.pth", 24),
        ("beit_official_pretrain.pth", 16),
        ("beit_official_finetuned.pth", 16),
        ("simmim_swin.pth", 32),
        ("swin_official_finetuned.pth", 32),
    ] {
        let data = dir.path().join(format!("data{side}"));
        if !data.exists() {
            image_folder(&data, side);
        }
        let mut cfg = FinetuneConfig { checkpoint: Some(published(file)), ..Default::default() };
        cfg.run.data = data;
        cfg.run.out = dir.path().join(file);
        cfg.run.epochs = 1;
        cfg.run.batch_size = 4;
        cfg.optim.warmup_epochs = Some(0.0);
        let summary = finetune(&cfg, None, &mut mim::train::Silent).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(summary.epochs.len(), 1, "{file}");
        // A new 2-class head replaces the file's own (5 classes): the test split is scored on it.
        assert!(summary.epochs[0].top1.is_finite(), "{file}");
    }
}

#[test]
fn weights_for_another_image_size_have_their_position_parameters_resized() {
    // MAE at 32 px (an 8x8 grid) from the 24 px (6x6) visualize file: both position embeddings
    // interpolated as the official `interpolate_pos_embed`, and the model runs.
    let file = "mae_official_visualize.pth";
    let at24 = mae_config(file);
    let at32 = MaeConfig { img_size: 32, ..at24.clone() };
    let original = open(&published(file)).unwrap().tensors["pos_embed"].clone();
    let w = open(&published(file)).unwrap().with_config(ModelConfig::Mae(at32.clone()), "test".into()).unwrap();
    let want = mim::weights::resize::interpolate_pos_embed(&original, 1, (8, 8)).unwrap();
    assert_eq!(w.tensors["pos_embed"], want);
    assert_eq!(w.tensors["decoder_pos_embed"].0, [1, 65, at24.decoder_embed_dim]);
    let (model, _) = w.mae(&Device::flex()).unwrap();
    let x = Tensor::<4>::zeros([1, 3, 32, 32], &Device::flex());
    let mask = Mask::from_noise(&(0..64).map(|i| ((i * 37) % 64) as f32).collect::<Vec<_>>(), 1, 0.75).unwrap();
    assert_eq!(model.forward_encoder(x, &mask).dims(), [1, 17, 32]);

    // BEiT at 24 px (6x6) from the 16 px (4x4) file: the shared relative position table resized by
    // unilm's spline, its index rebuilt.
    let file = "beit_official_pretrain.pth";
    let w = open(&published(file)).unwrap();
    let ModelConfig::Beit(cfg) = w.detected.config.clone() else { panic!() };
    let w =
        w.with_config(ModelConfig::Beit(mim::models::beit::BeitConfig { img_size: 24, ..cfg }), "test".into()).unwrap();
    assert_eq!(w.tensors["rel_pos_bias.relative_position_bias_table"].0, [11 * 11 + 3, 2]);
    assert!(!w.tensors.keys().any(|k| k.ends_with("relative_position_index")));
    let model = w.beit(&Device::flex()).unwrap();
    let mask = mim::masking::BoolMask::new(vec![false; 36], 1, (6, 6)).unwrap();
    assert_eq!(model.forward_features(Tensor::<4>::zeros([1, 3, 24, 24], &Device::flex()), &mask).dims(), [1, 37, 32]);
}

#[test]
fn linear_probe_and_knn_take_features_from_published_files() {
    use mim::eval::Backbone;
    use mim::models::classifier::Pool;
    for (file, side, dim) in [
        ("mae_official_pretrain.pth", 24, 32),
        ("beit_hf/model.safetensors", 16, 32),
        ("simmim_swin.pth", 32, 24),
        ("swin_official_finetuned.pth", 32, 24),
    ] {
        let e = Backbone::Checkpoint(published(file)).encoder(3, Pool::Avg, &Device::flex()).unwrap().unwrap();
        assert_eq!((e.encode)(Tensor::<4>::zeros([2, 3, side, side], &Device::flex())).dims(), [2, dim], "{file}");
    }
}

#[test]
fn hugging_face_swin_and_simmim_with_their_config_json() {
    use mim::models::swin::SwinTransformer;
    let file = "swin_hf/model.safetensors";
    let w = open(&published(file)).unwrap();
    assert_eq!((w.detected.naming, w.detected.holds), (Naming::HuggingFace, Holds::Swin { num_classes: 5 }));
    // The image size comes from config.json, not from the shapes' guess.
    assert!(w.config_source.contains("config.json") && w.detected.assumed.is_empty(), "{}", w.config_source);
    let model = w.swin(&Device::flex()).unwrap();
    let io = io_of("swin_hf/");
    let x = tensor::<4>(&io, "pixel_values");
    assert_close(file, SwinTransformer::pool(model.forward_features(x.clone())), &io, "pooled");
    assert_close(file, model.forward(x), &io, "logits");

    let file = "simmim_hf/model.safetensors";
    let w = open(&published(file)).unwrap();
    assert_eq!((w.detected.naming, w.detected.holds), (Naming::HuggingFace, Holds::SimMim));
    let model = w.simmim(&Device::flex()).unwrap();
    let io = io_of("simmim_hf/");
    check_simmim(file, &model, &io);
}

/// Tensors without the derived buffers, which files may or may not carry.
fn without_buffers(t: &TensorMap) -> TensorMap {
    let buffer = |k: &str| k.ends_with("relative_position_index") || k.ends_with("attn_mask");
    t.iter().filter(|(k, _)| !buffer(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn every_family_converts_to_each_naming_and_back() {
    use mim::weights::convert;
    let dir = tempfile::tempdir().unwrap();
    let files = [
        "mae_official_visualize.pth", "mae_official_pretrain.pth", "mae_official_finetuned.pth",
        "mae_hf/model.safetensors", "beit_official_pretrain.pth", "beit_official_finetuned.pth",
        "beit_hf/model.safetensors", "simmim_swin.pth", "simmim_hf/model.safetensors", "swin_official_finetuned.pth",
        "swin_timm.safetensors", "swin_hf/model.safetensors",
    ];
    for (i, file) in files.into_iter().enumerate() {
        let mut w = open(&published(file)).unwrap();
        if file.starts_with("mae_official") {
            // The official MAE files do not store the heads: the manifest gives them.
            w = w.with_config(ModelConfig::Mae(mae_config(file)), "manifest".into()).unwrap();
        }
        for to in [Naming::Official, Naming::Timm, Naming::HuggingFace] {
            let out = dir.path().join(format!("{i}-{to:?}/model.safetensors"));
            let done = match convert(&w, to, &out, Precision::F32) {
                Ok(done) => done,
                Err(e) => {
                    // A fine-tuned ViT has no Hugging Face model that mim reads back.
                    assert_eq!((file, to), ("mae_official_finetuned.pth", Naming::HuggingFace), "{e:#}");
                    continue;
                }
            };
            let back = open(&out).unwrap_or_else(|e| panic!("{file} -> {to:?}: {e:#}"));
            let (mut want, mut holds) = (without_buffers(&w.tensors), w.detected.holds);
            if holds == Holds::SimMim && to == Naming::Timm {
                // timm's Swin is SimMIM's encoder alone.
                assert_eq!(done.left_out.len(), 1);
                want = want
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("encoder.")?.to_string(), v.clone())))
                    .collect();
                want.remove("mask_token");
                holds = Holds::Swin { num_classes: 0 };
            }
            assert_eq!(back.detected.holds, holds, "{file} -> {to:?}");
            assert_eq!(back.detected.config, w.detected.config, "{file} -> {to:?}");
            assert_eq!(without_buffers(&back.tensors), want, "{file} -> {to:?}");
            if to == Naming::HuggingFace {
                assert_eq!(back.detected.naming, Naming::HuggingFace);
                assert_eq!(done.written[1], out.with_file_name("config.json"));
                // Hugging Face names as save_pretrained writes them; for the MAE decoder, as the published
                // facebook/vit-mae-* files (transformers 4.x) name it, where 5.x writes `decoder_encoder.layer`.
                if let Some((folder, _)) = file.split_once('/') {
                    let theirs = read_safetensors(&published(file)).unwrap();
                    let theirs: std::collections::BTreeSet<String> = theirs
                        .keys()
                        .map(|k| k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."))
                        .collect();
                    let ours = read_safetensors(&out).unwrap();
                    assert!(theirs.iter().eq(ours.keys()), "{folder}: the names written differ from save_pretrained's");
                }
            }
        }
    }
}

#[test]
fn mim_layouts_invert_to_the_canonical_names() {
    // mim's own BEiT and SimMIM checkpoints are written through these inverses (weights::from_checkpoint).
    use mim::weights::{beit, swin};
    let w = open(&published("beit_official_pretrain.pth")).unwrap();
    let ModelConfig::Beit(cfg) = &w.detected.config else { panic!() };
    let burn = beit::beit_from_official(cfg, &w.tensors).unwrap();
    assert_eq!(beit::official_from_burn(cfg, &burn).unwrap(), without_buffers(&w.tensors));
    let w = open(&published("simmim_swin.pth")).unwrap();
    let ModelConfig::Swin(cfg) = &w.detected.config else { panic!() };
    let burn = swin::simmim_to_burn(&w.tensors).unwrap();
    assert_eq!(swin::simmim_from_burn(cfg, &burn), without_buffers(&w.tensors));
}

#[test]
fn fine_tuning_at_another_image_size_resizes_the_position_parameters() {
    use mim::train::finetune::{FinetuneConfig, finetune};
    // Swin at 16 px from the 32 px file: the last stage (2x2 patches) is now one 2x2 window, so its
    // tables shrink from 7x7 to 3x3 offsets (bicubic, as Swin-Transformer's load_pretrained).
    let w = open(&published("swin_official_finetuned.pth")).unwrap().at_image_size(16).unwrap();
    assert_eq!(w.tensors["layers.0.blocks.0.attn.relative_position_bias_table"].0, [49, 2]);
    assert_eq!(w.tensors["layers.2.blocks.1.attn.relative_position_bias_table"].0, [9, 4]);
    let model = w.swin(&Device::flex()).unwrap();
    assert_eq!(model.forward(Tensor::<4>::zeros([1, 3, 16, 16], &Device::flex())).dims(), [1, 5]);

    // `mim finetune --img-size`: the 24 px MAE encoder fine-tuned at 32 px, the 32 px SimMIM at 16.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    image_folder(&data, 20);
    for (file, side) in [("mae_official_pretrain.pth", 32), ("simmim_swin.pth", 16)] {
        let mut cfg = FinetuneConfig { checkpoint: Some(published(file)), img_size: Some(side), ..Default::default() };
        cfg.run.data = data.clone();
        cfg.run.out = dir.path().join(file);
        cfg.run.epochs = 1;
        cfg.run.batch_size = 4;
        cfg.optim.warmup_epochs = Some(0.0);
        let summary = finetune(&cfg, None, &mut mim::train::Silent).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert!(summary.epochs[0].top1.is_finite(), "{file}");
        let header = mim::checkpoint::read_header(&summary.checkpoints.0).unwrap();
        assert_eq!(header.model.img_size(), side, "{file}");
    }
}

#[test]
fn greyscale_dataset_images_reach_an_rgb_model_in_three_channels() {
    use mim::reconstruct::{Images, MaskChoice, Reconstructor};
    let w = open(&published("simmim_hf/model.safetensors")).unwrap();
    let (norm, _) = w.input_normalization().unwrap();
    let r = Reconstructor::from_weights(&w, norm.clone(), &Device::flex()).unwrap();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-subset");
    let images = Images::Dataset { data: Some(data), split: mim::data::Split::Test, indices: vec![0, 1] };
    let (batch, _, mean, std) = r.load_images(&images).unwrap();
    assert_eq!((batch.channels, batch.images.len(), &mean, &std), (3, 2 * 3 * 32 * 32, &norm.mean, &norm.std));
    // One grey value per pixel, normalised per channel: channel 1 follows from channel 0.
    let plane = 32 * 32;
    for p in (0..plane).step_by(97) {
        let grey = batch.images[p] * std[0] + mean[0];
        assert!((batch.images[plane + p] * std[1] + mean[1] - grey).abs() < 1e-5);
    }
    let dir = tempfile::tempdir().unwrap();
    let done = r.write_pictures(&images, &MaskChoice::Random { ratio: None, seed: 0 }, dir.path(), 1, true).unwrap();
    assert!(done.picture.exists());
}

#[test]
fn fine_tuning_an_rgb_model_on_greyscale_data_is_refused_with_the_reason() {
    use mim::train::finetune::{FinetuneConfig, finetune};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = FinetuneConfig { checkpoint: Some(published("beit_hf/model.safetensors")), ..Default::default() };
    cfg.run.data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-subset");
    cfg.run.out = dir.path().join("ft");
    cfg.run.batch_size = 16;
    let e = format!("{:#}", finetune(&cfg, None, &mut mim::train::Silent).err().expect("refused"));
    assert!(e.contains("takes 3-channel images") && e.contains("1-channel"), "{e}");
}

#[test]
fn beit_attention_maps_match_hugging_face() {
    // BEiT's figure 2 draws these: every query's attention over the patches, relative position bias included.
    let model = open(&published("beit_hf/model.safetensors")).unwrap().beit(&Device::flex()).unwrap();
    let io = io_of("beit_hf/");
    let maps = model.attention_maps(tensor::<4>(&io, "pixel_values"));
    assert_close("BEiT attention maps", Tensor::stack::<5>(maps, 0), &io, "attentions");
}

#[test]
fn attention_pictures_of_a_beit_file() {
    use mim::attention::{cls_attention, write_attention_pictures};
    let w = open(&published("beit_hf/model.safetensors")).unwrap();
    let io = io_of("beit_hf/");
    // The [CLS] row over the 16 patches, per layer, image and head: BEiT's figure 2.
    let maps = cls_attention(&w, tensor::<4>(&io, "pixel_values"), &Device::flex()).unwrap();
    assert_eq!((maps.len(), maps[0].len(), maps[0][0].len(), maps[0][0][0].len()), (2, 2, 2, 16));
    // Hugging Face's [layer, image, head, query, key]: query 0 is [CLS], key 2 is patch 1.
    let (s, all) = &io["attentions"];
    let (images, heads, n) = (s[1], s[2], s[4]);
    let (layer, image, head) = (1, 1, 0);
    let hf_cls_to_patch_1 = all[(((layer * images + image) * heads + head) * n) * n + 2];
    assert!((maps[1][1][0][1] - hf_cls_to_patch_1).abs() < 1e-6, "layer 2, image 2, head 1, patch 2");
    let dir = tempfile::tempdir().unwrap();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-subset");
    let images = mim::viz::Images::Dataset { data: Some(data), split: mim::data::Split::Test, indices: vec![0, 1] };
    let files = write_attention_pictures(&w, &images, dir.path(), 2).unwrap();
    assert_eq!(files.len(), 2);
    let pic = image::open(&files[0]).unwrap();
    // 2 layers x (2 heads + mean) panels of 16 px x 2, with titles around them.
    assert!(pic.width() > 3 * 34 && pic.height() > 2 * 34, "{}x{}", pic.width(), pic.height());
}

#[test]
fn attention_pictures_of_a_simmim_file_show_what_each_patch_receives_in_its_window() {
    use mim::attention::{AttentionEncoder, cls_attention, write_attention_pictures};
    let w = open(&published("simmim_swin.pth")).unwrap();
    let device = Device::flex();
    let cfg = w.detected.config.clone();
    let imgs = Tensor::<4>::zeros([1, cfg.in_chans(), cfg.img_size(), cfg.img_size()], &device);
    let found = AttentionEncoder::new(&w, &device).unwrap().attention(imgs.clone()).unwrap();
    // One map per block, on each stage's grid of merged patches, heads as the stage has them.
    let mim::models::pretrain::ModelConfig::Swin(swin) = &cfg else { panic!("a Swin") };
    let stage_of: Vec<usize> = swin.depths.iter().enumerate().flat_map(|(s, &d)| std::iter::repeat_n(s, d)).collect();
    assert_eq!(found.grids, stage_of.iter().map(|&s| cfg.grid() >> s).collect::<Vec<_>>());
    for (layer, maps) in found.maps.iter().enumerate() {
        assert_eq!(maps[0].len(), swin.num_heads[stage_of[layer]], "heads of layer {layer}");
        assert!(maps[0].iter().all(|m| m.len() == found.grids[layer].pow(2)));
    }
    assert!(cls_attention(&w, imgs, &device).unwrap_err().to_string().contains("no [CLS] token"));
    let dir = tempfile::tempdir().unwrap();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-subset");
    let images = mim::viz::Images::Dataset { data: Some(data), split: mim::data::Split::Test, indices: vec![0] };
    assert_eq!(write_attention_pictures(&w, &images, dir.path(), 2).unwrap().len(), 1);
}
