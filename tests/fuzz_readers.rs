//! Property-based mutation test of every reader of untrusted bytes (IDX, CIFAR-10, image folder,
//! safetensors, PyTorch `.pth`, checkpoint, TOML config): a few thousand seeded mutants of a valid file each, and
//! the property is that reading one returns Ok or Err and never panics. The issue-25 crash
//! inputs are seeds. `MIM_FUZZ_N=100000 cargo test --release --test fuzz_readers` is the long run
//! (inputs per reader); a failure prints the reader and the mutant's index to reproduce it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use mim::checkpoint::{self, Kind};
use mim::data::{Split, cifar, folder, idx};
use mim::train::pretrain::PretrainConfig;

fn inputs(default: usize) -> usize {
    std::env::var("MIM_FUZZ_N").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Integers that break length and dimension arithmetic.
const EDGES: [u64; 10] = [0, 1, 0x7f, 0x80, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, u64::MAX];

/// One to four mutations of `seed`: flipped bits, edge values (big- and little-endian, 1/4/8
/// bytes), truncation, appended junk, a deleted or duplicated run of bytes.
fn mutate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = b.len().max(1);
        let at = rng.gen_range(0..len);
        match rng.gen_range(0..8) {
            0 if at < b.len() => b[at] ^= 1 << rng.gen_range(0..8),
            1 if at < b.len() => b[at] = EDGES[rng.gen_range(0..EDGES.len())] as u8,
            2 | 3 => {
                let v = EDGES[rng.gen_range(0..EDGES.len())];
                let width = [4usize, 8][rng.gen_range(0..2)];
                let bytes = if rng.r#gen() { v.to_be_bytes() } else { v.to_le_bytes() };
                let src = if rng.r#gen() { &bytes[8 - width..] } else { &bytes[..width] };
                for (k, x) in src.iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = *x;
                    }
                }
            }
            4 => b.truncate(at),
            5 => b.extend((0..rng.gen_range(1..64)).map(|_| rng.r#gen::<u8>())),
            6 if at < b.len() => {
                let end = (at + rng.gen_range(1..64)).min(b.len());
                b.drain(at..end);
            }
            _ if at < b.len() => {
                let end = (at + rng.gen_range(1..64)).min(b.len());
                let run = b[at..end].to_vec();
                b.splice(at..at, run);
            }
            _ => {}
        }
    }
    b
}

/// Runs `read` on `n` mutants of each seed (the seeds themselves first).
fn fuzz(name: &str, seeds: &[Vec<u8>], n: usize, mut read: impl FnMut(&[u8])) {
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    for (i, s) in seeds.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| read(s))).is_err() {
            panic!("{name}: seed {i} panicked");
        }
    }
    for i in 0..n {
        let m = mutate(&seeds[i % seeds.len()], &mut rng);
        if catch_unwind(AssertUnwindSafe(|| read(&m))).is_err() {
            panic!("{name}: mutant {i} ({} bytes, first 64: {:?}) panicked", m.len(), &m[..m.len().min(64)]);
        }
    }
}

fn idx_images(dims: [u32; 3], body: usize) -> Vec<u8> {
    let mut b = vec![0u8, 0, 8, 3];
    dims.iter().for_each(|d| b.extend(d.to_be_bytes()));
    b.extend((0..body).map(|i| i as u8));
    b
}

#[test]
fn idx_reader_never_panics() {
    let seeds = vec![
        idx_images([4, 5, 3], 60),
        idx_images([31232, 1 << 30, 7 << 26], 64), // wraps to 0 in a 64-bit product
        idx_images([64, 28, 0], 64 * 28),          // zero columns
        vec![0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 9],  // labels
    ];
    let p = Path::new("fuzz-images-idx3-ubyte");
    fuzz("IDX", &seeds, inputs(4000), |b| {
        let _ = idx::parse(b, 0x803, p);
        let _ = idx::parse(b, 0x801, p);
    });
    // Through the whole reader (header, labels beside it, gzip), on files.
    let dir = tempfile::tempdir().unwrap();
    let (img, lab) = (dir.path().join("train-images-idx3-ubyte"), dir.path().join("train-labels-idx1-ubyte"));
    std::fs::write(&lab, [0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 9]).unwrap();
    fuzz("IDX folder", &seeds[..3], inputs(4000) / 10, |b| {
        std::fs::write(&img, b).unwrap();
        if let Ok(ds) = mim::data::Dataset::open(dir.path(), Split::Train) {
            (0..ds.len()).for_each(|i| drop(ds.image(i)));
        }
    });
}

#[test]
fn cifar_reader_never_panics() {
    let record = |label: u8| std::iter::once(label).chain((0..3072).map(|i| i as u8)).collect::<Vec<u8>>();
    let seeds = vec![record(3), [record(0), record(9)].concat(), record(10)];
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("test_batch.bin");
    fuzz("CIFAR-10", &seeds, inputs(4000) / 4, |b| {
        std::fs::write(&f, b).unwrap();
        if let Ok(ds) = cifar::open(&f, Split::Test) {
            (0..ds.len()).for_each(|i| drop(ds.image(i)));
        }
    });
}

#[test]
fn image_folder_decoder_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("a.png");
    image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7])).save(&png).unwrap();
    let jpg = dir.path().join("a.jpg");
    image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 90])).save(&jpg).unwrap();
    for (path, n) in [(png, inputs(4000) / 4), (jpg, inputs(4000) / 4)] {
        let seed = std::fs::read(&path).unwrap();
        fuzz("image folder", &[seed], n, |b| {
            std::fs::write(&path, b).unwrap();
            let _ = folder::decode(&path, 3);
            let _ = folder::decode(&path, 1);
        });
    }
}

