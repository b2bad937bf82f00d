//! `--data folder:PATH`: a class-per-folder tree of PNG/JPEG images becomes a 3×32×32 dataset
//! with the sorted folder names as classes.

use nce::data::{self, DataError, DatasetId, Split};
use nce::graph::Shape;
use std::path::Path;

fn png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

#[test]
fn class_folders_become_labels_and_images_are_resized() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    png(&r.join("train/cat/a.png"), 40, 30, [255, 0, 0]);
    png(&r.join("train/cat/b.png"), 8, 8, [255, 0, 0]);
    png(&r.join("train/dog/a.png"), 64, 64, [0, 0, 255]);
    png(&r.join("test/dog/x.png"), 32, 32, [0, 0, 255]);
    std::fs::write(r.join("train/cat/notes.txt"), "not an image").unwrap();
    let name = format!("folder:{}", r.display());
    assert_eq!(name.parse::<DatasetId>().unwrap(), DatasetId::Folder(r.to_path_buf()));

    let train = data::load(&name, Path::new("unused"), Split::Train).unwrap();
    assert_eq!((train.len(), train.shape, train.classes), (3, Shape::new(3, 32, 32), 2));
    assert_eq!(train.labels, vec![0, 0, 1], "cat < dog, files in sorted order");
    let plane = 32 * 32;
    // Solid red stays red after resizing: R plane 255, G and B planes 0.
    assert!(train.image(0)[..plane].iter().all(|&p| p == 255) && train.image(0)[plane..].iter().all(|&p| p == 0));
    assert!(train.image(2)[2 * plane..].iter().all(|&p| p == 255), "blue plane of the dog");

    let test = data::load_for(&name, Path::new("unused"), Split::Test, None, Some(Shape::new(3, 32, 32))).unwrap();
    assert_eq!((test.len(), test.labels.clone()), (1, vec![1]), "test labels use the training folders' classes");
    let err = data::load_for(&name, Path::new("unused"), Split::Test, None, Some(Shape::new(1, 28, 28))).unwrap_err();
    assert!(matches!(err, DataError::ShapeMismatch { .. }), "{err}");

    // A corrupt image names its file.
    std::fs::write(r.join("train/dog/bad.png"), b"not a png").unwrap();
    let err = data::load(&name, Path::new("unused"), Split::Train).unwrap_err();
    assert!(err.to_string().contains("bad.png"), "{err}");
}

#[test]
fn unknown_names_and_missing_data_are_clear() {
    assert!(matches!("imagenet".parse::<DatasetId>(), Err(DataError::UnknownDataset { .. })));
    assert!("folder:".parse::<DatasetId>().is_err());
    let d = tempfile::tempdir().unwrap();
    let err = data::locate(&DatasetId::Mnist, Some(d.path())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&d.path().join("mnist").display().to_string()) && msg.contains("scripts/setup"), "{msg}");
    std::fs::create_dir(d.path().join("cifar10")).unwrap();
    let err = data::load("cifar10", d.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::CifarMissing { .. }) && err.to_string().contains("test_batch.bin"), "{err}");
}
