//! Data loaders on files the tests write: CIFAR-10 batches, IDX files plain and gzipped, and
//! broken files, each rejected with an error naming the file and the problem.

use std::io::Write;
use std::path::{Path, PathBuf};

use qatc::data;
use qatc::syntax::ast::DataSource;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qatc-data-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn cifar_records(n: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for r in 0..n {
        out.push(((r + seed as usize) % 10) as u8);
        out.extend((0..3072).map(|i| ((i + r) % 251) as u8));
    }
    out
}

#[test]
fn cifar10_batches_load() {
    let dir = temp_dir("cifar");
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), cifar_records(3, i)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_records(4, 0)).unwrap();
    let splits = data::load(
        &DataSource::Cifar10 {
            dir: dir.display().to_string(),
        },
        Path::new("."),
    )
    .unwrap();
    assert_eq!(splits.train.len(), 15);
    assert_eq!(splits.test.len(), 4);
    assert_eq!(splits.train.shape, [3, 32, 32]);
    assert_eq!(splits.train.labels[..3], [1, 2, 3]);
    assert_eq!(splits.train.image(1)[..2], [1, 2]);

    // A truncated batch and a label out of range are named.
    let mut short = cifar_records(2, 0);
    short.truncate(5000);
    std::fs::write(dir.join("data_batch_3.bin"), short).unwrap();
    let err = data::load(
        &DataSource::Cifar10 {
            dir: dir.display().to_string(),
        },
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        err.contains("data_batch_3.bin") && err.contains("whole number of CIFAR-10 records"),
        "{err}"
    );
    let mut bad = cifar_records(2, 0);
    bad[3073] = 12;
    std::fs::write(dir.join("data_batch_3.bin"), bad).unwrap();
    let err = data::load(
        &DataSource::Cifar10 {
            dir: dir.display().to_string(),
        },
        Path::new("."),
    )
    .unwrap_err();
    assert!(err.contains("record 1 has label 12"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn idx_files_plain_and_gzipped() {
    let dir = temp_dir("idx");
    let images: Vec<u8> = (0..5 * 4 * 3).map(|i| i as u8).collect();
    std::fs::write(dir.join("img"), idx_bytes(&[5, 4, 3], &images)).unwrap();
    std::fs::write(dir.join("lab.gz"), gzip(&idx_bytes(&[5], &[0, 1, 2, 1, 0]))).unwrap();
    let set = data::load_idx_pair(&dir.join("img"), &dir.join("lab.gz")).unwrap();
    assert_eq!((set.len(), set.shape, set.classes()), (5, [1, 4, 3], 3));
    assert_eq!(set.image(2)[0], 24);

    // Without test files, the last 10 % is held out.
    let source = DataSource::Idx {
        images: "img".into(),
        labels: "lab.gz".into(),
        test_images: None,
        test_labels: None,
    };
    let splits = data::load(&source, &dir).unwrap();
    assert!(splits.held_out);
    assert_eq!((splits.train.len(), splits.test.len()), (4, 1));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn broken_idx_files_are_named_and_explained() {
    let dir = temp_dir("broken");
    let good_images = idx_bytes(&[2, 2, 2], &[0; 8]);
    let good_labels = idx_bytes(&[2], &[0, 1]);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "magic",
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            good_labels.clone(),
            "bad magic",
        ),
        (
            "truncated",
            good_images[..10].to_vec(),
            good_labels.clone(),
            "truncated",
        ),
        (
            "short",
            idx_bytes(&[3, 2, 2], &[0; 8]),
            good_labels.clone(),
            "truncated",
        ),
        (
            "long",
            idx_bytes(&[2, 2, 2], &[0; 9]),
            good_labels.clone(),
            "after the",
        ),
        (
            "count",
            good_images.clone(),
            idx_bytes(&[3], &[0, 1, 2]),
            "has 3 labels but",
        ),
        (
            "dims",
            idx_bytes(&[2, 4], &[0; 8]),
            good_labels.clone(),
            "has 2 dimensions, expected 3",
        ),
        (
            "huge",
            idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[0; 8]),
            good_labels.clone(),
            "overflow",
        ),
        ("empty", Vec::new(), good_labels.clone(), "too short"),
    ];
    for (name, images, labels, expected) in cases {
        let (ip, lp) = (
            dir.join(format!("{name}-images")),
            dir.join(format!("{name}-labels")),
        );
        std::fs::write(&ip, images).unwrap();
        std::fs::write(&lp, labels).unwrap();
        let err = data::load_idx_pair(&ip, &lp).unwrap_err();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: the message names the file: {err}"
        );
    }
    std::fs::write(dir.join("notgz.gz"), b"plain text").unwrap();
    let err = data::load_idx_pair(&dir.join("notgz.gz"), &dir.join("count-labels")).unwrap_err();
    assert!(err.contains("notgz.gz") && err.contains("gzip"), "{err}");
    let err = data::load(
        &DataSource::Mnist {
            dir: "no/such/dir".into(),
        },
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        err.contains("MNIST file `train-images-idx3-ubyte` missing: tried")
            && err.matches("no/such/dir").count() == 2,
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn shipped_mnist_matches_its_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let splits = data::load(
        &DataSource::Mnist {
            dir: "data/mnist10k".into(),
        },
        root,
    )
    .unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (8000, 2000));
    assert_eq!(splits.train.shape, [1, 28, 28]);
    let mut counts = [0; 10];
    for &l in &splits.test.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [219, 217, 193, 211, 228, 157, 188, 197, 192, 198]);
}
