//! The `cifar` dataset plugin: the official binary format (CIFAR-10 and CIFAR-100 fine labels)
//! read exactly, cross-checked with torchvision reading the same data, and its errors.

mod common;

use std::path::Path;

use byol_data::cifar::{CIFAR100_CLASSES, CIFAR10_CLASSES};
use common::{build, quoted};
use tch::{Kind, Tensor};

/// Pixel value of record `r`, channel `c`, row `y`, column `x` in the hand-made files.
fn pixel(r: usize, c: usize, y: usize, x: usize) -> u8 {
    ((r * 31 + c * 87 + y * 7 + x * 3) % 256) as u8
}

/// `count` records starting at record number `first`: label bytes, then R, G, B planes.
fn records(first: usize, count: usize, labels: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in first..first + count {
        out.extend(labels(r));
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out.push(pixel(r, c, y, x));
                }
            }
        }
    }
    out
}

fn write_cifar10(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..5 {
        let bytes = records(k * per_file, per_file, |r| vec![(r % 10) as u8]);
        std::fs::write(dir.join(format!("data_batch_{}.bin", k + 1)), bytes).unwrap();
    }
    std::fs::write(
        dir.join("test_batch.bin"),
        records(1000, per_file, |r| vec![(r % 10) as u8]),
    )
    .unwrap();
}

fn check_image(images: &Tensor, i: i64, record: usize) {
    for (c, y, x) in [(0, 0, 0), (1, 3, 5), (2, 31, 30), (0, 17, 2)] {
        assert_eq!(
            images.int64_value(&[i, c as i64, y as i64, x as i64]),
            pixel(record, c, y, x) as i64,
            "image {i} (record {record}) at c={c} y={y} x={x}"
        );
    }
}

#[test]
fn reads_cifar10_records_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_cifar10(&dir, 4);
    // The folder that holds cifar-10-batches-bin works as root too.
    for root in [dir.clone(), tmp.path().to_path_buf()] {
        let splits = build(&format!("type = \"cifar\"\nroot = {}\n", quoted(&root))).unwrap();
        let train = splits.train;
        assert_eq!(train.len(), 20);
        assert_eq!(train.image_shape(), [3, 32, 32]);
        assert_eq!(train.classes(), CIFAR10_CLASSES.map(String::from).as_slice());
        let (images, labels) = train.batch(&[0, 7, 19]).unwrap();
        assert_eq!(images.size(), [3, 3, 32, 32]);
        assert_eq!(images.kind(), Kind::Uint8);
        assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [0, 7, 9]);
        check_image(&images, 0, 0);
        check_image(&images, 1, 7);
        check_image(&images, 2, 19);
        let test = splits.test.expect("test split");
        assert_eq!(test.len(), 4);
        let (images, labels) = test.batch(&[2]).unwrap();
        check_image(&images, 0, 1002);
        assert_eq!(labels.int64_value(&[0]), 2);
    }
}

#[test]
fn class_names_come_from_batches_meta_and_test_can_be_off() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), 1);
    let names: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    std::fs::write(tmp.path().join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    let splits = build(&format!(
        "type = \"cifar\"\nvariant = \"cifar10\"\nroot = {}\ntest = false\n",
        quoted(tmp.path())
    ))
    .unwrap();
    assert_eq!(splits.train.classes(), names.as_slice());
    assert!(splits.test.is_none());

    std::fs::write(tmp.path().join("batches.meta.txt"), "a\nb\n").unwrap();
    let err = build(&format!("type = \"cifar\"\nroot = {}\n", quoted(tmp.path())))
        .unwrap_err()
        .to_string();
    assert!(err.contains("batches.meta.txt names 2 classes"), "{err}");

    // Without its test file, the release's test split is said missing, with the key that goes
    // without it.
    std::fs::remove_file(tmp.path().join("batches.meta.txt")).unwrap();
    std::fs::remove_file(tmp.path().join("test_batch.bin")).unwrap();
    let err = build(&format!("type = \"cifar\"\nroot = {}\n", quoted(tmp.path())))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has its training files but no test_batch.bin") && err.contains("dataset.test = false"),
        "{err}"
    );
}

