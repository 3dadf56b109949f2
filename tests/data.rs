//! Dataset readers, detection by content, and the prefetching loader.

mod common;

use std::sync::Arc;

use common::subset;
use mim::data::augment::Transform;
use mim::data::loader::{Prefetcher, epoch_order, load_batch};
use mim::data::{Dataset, Split};

#[test]
fn shipped_fashion_mnist_subset_reads_both_splits() {
    let train = Dataset::open(&subset(), Split::Train).unwrap();
    let test = Dataset::open(&subset(), Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (10_000, 2_000));
    assert_eq!(train.channels, 1);
    assert_eq!(train.classes[9], "Ankle boot");
    assert!(train.labels.iter().all(|&l| l < 10));
    let img = train.image(0).unwrap();
    assert_eq!((img.width, img.height, img.pixels.len()), (28, 28, 784));
    // Fashion-MNIST's first training image is an ankle boot.
    assert_eq!(train.labels[0], 9);
}

#[test]
fn cifar10_binary_batches_are_detected_and_deinterleaved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rec = vec![3u8];
    rec.extend((0..1024).map(|_| 10u8));
    rec.extend((0..1024).map(|_| 20u8));
    rec.extend((0..1024).map(|_| 30u8));
    std::fs::write(tmp.path().join("data_batch_1.bin"), [rec.clone(), rec].concat()).unwrap();
    let ds = Dataset::open(tmp.path(), Split::Train).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.labels[1]), (2, 3, 3));
    assert_eq!(&ds.image(1).unwrap().pixels[..6], &[10, 20, 30, 10, 20, 30]);
    std::fs::write(tmp.path().join("data_batch_2.bin"), [1u8, 2, 3]).unwrap();
    let err = Dataset::open(tmp.path(), Split::Train).unwrap_err().to_string();
    assert!(err.contains("not a CIFAR-10 binary batch"), "{err}");
}

#[test]
fn image_folders_list_classes_in_sorted_order() {
    let tmp = tempfile::tempdir().unwrap();
    for (class, colour) in [("zebra", [255u8, 255, 255]), ("ant", [0, 0, 0])] {
        let dir = tmp.path().join("val").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        image::RgbImage::from_pixel(5, 3, image::Rgb(colour)).save(dir.join("a.png")).unwrap();
    }
    let ds = Dataset::open(tmp.path(), Split::Test).unwrap();
    assert_eq!(ds.classes, vec!["ant", "zebra"]);
    assert_eq!(ds.labels, vec![0, 1]);
    let img = ds.image(1).unwrap();
    assert_eq!((img.width, img.height, img.pixels[0]), (5, 3, 255));
    let empty = tempfile::tempdir().unwrap();
    let err = Dataset::open(empty.path(), Split::Train).unwrap_err().to_string();
    assert!(err.contains("no PNG/JPEG images"), "{err}");
}

#[test]
fn an_evaluation_needs_labelled_splits_of_its_own_with_the_same_classes() {
    let png = |dir: &std::path::Path, name: &str| {
        std::fs::create_dir_all(dir).unwrap();
        image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9])).save(dir.join(name)).unwrap();
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for class in ["a", "b"] {
        for i in 0..3 {
            png(&root.join("train").join(class), &format!("{i}.png"));
        }
    }
    // Classes in turn, so the first images (--max-images) hold every class; hidden entries are left out.
    png(&root.join("train/.ipynb_checkpoints"), "x.png");
    png(&root.join("train/a"), ".hidden.png");
    let train = Dataset::open(root, Split::Train).unwrap();
    assert_eq!((train.classes.clone(), train.labels.clone()), (vec!["a".into(), "b".into()], vec![0, 1, 0, 1, 0, 1]));
    let err = Dataset::open(root, Split::Test).unwrap_err().to_string();
    assert!(err.contains("has a train/ folder but no val/ or test/"), "{err}");
    // The same classes, an empty folder counting as one.
    png(&root.join("val/a"), "0.png");
    std::fs::create_dir_all(root.join("val/b")).unwrap();
    let (_, test) = Dataset::open_labelled(root).unwrap();
    assert_eq!(test.classes, train.classes);
    png(&root.join("val/c"), "0.png");
    let err = Dataset::open_labelled(root).unwrap_err().to_string();
    assert!(err.contains("different classes (2 and 3; class 2 is none in"), "{err}");
    // One folder for both splits, and IDX images without their labels, are for pretraining only.
    let flat = Dataset::open_labelled(&root.join("train")).unwrap_err().to_string();
    assert!(flat.contains("has no test split of its own"), "{flat}");
    let idx = tmp.path().join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    for f in ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"] {
        std::fs::copy(subset().join(f), idx.join(f)).unwrap();
    }
    assert!(Dataset::open(&idx, Split::Train).unwrap().classes.is_empty());
    let err = Dataset::open_labelled(&idx).unwrap_err().to_string();
    assert!(err.contains("has no labels, which an evaluation needs"), "{err}");
}

#[test]
fn prefetcher_yields_the_same_batches_as_direct_loading() {
    let mut ds = Dataset::open(&subset(), Split::Train).unwrap();
    ds.truncate(100);
    let ds = Arc::new(ds);
    let t = Transform::mae_pretrain(28);
    let order = epoch_order(ds.len(), 5, 2);
    let batches: Vec<_> =
        Prefetcher::spawn(ds.clone(), t.clone(), order.clone(), 32, 1, 5, 2, 2).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 2, "100 images in batches of 32, starting at batch 1, drop the partial last one");
    let direct = load_batch(&ds, &t, &order[32..64], 5, 2).unwrap();
    assert_eq!(batches[0].images, direct.images);
    assert_eq!(batches[0].indices, order[32..64].to_vec());
    assert_ne!(epoch_order(100, 5, 2), epoch_order(100, 5, 3), "each epoch has its own order");
}

#[test]
fn colour_images_are_told_from_grey_ones_by_their_header() {
    let dir = tempfile::tempdir().unwrap();
    let (rgb, grey) = (dir.path().join("rgb.png"), dir.path().join("grey.png"));
    image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10])).save(&rgb).unwrap();
    image::GrayImage::from_pixel(4, 4, image::Luma([90])).save(&grey).unwrap();
    assert!(mim::data::folder::is_colour(&rgb).unwrap());
    assert!(!mim::data::folder::is_colour(&grey).unwrap());
    // A folder of grey images is 1-channel data; one colour image first in its class makes it RGB.
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join("set").join(class)).unwrap();
        std::fs::copy(&grey, dir.path().join("set").join(class).join("0.png")).unwrap();
    }
    let ds = mim::data::Dataset::open(&dir.path().join("set"), mim::data::Split::Train).unwrap();
    assert_eq!((ds.channels, ds.image(1).unwrap().pixels.len()), (1, 16));
    std::fs::copy(&rgb, dir.path().join("set/b/0.png")).unwrap();
    let ds = mim::data::Dataset::open(&dir.path().join("set"), mim::data::Split::Train).unwrap();
    assert_eq!((ds.channels, ds.image(0).unwrap().pixels.len()), (3, 48));
}
