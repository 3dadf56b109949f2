//! CIFAR-10 binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`): records of 1 label byte and
//! 3072 pixel bytes in planar RGB.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::{Dataset, Split, Storage};

const RECORD: usize = 1 + 3 * 32 * 32;
const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

fn dir_of(path: &Path) -> PathBuf {
    let nested = path.join("cifar-10-batches-bin");
    if nested.is_dir() { nested } else { path.to_path_buf() }
}

/// Whether `path` is a CIFAR-10 batch file or a folder of them.
pub fn detect(path: &Path) -> bool {
    if path.is_file() {
        return path.extension().is_some_and(|e| e == "bin");
    }
    let d = dir_of(path);
    d.join("data_batch_1.bin").is_file() || d.join("test_batch.bin").is_file()
}

/// Reads the split's batch files (or the single file given).
pub fn open(path: &Path, split: Split) -> Result<Dataset> {
    let files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        let d = dir_of(path);
        match split {
            Split::Train => (1..=5).map(|i| d.join(format!("data_batch_{i}.bin"))).filter(|p| p.is_file()).collect(),
            Split::Test => vec![d.join("test_batch.bin")],
        }
    };
    ensure!(
        !files.is_empty(),
        "no data_batch_1.bin ... data_batch_5.bin in '{}' for the Train split: pass a CIFAR-10 binary folder that has them",
        dir_of(path).display()
    );
    let mut labels = Vec::new();
    let mut pixels = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read CIFAR-10 batch '{}'", f.display()))?;
        ensure!(
            !bytes.is_empty() && bytes.len() % RECORD == 0,
            "'{}' is not a CIFAR-10 binary batch: {} bytes is not a multiple of the {RECORD}-byte record (truncated?)",
            f.display(),
            bytes.len()
        );
        for rec in bytes.chunks(RECORD) {
            ensure!(rec[0] < 10, "'{}' has label {} (CIFAR-10 labels are 0-9): is it CIFAR-100?", f.display(), rec[0]);
            labels.push(rec[0] as u32);
            let planes = &rec[1..];
            // planar RGB -> interleaved HWC
            for i in 0..1024 {
                pixels.extend([planes[i], planes[1024 + i], planes[2048 + i]]);
            }
        }
    }
    Ok(Dataset {
        name: format!("CIFAR-10 {} ({} images)", path.display(), labels.len()),
        channels: 3,
        storage: Storage::Memory { width: 32, height: 32, pixels },
        labels,
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        mean: vec![0.4914, 0.4822, 0.4465],
        std: vec![0.2470, 0.2435, 0.2616],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_records_bad_labels_and_missing_batches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("test_batch.bin");
        for (bytes, needle) in
            [(vec![0u8; RECORD + 1], "multiple"), (vec![], "multiple"), (vec![10u8; RECORD], "label 10")]
        {
            std::fs::write(&f, bytes).unwrap();
            let err = open(&f, Split::Test).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        // Only the test batch: the train split must say so, not give an empty dataset.
        let err = open(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin"), "{err}");
    }
}
