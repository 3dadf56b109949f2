//! The library pieces working together: optimizer groups, determinism, weights round trip, pictures.

mod common;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use common::{assert_clean_error, max_diff, mim, subset};
use mim::io::{gradients, parameters};
use mim::masking::Mask;
use mim::models::mae::MaeConfig;
use mim::models::mae::MaskedAutoencoder;
use mim::models::pretrain::MimModel;
use mim::optim::{MAE_BETAS, adamw};
use mim::train::pretrain::{PretrainConfig, pretrain, read_metrics};
use mim::train::{OptimConfig, RunConfig, Silent};
use mim::weights::{export_weights, load_weights};

fn micro() -> MaeConfig {
    MaeConfig::preset("mae_micro").unwrap()
}

#[test]
fn removed_patches_never_reach_the_prediction_with_or_without_the_encoder_mask_token() {
    use mim::models::vit::{patchify, unpatchify};
    let device = Device::flex().autodiff();
    let mask = Mask::from_noise(&(0..98).map(|i| (i * 37 % 98) as f32).collect::<Vec<_>>(), 2, 0.75).unwrap();
    let imgs = Tensor::<4>::random([2, 1, 28, 28], Distribution::Default, &device);
    // The same images with other pixels in every removed patch.
    let m = mask.mask_tensor(&device).unsqueeze_dim::<3>(2);
    let noise = Tensor::<3>::random([2, 49, 16], Distribution::Default, &device);
    let vec = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let other = unpatchify(patchify(imgs.clone(), 4) * (m.clone().neg() + 1.0) + noise * m, 4, (7, 7), 1);
    assert!(max_diff(&vec(other.clone()), &vec(imgs.clone())) > 0.1);
    for encoder_mask_token in [false, true] {
        let model = MaeConfig { encoder_mask_token, ..micro() }.init(0, &device).unwrap();
        let latent = model.forward_encoder(imgs.clone(), &mask);
        // w/o [M] the encoder sees the 12 visible patches + cls; w/ [M] all 49 + cls.
        assert_eq!(latent.dims()[1], if encoder_mask_token { 50 } else { 13 });
        let pred = |x: &Tensor<4>| {
            let p = model.forward_decoder(model.forward_encoder(x.clone(), &mask), &mask);
            p.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
        };
        assert!(
            max_diff(&pred(&imgs), &pred(&other)) < 1e-6,
            "encoder_mask_token {encoder_mask_token}: removed pixels leaked"
        );
        let loss = model.forward(imgs.clone(), &mask).loss;
        let grads = loss.backward();
        if let Some(token) = &model.encoder_mask_token {
            let g = token.grad(&grads).expect("the encoder's mask token is trained");
            assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
        }
    }
}

#[test]
fn weight_decay_skips_one_dimensional_parameters_and_biases() {
    let device = Device::flex().autodiff();
    let cfg = micro();
    let model = cfg.init(0, &device).unwrap();
    let before = parameters(&model);
    // A zero loss gives zero gradients: AdamW's update is then pure decay, p * (1 - lr * wd).
    let imgs = Tensor::<4>::random([2, 1, 28, 28], Distribution::Default, &device);
    let mask = Mask::from_noise(&(0..98).map(|i| (i * 37 % 98) as f32).collect::<Vec<_>>(), 2, 0.75).unwrap();
    let loss = model.forward(imgs, &mask).loss * 0.0;
    let grads = loss.backward();
    // The position embeddings are parameters that are never trained: no gradient, so the
    // optimizer neither updates nor decays them.
    let trained = gradients(&model, &grads);
    let fixed: Vec<&String> = before.keys().filter(|p| !trained.contains_key(*p)).collect();
    assert_eq!(fixed, ["decoder_pos_embed", "pos_embed"]);
    let grads = GradientsParams::from_grads(grads, &model);
    let (lr, wd) = (0.1, 0.5);
    let model = adamw(&model, wd, MAE_BETAS, MaskedAutoencoder::no_weight_decay).step(lr, model, grads);
    let after = parameters(&model);
    let mut decayed = 0;
    for (path, (shape, b)) in &before {
        let a = &after[path].1;
        // main_pretrain.py's rule: 1-D parameters and biases keep their values, the [1, 1, D] tokens
        // decay; the fixed position embeddings get no gradient, so the optimizer leaves them alone.
        let exempt = MaskedAutoencoder::no_weight_decay(path, shape.len());
        assert_eq!(exempt, shape.len() == 1, "{path}");
        let factor = if exempt || !trained.contains_key(path) { 1.0 } else { 1.0 - (lr * wd) as f32 };
        decayed += (factor != 1.0) as usize;
        for (x, y) in b.iter().zip(a) {
            assert!((x * factor - y).abs() <= 1e-6 * x.abs().max(1.0), "{path}: {x} * {factor} != {y}");
        }
    }
    assert!(decayed >= 10, "only {decayed} tensors decayed");
}

