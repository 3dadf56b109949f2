//! `mim serve` in a real browser (Debian's chromium through chromedriver): the page loads, clicked
//! patches change the reconstruction, which equals `mim reconstruct`'s for the same mask, attention
//! heads switch, photos upload and a non-image or too large file gets a clear message on the page.
//!
//! Without chromium the test says so and passes, unless `MIM_BROWSER_TESTS=required` (CI sets it).
//! With `MIM_SCREENSHOTS=DIR` it keeps a screenshot of each view there.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{mim, subset};
use fantoccini::{Client, ClientBuilder, Locator};
use mim::data::Split;
use mim::serve::{ImageRef, ServeConfig, ViewerConfig};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const SCALE: usize = 4;

/// chromedriver, stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver on a free port, or `None` (after saying why) when the browser is not installed.
fn driver() -> Option<(Driver, u16)> {
    if !(Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()) {
        let why = format!("{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        assert!(std::env::var("MIM_BROWSER_TESTS").as_deref() != Ok("required"), "browser tests required: {why}");
        eprintln!("skipped: {why}");
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((driver, port))
}

async fn browser(port: u16, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": CHROMIUM, "args": args }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to chromedriver")
}

/// Evaluates `script` (a function body) in the page.
async fn js(client: &Client, script: &str) -> serde_json::Value {
    client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` returns something other than null/false/"" and returns it.
async fn until(client: &Client, what: &str, script: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = js(client, script).await;
        if !(v.is_null() || v == false || v == "") {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn screenshot(client: &Client, name: &str) {
    if let Ok(dir) = std::env::var("MIM_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(name), client.screenshot().await.unwrap()).unwrap();
    }
}

fn decode_png(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).expect("a PNG").to_rgb8()
}

/// The reconstruction picture the page shows.
async fn shown_reconstruction(client: &Client) -> image::RgbImage {
    let shown = js(client, "return document.getElementById('reconstruction').src").await;
    let shown = shown.as_str().unwrap().strip_prefix("data:image/png;base64,").expect("a PNG data URL");
    decode_png(&base64::engine::general_purpose::STANDARD.decode(shown).unwrap())
}

/// `mim reconstruct --no-titles` of test image 0 with `mask` flags, as the page draws it.
fn cli_reconstruction(ck: &Path, out: &Path, mask: &[&str]) -> image::RgbImage {
    let (ck, out, scale) = (ck.to_str().unwrap(), out.to_str().unwrap(), SCALE.to_string());
    let mut args = vec!["reconstruct", "--checkpoint", ck, "--indices", "0", "--no-titles", "--scale", &scale];
    args.extend(["--out", out]);
    args.extend(mask);
    let run = mim(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    decode_png(&std::fs::read(Path::new(out).join("reconstruction_00.png")).unwrap())
}

/// A briefly trained checkpoint (`extra`: method, model, tokenizer).
fn checkpoint(dir: &Path, extra: &[&str]) -> PathBuf {
    let data = subset();
    let mut args = vec!["pretrain", "--data", data.to_str().unwrap(), "--max-images", "256", "--batch-size", "64"];
    args.extend(["--epochs", "1", "--out", dir.to_str().unwrap()]);
    args.extend(extra);
    let out = mim(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("checkpoint.mim")
}

/// A briefly trained visual tokenizer (BEiT's targets).
fn tokenizer(dir: &Path) -> PathBuf {
    let data = subset();
    let out = mim(&["tokenizer", "train", "--data", data.to_str().unwrap(), "--out", dir.to_str().unwrap()]
        .into_iter()
        .chain(["--epochs", "1", "--max-images", "256", "--batch-size", "64"])
        .collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("tokenizer.mim")
}

/// The viewer's configuration for `checkpoint` on the shipped subset.
fn viewer(checkpoint: &Path) -> ViewerConfig {
    ViewerConfig {
        checkpoint: checkpoint.to_path_buf(),
        data: Some(subset()),
        split: Split::Test,
        neighbour_pool: 300,
        scale: SCALE,
        tokenizer: None,
    }
}

/// The viewer of `checkpoint` on the shipped subset, on a free loopback port.
fn serve(checkpoint: &Path) -> mim::serve::Server {
    let cfg = ServeConfig { viewer: viewer(checkpoint), host: [127, 0, 0, 1].into(), port: 0, upload_limit: 64 * 1024 };
    tokio::task::block_in_place(|| mim::serve::start(cfg, &mut |_| {})).expect("start the viewer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_reconstructs_what_is_clicked_as_the_cli_does_switches_heads_and_takes_photos() {
    let Some((_driver, driver_port)) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(&tmp.path().join("run"), &["--model", "mae_micro"]);
    let server = serve(&ck);
    let client = browser(driver_port, &tmp.path().join("profile")).await;
    client.goto(&server.url()).await.unwrap();
    assert_eq!(js(&client, "return document.getElementById('tokens-section').hidden").await, true, "no tokens for MAE");

    // The page opens on the first test image with a random mask and its reconstruction.
    let first =
        until(&client, "the first reconstruction", "return document.getElementById('reconstruction').dataset.mask")
            .await
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(first.len(), 49, "a 7x7 patch grid");
    until(&client, "the neighbours", "return document.getElementById('neighbours').children.length >= 8").await;
    let model = client.find(Locator::Id("model")).await.unwrap().text().await.unwrap();
    assert!(model.contains("MAE") && model.contains("epoch 1"), "{model}");
    screenshot(&client, "serve.png").await;

    // The page's random mask is the one `mim reconstruct --seed 0 --mask-ratio 0.75` draws.
    let cli_random = cli_reconstruction(&ck, &tmp.path().join("random"), &["--seed", "0", "--mask-ratio", "0.75"]);
    assert!(shown_reconstruction(&client).await == cli_random, "the page's random mask differs from the CLI's");

    // Clicking two patches toggles them, and the reconstruction follows.
    for patch in [0, 24] {
        client.find(Locator::Css(&format!("#patches div[data-patch='{patch}']"))).await.unwrap().click().await.unwrap();
    }
    let mut expected: Vec<u8> = first.bytes().collect();
    for patch in [0, 24] {
        expected[patch] = if expected[patch] == b'1' { b'0' } else { b'1' };
    }
    let expected = String::from_utf8(expected).unwrap();
    let script = format!("return document.getElementById('reconstruction').dataset.mask === '{expected}'");
    until(&client, "the reconstruction of the clicked mask", &script).await;
    let shown = shown_reconstruction(&client).await;

    // `mim reconstruct` with the same visible patches draws the same pixels.
    let visible: Vec<String> =
        expected.bytes().enumerate().filter(|(_, b)| *b == b'0').map(|(i, _)| i.to_string()).collect();
    let cli = cli_reconstruction(&ck, &tmp.path().join("pics"), &["--visible", &visible.join(",")]);
    assert_eq!(shown.dimensions(), cli.dimensions());
    assert!(shown == cli, "the page's reconstruction differs from mim reconstruct's");
    screenshot(&client, "serve_clicked.png").await;

    // Attention: another head draws another map.
    let canvas = "const c = document.getElementById('attention'); return c.dataset.head !== undefined && c.toDataURL()";
    let mean = until(&client, "the attention map", canvas).await;
    assert_eq!(js(&client, "return document.getElementById('attention').dataset.head").await, "mean");
    client.find(Locator::Id("head")).await.unwrap().select_by_value("0").await.unwrap();
    until(&client, "head 1", "return document.getElementById('attention').dataset.head === '0'").await;
    let head = js(&client, "return document.getElementById('attention').toDataURL()").await;
    assert_ne!(mean, head, "head 1's map is not the mean's");
    client.find(Locator::Id("layer")).await.unwrap().select_by_value("0").await.unwrap();
    until(&client, "layer 1", "return document.getElementById('attention').dataset.layer === '0'").await;
    screenshot(&client, "serve_attention.png").await;

    // A photo (RGB, not square) uploads and is reconstructed; a text file and a too large file are refused on the page.
    let photo = tmp.path().join("photo.png");
    image::RgbImage::from_fn(60, 40, |x, y| image::Rgb([(x * 4) as u8, (y * 6) as u8, 128])).save(&photo).unwrap();
    let input = client.find(Locator::Id("file")).await.unwrap();
    input.send_keys(photo.to_str().unwrap()).await.unwrap();
    until(
        &client,
        "the upload's reconstruction",
        "return document.getElementById('reconstruction').dataset.image === '{\"upload\":0}'",
    )
    .await;
    until(
        &client,
        "the upload's attention",
        "return document.getElementById('attention').dataset.image === '{\"upload\":0}'",
    )
    .await;
    screenshot(&client, "serve_upload.png").await;

    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not a picture").unwrap();
    input.send_keys(text.to_str().unwrap()).await.unwrap();
    let message = until(&client, "the refusal", "return document.getElementById('message').textContent").await;
    assert!(message.as_str().unwrap().contains("notes.txt: not a PNG or JPEG image"), "{message}");
    screenshot(&client, "serve_error.png").await;

    let big = tmp.path().join("big.png");
    std::fs::write(&big, vec![7u8; 100 * 1024]).unwrap();
    input.send_keys(big.to_str().unwrap()).await.unwrap();
    let script = "const t = document.getElementById('message').textContent; return t.includes('big.png') && t";
    let message = until(&client, "the size refusal", script).await;
    assert!(message.as_str().unwrap().contains("larger than the upload limit"), "{message}");

    client.close().await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beit_checkpoint_shows_its_visual_tokens_and_the_guesses_at_the_hidden_ones() {
    let Some((_driver, driver_port)) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let tok = tokenizer(&tmp.path().join("tok"));
    let ck = checkpoint(&tmp.path().join("run"), &["--method", "beit", "--tokenizer", tok.to_str().unwrap()]);
    let server = serve(&ck);
    let client = browser(driver_port, &tmp.path().join("profile")).await;
    client.goto(&server.url()).await.unwrap();

    let first = until(&client, "the first tokens", "return document.getElementById('tokens').dataset.mask").await;
    let first = first.as_str().unwrap().to_string();
    // BEiT predicts tokens, not pixels: the page says so instead of a reconstruction.
    let text = client.find(Locator::Id("reconstruction")).await.unwrap();
    assert!(!text.is_displayed().await.unwrap());
    let body = client.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(body.contains("BEiT predicts visual tokens, not pixels"), "{body}");

    // Showing a hidden patch (or hiding a visible one) updates the tokens view.
    client.find(Locator::Css("#patches div[data-patch='10']")).await.unwrap().click().await.unwrap();
    let mut expected: Vec<u8> = first.bytes().collect();
    expected[10] = if expected[10] == b'1' { b'0' } else { b'1' };
    let expected = String::from_utf8(expected).unwrap();
    let script = format!("return document.getElementById('tokens').dataset.mask === '{expected}'");
    until(&client, "the tokens of the clicked mask", &script).await;
    // One cell per patch; each hidden patch marked right or wrong, visible ones plain.
    let cells = js(&client, "return [...document.getElementById('token-grid').children].map(c => c.className)").await;
    let cells: Vec<&str> = cells.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cells.len(), 49);
    for (i, (cell, hidden)) in cells.iter().zip(expected.bytes()).enumerate() {
        assert_eq!(cell.is_empty(), hidden == b'0', "patch {i}: class '{cell}'");
    }

    // The visible patches' ids are the tokenizer's own for this image.
    let device = burn::tensor::Device::flex();
    let tokenizer = mim::train::tokenizer::load_tokenizer(&tok, &device).unwrap().model;
    let ds = mim::data::Dataset::open(&data, Split::Test).unwrap();
    let config = mim::checkpoint::read_header(&ck).unwrap().model;
    let (batch, ..) = mim::viz::load_dataset_images(&ds, &[0], &config, None).unwrap();
    let ids: Vec<i64> =
        tokenizer.encode_ids(batch.tensor(&device)).unwrap().into_data().convert::<i64>().try_to_vec().unwrap();
    let shown = js(&client, "return [...document.getElementById('token-grid').children].map(c => c.textContent)").await;
    for (i, text) in shown.as_array().unwrap().iter().enumerate() {
        let truth = text.as_str().unwrap().rsplit('≠').next().unwrap().parse::<i64>().unwrap();
        assert_eq!(truth, ids[i], "patch {i}");
    }
    screenshot(&client, "serve_beit.png").await;
    client.close().await.unwrap();
    drop(server);
}

/// A BEiT exported to a weights file (as the shipped one) shows the visual tokens its checkpoint
/// shows, given its tokenizer with --tokenizer; without it the view says what to pass.
#[test]
fn a_beit_weights_file_with_its_tokenizer_shows_the_tokens_of_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(&tmp.path().join("tok"));
    let ck = checkpoint(&tmp.path().join("run"), &["--method", "beit", "--tokenizer", tok.to_str().unwrap()]);
    let file = tmp.path().join("beit.safetensors");
    let out = mim(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let open = |cfg: ViewerConfig| mim::serve::Viewer::new(&cfg, &mut |_| {}).unwrap();
    let from_checkpoint = open(viewer(&ck));
    let from_file = open(ViewerConfig { tokenizer: Some(tok.clone()), ..viewer(&file) });
    let removed: Vec<bool> = (0..49).map(|i| i % 3 == 0).collect();
    let (a, b) = (
        from_checkpoint.tokens(ImageRef::Dataset(2), &removed).unwrap(),
        from_file.tokens(ImageRef::Dataset(2), &removed).unwrap(),
    );
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.predicted, b.predicted);
    assert_eq!(a.predicted.iter().filter(|p| p.is_some()).count(), removed.iter().filter(|&&r| r).count());

    let without = open(viewer(&file));
    let why = without.info().no_tokens.clone().expect("no tokens without a tokenizer");
    assert!(why.contains("pass --tokenizer"), "{why}");
    let err = without.tokens(ImageRef::Dataset(0), &removed).unwrap_err().to_string();
    assert!(err.contains("--tokenizer"), "{err}");
}

/// The models shipped in pretrained/ open with every view their method has: `mim serve` (and
/// `--method beit|simmim`) shows them when no checkpoint is given.
#[test]
fn every_shipped_model_opens_in_the_viewer_with_its_views() {
    use mim::train::methods::Method;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let removed: Vec<bool> = (0..49).map(|i| i % 2 == 0).collect();
    for method in [Method::Mae, Method::Beit, Method::Simmim] {
        let shipped = mim::serve::shipped(method);
        let cfg = ViewerConfig {
            neighbour_pool: 50,
            tokenizer: shipped.tokenizer.map(|t| root.join(t)),
            ..viewer(&root.join(shipped.weights))
        };
        let v = mim::serve::Viewer::new(&cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{method:?}: {e:#}"));
        let info = v.info().clone();
        assert_eq!((info.no_attention, info.no_neighbours), (None, None), "{method:?}");
        assert_eq!(v.neighbours(ImageRef::Dataset(0), 4).unwrap().len(), 4);
        if method == Method::Beit {
            assert_eq!(info.no_tokens, None);
            let tokens = v.tokens(ImageRef::Dataset(0), &removed).unwrap();
            assert_eq!(tokens.ids.len(), 49);
        } else {
            assert_eq!(info.no_reconstruction, None, "{method:?}");
            let grid = info.grid * info.grid;
            let hidden: Vec<bool> = (0..grid).map(|i| i % 2 == 0).collect();
            assert!(v.reconstruct(ImageRef::Dataset(0), &hidden).unwrap().removed > 0, "{method:?}");
        }
    }
}
