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
}