#[test]
fn same_seed_gives_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let defaults = PretrainConfig::default();
        let cfg = PretrainConfig {
            run: RunConfig {
                data: subset(),
                out: tmp.path().join(name),
                max_images: Some(256),
                batch_size: 64,
                epochs: 1,
                ..defaults.run
            },
            optim: OptimConfig { lr: Some(1e-3), ..defaults.optim },
            model: Some("mae_micro".into()),
            ..defaults
        };
        pretrain(&cfg, None, &mut Silent).unwrap().steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    };
    let (a, b) = (run("a"), run("b"));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b);
}

#[test]
fn exported_weights_load_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let cfg = micro();
    let trained = cfg.init(1, &device).unwrap();
    let path = tmp.path().join("w.safetensors");
    export_weights(&trained, &cfg, &path).unwrap();
    let loaded = load_weights(cfg.init(2, &device).unwrap(), &cfg, &path).unwrap();
    assert_eq!(parameters(&trained), parameters(&loaded));
    // A different architecture is refused with the reason.
    let other = MaeConfig { embed_dim: 32, ..micro() };
    let err = load_weights(other.init(0, &device).unwrap(), &other, &path).unwrap_err().to_string();
    assert!(err.contains("another configuration"), "{err}");
    let _ = trained.num_params();
}