#[test]
fn reads_cifar100_fine_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    // Coarse label 19 - r % 20, fine label r % 100: the fine one must be used.
    let labels = |r: usize| vec![(19 - r % 20) as u8, (r % 100) as u8];
    std::fs::write(dir.join("train.bin"), records(0, 6, labels)).unwrap();
    std::fs::write(dir.join("test.bin"), records(95, 3, labels)).unwrap();
    let splits = build(&format!(
        "type = \"cifar\"\nvariant = \"cifar100\"\nroot = {}\n",
        quoted(tmp.path())
    ))
    .unwrap();
    assert_eq!(splits.train.len(), 6);
    assert_eq!(splits.train.classes().len(), 100);
    assert_eq!(splits.train.classes()[99], "worm");
    assert_eq!(splits.train.classes(), CIFAR100_CLASSES.map(String::from).as_slice());
    let (images, labels) = splits.train.batch(&[5, 1]).unwrap();
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [5, 1]);
    check_image(&images, 0, 5);
    check_image(&images, 1, 1);
    let test = splits.test.unwrap();
    let (images, labels) = test.batch(&[0, 1, 2]).unwrap();
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [95, 96, 97]);
    check_image(&images, 2, 97);
}

/// Python writes random images and labels in both official formats from the same arrays: the
/// binary release (what we read) and the Python pickles (what torchvision reads). torchvision's
/// HWC arrays and targets must equal ours.
#[test]
fn matches_torchvision_on_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
import os, pickle, numpy as np, torchvision
root = {root:?}
rng = np.random.default_rng(0)
def write(variant, files, n):
    binary = os.path.join(root, variant, "cifar-10-batches-bin" if variant == "c10" else "cifar-100-binary")
    py = os.path.join(root, variant, "cifar-10-batches-py" if variant == "c10" else "cifar-100-python")
    os.makedirs(binary); os.makedirs(py)
    for f in files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        if variant == "c10":
            labels = rng.integers(0, 10, size=n)
            rows = np.concatenate([labels[:, None].astype(np.uint8), data], 1)
            pickle.dump({{"data": data, "labels": labels.tolist()}}, open(os.path.join(py, f), "wb"))
            rows.tofile(os.path.join(binary, f + ".bin"))
        else:
            coarse = rng.integers(0, 20, size=n); fine = rng.integers(0, 100, size=n)
            rows = np.concatenate([coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), data], 1)
            pickle.dump({{"data": data, "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()}}, open(os.path.join(py, f), "wb"))
            rows.tofile(os.path.join(binary, f + ".bin"))
    return py
py = write("c10", ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"], 7)
pickle.dump({{"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}}, open(os.path.join(py, "batches.meta"), "wb"))
py = write("c100", ["train", "test"], 9)
pickle.dump({{"fine_label_names": ["c%d" % i for i in range(100)]}}, open(os.path.join(py, "meta"), "wb"))
# torchvision checks the official MD5 sums; these files are ours, so only existence is checked.
class C10(torchvision.datasets.CIFAR10):
    train_list = [[f, None] for f, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[f, None] for f, _ in torchvision.datasets.CIFAR10.test_list]
    meta = dict(torchvision.datasets.CIFAR10.meta, md5=None)
class C100(torchvision.datasets.CIFAR100):
    train_list = [[f, None] for f, _ in torchvision.datasets.CIFAR100.train_list]
    test_list = [[f, None] for f, _ in torchvision.datasets.CIFAR100.test_list]
    meta = dict(torchvision.datasets.CIFAR100.meta, md5=None)
for name, cls in [("c10", C10), ("c100", C100)]:
    for train in [True, False]:
        ds = cls(os.path.join(root, name), train=train)
        key = name + ("_train" if train else "_test")
        outputs[key + "_images"] = torch.from_numpy(ds.data.copy())
        outputs[key + "_labels"] = torch.tensor(ds.targets, dtype=torch.int64)
"#,
        root = tmp.path().display().to_string()
    );
    let theirs = byol_testkit::run_python(&script, &[]);
    for (name, variant, folder) in [
        ("c10", "cifar10", "cifar-10-batches-bin"),
        ("c100", "cifar100", "cifar-100-binary"),
    ] {
        let splits = build(&format!(
            "type = \"cifar\"\nvariant = \"{variant}\"\nroot = {}\n",
            quoted(&tmp.path().join(name).join(folder))
        ))
        .unwrap();
        for (split, data) in [("train", &splits.train), ("test", splits.test.as_ref().unwrap())] {
            let all: Vec<usize> = (0..data.len()).collect();
            let (images, labels) = data.batch(&all).unwrap();
            let key = format!("{name}_{split}");
            let tv_images = &theirs[&format!("{key}_images")];
            let tv_labels = &theirs[&format!("{key}_labels")];
            assert_eq!(images.permute([0, 2, 3, 1]).size(), tv_images.size(), "{key}");
            assert!(
                images.permute([0, 2, 3, 1]).equal(tv_images),
                "{key}: images differ from torchvision's"
            );
            assert!(labels.equal(tv_labels), "{key}: labels differ from torchvision's");
        }
    }
}

fn error_of(toml_text: &str) -> String {
    build(toml_text).unwrap_err().to_string()
}

#[test]
fn missing_release_names_the_key_and_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let err = error_of(&format!(
        "type = \"cifar\"\nroot = {}\n",
        quoted(&tmp.path().join("nope"))
    ));
    assert!(err.contains("dataset.root"), "{err}");
    assert!(err.contains("data_batch_1.bin"), "{err}");
    assert!(err.contains("cifar-10-binary.tar.gz"), "{err}");

    // The Python release where the binary one is expected.
    std::fs::write(tmp.path().join("data_batch_1"), b"pickle").unwrap();
    let err = error_of(&format!("type = \"cifar\"\nroot = {}\n", quoted(tmp.path())));
    assert!(err.contains("Python (pickle) release"), "{err}");
}

#[test]
fn the_other_variant_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.bin"), records(0, 2, |_| vec![0, 0])).unwrap();
    let err = error_of(&format!("type = \"cifar\"\nroot = {}\n", quoted(tmp.path())));
    assert!(err.contains("dataset.variant = \"cifar100\""), "{err}");
}

#[test]
fn damaged_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), 2);
    // A truncated batch.
    let path = tmp.path().join("data_batch_3.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = error_of(&format!("type = \"cifar\"\nroot = {}\n", quoted(tmp.path())));
    assert!(err.contains("data_batch_3.bin"), "{err}");
    assert!(err.contains("3073-byte CIFAR-10 records"), "{err}");
    // An empty one.
    std::fs::write(&path, b"").unwrap();
    let err = error_of(&format!("type = \"cifar\"\nroot = {}\n", quoted(tmp.path())));
    assert!(
        err.contains("data_batch_3.bin") && err.contains("the file is empty, not a CIFAR-10 batch"),
        "{err}"
    );

    // A label beyond the classes.
    write_cifar10(tmp.path(), 2);
    let mut bytes = std::fs::read(tmp.path().join("test_batch.bin")).unwrap();
    bytes[3073] = 12;
    std::fs::write(tmp.path().join("test_batch.bin"), bytes).unwrap();
    let err = error_of(&format!("type = \"cifar\"\nroot = {}\n", quoted(tmp.path())));
    assert!(err.contains("test_batch.bin"), "{err}");
    // Counted from 1, as a reader counts; the offset is where the record starts.
    assert!(err.contains("record 2 (at byte offset 3073) has label 12"), "{err}");
}