#[test]
fn safetensors_reader_never_panics() {
    let mut map = mim::io::TensorMap::new();
    map.insert("w".into(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    map.insert("b".into(), (vec![3], vec![0.5; 3]));
    let seed = mim::io::safetensors_bytes(&map).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.safetensors");
    fuzz("safetensors", &[seed], inputs(4000) / 2, |b| {
        std::fs::write(&f, b).unwrap();
        let _ = mim::io::read_safetensors(&f);
    });
}

/// `zip` with its `data.pkl` replaced by `pickle` (valid CRC), every other entry copied as it is.
fn with_pickle(zip: &[u8], pickle: &[u8]) -> Vec<u8> {
    use std::io::{Cursor, Write};
    let mut src = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..src.len() {
        let f = src.by_index_raw(i).unwrap();
        if f.name().unwrap().ends_with("/data.pkl") {
            let name = f.name().unwrap().to_string();
            drop(f);
            let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            w.start_file(name, stored).unwrap();
            w.write_all(pickle).unwrap();
        } else {
            w.raw_copy_file(f).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn pth_reader_never_panics() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth");
    let read = |name: &str| std::fs::read(fixtures.join(name)).unwrap();
    let seeds: Vec<Vec<u8>> = [
        "train_checkpoint.pth", "legacy.pth", "yacs_config_legacy.pth", "evil_stack_global.pth",
        "torch_folder_21_chars.pth",
    ]
    .map(read)
    .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.pth");
    let load = |b: &[u8]| {
        std::fs::write(&f, b).unwrap();
        let _ = mim::io::read_tensor_file(&f);
    };
    fuzz("pth", &seeds, inputs(4000) / 2, load);
    // Behind data.pkl's CRC: mutated pickles in otherwise valid archives.
    let mut rng = ChaCha8Rng::seed_from_u64(27);
    for name in ["train_checkpoint.pth", "yacs_config_p4.pth"] {
        let zip = read(name);
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&zip[..])).unwrap();
        let pickle_name =
            archive.file_names().map(|n| n.unwrap().into_owned()).find(|n| n.ends_with("/data.pkl")).unwrap();
        let mut pickle = Vec::new();
        std::io::Read::read_to_end(&mut archive.by_name(&pickle_name).unwrap(), &mut pickle).unwrap();
        for i in 0..inputs(4000) / 8 {
            let m = with_pickle(&zip, &mutate(&pickle, &mut rng));
            if catch_unwind(AssertUnwindSafe(|| load(&m))).is_err() {
                panic!("pth {name} behind the CRC: mutant {i} panicked");
            }
        }
    }
}

#[test]
fn toml_config_reader_never_panics() {
    let seed =
        b"data = \"data/fashion-mnist-subset\"\nout = \"runs/x\"\nmodel = \"mae_micro\"\nepochs = 2\nbatch_size = 64\n\
        base_lr = 1.5e-4\nmask_ratio = 0.75\nnorm_pix_loss = true\n[mask]\nkind = \"block\"\n"
            .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    fuzz("TOML", &[seed], inputs(4000) / 2, |b| {
        std::fs::write(&f, b).unwrap();
        if let Ok(c) = PretrainConfig::from_toml_file(&f) {
            let _ = c.validate();
        }
    });
}

/// Re-frames checkpoint sections with valid lengths and CRCs, so mutants reach the JSON and
/// burnpack readers behind the checksum.
fn frame(sections: &[&[u8]]) -> Vec<u8> {
    let mut b = b"MIMCKPT2".to_vec();
    for s in sections {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(crc32fast::hash(s).to_le_bytes());
        b.extend(*s);
    }
    b
}

#[test]
fn checkpoint_reader_never_panics() {
    let dev = burn::tensor::Device::flex();
    let model = burn::nn::LinearConfig::new(3, 2).init(&dev);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.mim");
    checkpoint::save_kind(&f, Kind::Model, &serde_json::json!({"iteration": 3}), &model, None).unwrap();
    let good = std::fs::read(&f).unwrap();
    let (_, model_bytes, _) = checkpoint::load_kind::<serde_json::Value>(&f, Kind::Model).unwrap();
    let mut huge = b"MIMCKPT1".to_vec(); // the issue's crash input: a length near u64::MAX
    huge.extend(u64::MAX.to_le_bytes());
    let read = |b: &[u8]| {
        std::fs::write(&f, b).unwrap();
        if let Ok((_, m, _)) = checkpoint::load_kind::<serde_json::Value>(&f, Kind::Model) {
            let _ = checkpoint::fill(model.clone(), m, &f);
        }
    };
    fuzz("checkpoint", &[good, huge], inputs(4000) / 4, read);
    // Behind the CRC: mutated model sections (burnpack) and headers (JSON), correctly framed.
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    let framed: Vec<Vec<u8>> = (0..inputs(4000) / 4)
        .map(|i| {
            let (h, m) = if i % 4 == 0 {
                (mutate(br#"{"iteration":3}"#, &mut rng), model_bytes.clone())
            } else {
                (br#"{}"#.to_vec(), mutate(&model_bytes, &mut rng))
            };
            frame(&[&h, &m, &[]])
        })
        .collect();
    for (i, b) in framed.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| read(b))).is_err() {
            panic!("checkpoint behind the CRC: mutant {i} panicked");
        }
    }
}