#[test]
fn pca_and_token_targets_pretrain_save_their_basis_and_refuse_what_they_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let d = data.to_str().unwrap();
    let base = ["--data", d, "--model", "mae_micro", "--max-images", "256", "--batch-size", "64", "--epochs", "1"];
    let run = |extra: &[&str]| {
        let mut args = vec!["pretrain"];
        args.extend(base);
        args.extend(extra);
        mim(&args)
    };
    // PCA: 8 of the 16 values of a 4x4 grey patch, a basis saved with the model.
    let pca = tmp.path().join("pca");
    let out = run(&["--target", "pca", "--out", pca.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ck = mim::checkpoint::load(&pca.join("checkpoint.mim"), &Device::flex()).unwrap();
    let basis = ck.model.pca.as_ref().expect("a PCA basis in the checkpoint");
    assert_eq!(basis.components.dims(), [16, 8]);
    let gram = basis.components.val().transpose().matmul(basis.components.val());
    let eye = Tensor::<2>::eye(8, &Device::flex());
    assert!((gram - eye).abs().max().into_scalar::<f32>() < 1e-4, "the basis is orthonormal");
    let pics = tmp.path().join("pics");
    let out = mim(&[
        "reconstruct",
        "--checkpoint",
        pca.join("checkpoint.mim").to_str().unwrap(),
        "--indices",
        "0",
        "--out",
        pics.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Tokens: the ids of a (briefly trained) tokenizer with the MAE's patch grid.
    let tok = tmp.path().join("tok");
    let out = mim(&[
        "tokenizer",
        "train",
        "--data",
        d,
        "--out",
        tok.to_str().unwrap(),
        "--max-images",
        "256",
        "--batch-size",
        "64",
        "--epochs",
        "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tokenizer = tok.join("tokenizer.mim");
    let tokens = tmp.path().join("tokens");
    assert_clean_error(&run(&["--target", "tokens", "--out", tokens.to_str().unwrap()]), "pass --tokenizer");
    let out =
        run(&["--target", "tokens", "--tokenizer", tokenizer.to_str().unwrap(), "--out", tokens.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = read_metrics(&tokens.join("metrics.jsonl")).unwrap()[0].loss;
    // Cross-entropy over the tokenizer's vocabulary starts near ln(vocab).
    let vocab =
        mim::train::tokenizer::load_tokenizer(&tokenizer, &Device::flex()).unwrap().header.model.vocab_size as f64;
    assert!((first - vocab.ln()).abs() < 1.0, "first loss {first} vs ln {vocab} = {}", vocab.ln());
    let out = mim(&[
        "reconstruct",
        "--checkpoint",
        tokens.join("checkpoint.mim").to_str().unwrap(),
        "--indices",
        "0",
        "--out",
        pics.to_str().unwrap(),
    ]);
    assert_clean_error(&out, "predicts visual-token ids");
    assert_clean_error(
        &run(&["--method", "simmim", "--target", "pca", "--out", tmp.path().join("x").to_str().unwrap()]),
        "MAE option",
    );
}

#[test]
fn pretrain_then_reconstruct_writes_the_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let data = subset();
    let out = mim(&[
        "pretrain",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--model",
        "mae_micro",
        "--max-images",
        "256",
        "--batch-size",
        "64",
        "--epochs",
        "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["checkpoint.mim", "metrics.jsonl", "loss.png", "weights.safetensors"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let pics = tmp.path().join("pics");
    let ck = run.join("checkpoint.mim");
    let out = mim(&[
        "reconstruct",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--indices",
        "0,1,2",
        "--out",
        pics.to_str().unwrap(),
        "--no-titles",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grid = image::open(pics.join("reconstructions.png")).unwrap();
    // 4 panels of 28 px x 4 with 2 px gutters; 3 rows.
    assert_eq!((grid.width(), grid.height()), (4 * 112 + 5 * 2, 3 * (112 + 2) + 2));
    assert!(pics.join("reconstruction_02.png").is_file());
    // An explicit mask: the masked panel shows exactly the listed patches.
    let out = mim(&[
        "reconstruct",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--indices",
        "0",
        "--visible",
        "0,8,48",
        "--out",
        pics.to_str().unwrap(),
        "--scale",
        "1",
        "--no-titles",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let g = image::open(pics.join("reconstruction_00.png")).unwrap().to_rgb8();
    let masked_panel_px = |x: u32, y: u32| *g.get_pixel(2 + 28 + 2 + x, 2 + y);
    assert_eq!(masked_panel_px(5, 1), image::Rgb([128, 128, 128]), "patch 1 must be masked");
}

#[test]
fn shipped_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy();
        let checked = if name.starts_with("finetune") {
            mim::train::finetune::FinetuneConfig::from_toml_file(&p).and_then(|c| c.validate())
        } else {
            PretrainConfig::from_toml_file(&p).and_then(|c| c.validate())
        };
        checked.unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        n += 1;
    }
    assert!(n > 0);
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "epoch = 3\n").unwrap();
    assert!(format!("{:#}", PretrainConfig::from_toml_file(&bad).unwrap_err()).contains("unknown field"));
}

#[test]
fn reconstruct_from_hugging_face_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let img = tmp.path().join("in.png");
    image::RgbImage::from_fn(20, 12, |x, y| image::Rgb([(x * 12) as u8, (y * 20) as u8, 99])).save(&img).unwrap();
    let out = mim(&[
        "reconstruct",
        "--weights",
        fx.join("mae_tiny_weights.safetensors").to_str().unwrap(),
        "--hf-config",
        fx.join("mae_tiny_config.json").to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
        "--no-titles",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grid = image::open(tmp.path().join("reconstructions.png")).unwrap();
    assert_eq!(grid.width(), 4 * 64 + 10, "16 px model input at scale 4");
    let out = mim(&[
        "reconstruct",
        "--weights",
        fx.join("mae_tiny_weights.safetensors").to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
    ]);
    common::assert_clean_error(&out, "--hf-config");
}

#[test]
fn simmim_pretrains_a_swin_with_the_knn_monitor() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let out_dir = tmp.path().join("simmim");
    let out = mim(&[
        "pretrain",
        "--method",
        "simmim",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--max-images",
        "256",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--eval-every",
        "2",
        "--knn-images",
        "500",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = read_metrics(&out_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 16);
    let first: f64 = m[..4].iter().map(|s| s.loss).sum::<f64>();
    let last: f64 = m[12..].iter().map(|s| s.loss).sum::<f64>();
    assert!(last < first, "SimMIM's L1 loss should fall: {first} -> {last}");
    assert!(out_dir.join("knn.jsonl").exists());
    let ck = out_dir.join("checkpoint.mim");
    let device = Device::flex();
    let trained = mim::checkpoint::load_model(
        &ck,
        &device,
        <mim::models::simmim::SimMim as mim::models::pretrain::MimModel>::build,
    )
    .unwrap();
    let before = parameters(
        &<mim::models::simmim::SimMim as mim::models::pretrain::MimModel>::build(&trained.header.model, 0, &device)
            .unwrap(),
    );
    let after = parameters(&trained.model);
    for (name, (_, v)) in &before {
        assert_ne!(&after[name].1, v, "{name} did not change in training");
    }
    // Frozen Swin features (pooled last stage) feed k-NN.
    let out =
        mim(&["knn", "--checkpoint", ck.to_str().unwrap(), "--data", data.to_str().unwrap(), "--max-images", "500"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Reconstruction pictures of SimMIM.
    let pics = tmp.path().join("pics");
    let out = mim(&[
        "reconstruct",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--indices",
        "0,1",
        "--out",
        pics.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(pics.join("reconstructions.png").exists());
    // Export writes SimMIM in official names; the file alone rebuilds the trained model.
    let exported = tmp.path().join("w.safetensors");
    let out = mim(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let w = mim::weights::open(&exported).unwrap();
    assert_eq!(w.detected.holds, mim::weights::Holds::SimMim);
    assert_eq!(w.detected.config, trained.header.model);
    assert_eq!(parameters(&w.simmim(&device).unwrap()), after);
    // A Swin preset is required.
    let bad = mim(&[
        "pretrain",
        "--method",
        "simmim",
        "--model",
        "mae_tiny_28",
        "--data",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_clean_error(&bad, "Swin");
}

#[test]
fn beit_pretrains_on_tokenizer_ids_and_every_weight_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let data = data.to_str().unwrap();
    let tok = tmp.path().join("tok");
    let out = mim(&[
        "tokenizer",
        "train",
        "--data",
        data,
        "--out",
        tok.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-images",
        "512",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = tmp.path().join("beit");
    let tok_ck = tok.join("tokenizer.mim");
    let args = [
        "pretrain",
        "--method",
        "beit",
        "--tokenizer",
        tok_ck.to_str().unwrap(),
        "--data",
        data,
        "--out",
        run.to_str().unwrap(),
        "--max-images",
        "128",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--seed",
        "3",
    ];
    let out = mim(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 8);
    assert!(m[7].loss < m[0].loss, "cross-entropy on visual tokens should fall: {} -> {}", m[0].loss, m[7].loss);

    let device = Device::flex();
    let ck = mim::checkpoint::load_model(
        &run.join("checkpoint.mim"),
        &device,
        <mim::models::beit::BeitForMaskedImageModeling as mim::models::pretrain::MimModel>::build,
    )
    .unwrap();
    let mim::models::pretrain::ModelConfig::Beit(cfg) = &ck.header.model else { panic!("a BEiT checkpoint") };
    let before = parameters(&cfg.init(3, &device).unwrap());
    let after = parameters(&ck.model);
    for (name, (_, v)) in &before {
        assert_ne!(&after[name].1, v, "{name} did not change in training");
    }
    // The pretrained encoder fine-tunes as a classifier (here: its last 2 blocks).
    let ft = tmp.path().join("ft");
    let out = mim(&[
        "finetune",
        "--checkpoint",
        run.join("checkpoint.mim").to_str().unwrap(),
        "--data",
        data,
        "--out",
        ft.to_str().unwrap(),
        "--max-images",
        "128",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--trainable-blocks",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = mim::train::finetune::read_results(&mim::train::finetune::results_path(&ft)).unwrap();
    assert!(r[0].top5 > 50.0, "{:?}", r[0]);
    // Frozen BEiT features (mean of patch tokens) feed the linear probe.
    let out = mim(&[
        "linprobe",
        "--checkpoint",
        run.join("checkpoint.mim").to_str().unwrap(),
        "--data",
        data,
        "--max-images",
        "500",
        "--epochs",
        "5",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without a tokenizer BEiT has no targets.
    let mut no_tok: Vec<&str> = args.to_vec();
    no_tok.drain(3..5);
    assert_clean_error(&mim(&no_tok), "--tokenizer");
}
