//! Bad input gives one clear error line and a non-zero exit, never a panic, and loses nothing.

mod common;

use common::{assert_clean_error, mim, subset};

#[test]
fn missing_data_path_names_the_fix() {
    let out = mim(&["pretrain", "--data", "/nonexistent/fmnist", "--out", "/tmp/mim-never"]);
    assert_clean_error(&out, "does not exist");
}

#[test]
fn corrupt_idx_header_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("train-images-idx3-ubyte"), [0u8, 0, 9, 9, 0, 0, 0, 1]).unwrap();
    let out =
        mim(&["pretrain", "--data", tmp.path().to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap()]);
    assert_clean_error(&out, "corrupt IDX header");
}

#[test]
fn truncated_image_in_a_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let class = tmp.path().join("train/cat");
    std::fs::create_dir_all(&class).unwrap();
    let good = image::RgbImage::from_pixel(32, 32, image::Rgb([10, 200, 30]));
    for i in 0..3 {
        good.save(class.join(format!("ok{i}.png"))).unwrap();
    }
    let mut bytes = std::fs::read(class.join("ok0.png")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(class.join("broken.png"), bytes).unwrap();
    let out = mim(&[
        "pretrain",
        "--data",
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
        "--model",
        "mae_micro",
        "--img-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "1",
    ]);
    assert_clean_error(&out, "broken.png");
}

#[test]
fn image_size_not_divisible_by_patch_is_rejected() {
    let out = mim(&["pretrain", "--data", subset().to_str().unwrap(), "--out", "/tmp/mim-never", "--img-size", "30"]);
    assert_clean_error(&out, "not divisible by patch size 4");
}

#[test]
fn mask_ratio_outside_unit_interval_is_rejected() {
    for r in ["1.0", "0", "-0.5"] {
        let out =
            mim(&["pretrain", "--data", subset().to_str().unwrap(), "--out", "/tmp/mim-never", "--mask-ratio", r]);
        assert_clean_error(&out, "outside (0, 1)");
    }
}

#[test]
fn several_devices_must_be_distinct_cuda_devices_and_the_tokenizer_trains_on_one() {
    let pretrain = |devices: &str| {
        mim(&["pretrain", "--data", subset().to_str().unwrap(), "--out", "/tmp/mim-never", "--devices", devices])
    };
    assert_clean_error(&pretrain("cuda:0,cuda:0"), "named twice");
    assert_clean_error(&pretrain("cpu,cuda:0"), "data-parallel training needs CUDA devices");
    let no_gpu = if cfg!(feature = "cuda") { "CUDA device(s)" } else { "needs a CUDA build" };
    assert_clean_error(&pretrain("cuda:0,cuda:1"), no_gpu);
    let out = mim(&[
        "tokenizer",
        "train",
        "--data",
        subset().to_str().unwrap(),
        "--out",
        "/tmp/mim-never",
        "--devices",
        "cuda:0,cuda:1",
    ]);
    assert_clean_error(&out, "the tokenizer trains on one device");
}

#[test]
fn existing_run_is_not_overwritten_and_other_config_cannot_resume_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let o = out_dir.to_str().unwrap();
    let data = subset();
    let base = [
        "pretrain",
        "--data",
        data.to_str().unwrap(),
        "--out",
        o,
        "--max-images",
        "128",
        "--batch-size",
        "64",
        "--epochs",
        "1",
    ];
    let with_model = |m: &'static str, extra: &[&'static str]| [&base[..], &["--model", m], extra].concat();
    assert!(mim(&with_model("mae_micro", &[])).status.success());
    let ckpt = out_dir.join("checkpoint.mim");
    let before = std::fs::read(&ckpt).unwrap();

    assert_clean_error(&mim(&with_model("mae_micro", &[])), "already holds a run");
    assert_clean_error(&mim(&with_model("mae_tiny_28", &["--resume"])), "different model");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "a refused command must not touch the checkpoint");

    let garbage = tmp.path().join("garbage.mim");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    assert_clean_error(&mim(&["reconstruct", "--checkpoint", garbage.to_str().unwrap()]), "not a mim checkpoint");
    assert_clean_error(
        &mim(&["reconstruct", "--checkpoint", ckpt.to_str().unwrap(), "--indices", "5000"]),
        "out of range",
    );
}

#[test]
fn serve_names_a_taken_port_a_missing_checkpoint_a_bad_upload_limit_and_two_models() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = mim(&["serve", "--checkpoint", "/nonexistent/ck.mim", "--port", &port]);
    assert_clean_error(&out, "pick another --port");
    let out = mim(&["serve", "--checkpoint", "/nonexistent/ck.mim", "--port", "0"]);
    assert_clean_error(&out, "/nonexistent/ck.mim");
    let out = mim(&["serve", "--checkpoint", "/nonexistent/ck.mim", "--upload-limit-mb", "0"]);
    assert_clean_error(&out, "--upload-limit-mb must be positive");
    let out = mim(&["serve", "--checkpoint", "/nonexistent/ck.mim", "--method", "beit"]);
    assert_clean_error(&out, "not both");
}
