//! `type = "webdataset"`: shards written by `write_shards` (what `byol-run shard` runs) and by
//! Python's `tarfile` laid out as the `webdataset` package writes them both read with the right
//! images and labels; two processes split every epoch into disjoint halves; a loader that skips
//! the batches already trained on (a resume) gets exactly the remaining ones; bad samples are
//! skipped and counted, damaged shards named.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use byol_data::image_folder::NO_LABEL;
use byol_data::webdataset::{write_shards, WebDatasetConfig};
use byol_data::{BatchLoader, Dataset};
use common::{python, quoted};
use tch::Device;

/// A 12x10 PNG whose red channel is `id` everywhere: any crop or resize of it keeps `id`.
fn write_image(path: &Path, id: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(12, 10, |x, y| image::Rgb([id, (x * 20) as u8, (y * 20) as u8]))
        .save(path)
        .unwrap();
}

fn config(urls: &str, extra: &str) -> WebDatasetConfig {
    toml::from_str(&format!("urls = {urls}\nimage_size = 8\n{extra}\n")).unwrap()
}

/// (red channel, label) of every sample, by index.
fn contents(split: &dyn Dataset) -> Vec<(u8, i64)> {
    let mut out = vec![0u8; 3 * 8 * 8];
    (0..split.len())
        .map(|i| {
            let label = split.read(i, &mut out).unwrap().expect("readable");
            (out[0], label)
        })
        .collect()
}

/// 3 classes x 7 images, ids 1..=21, class folders `c0 c1 c2`.
fn class_folder(root: &Path) {
    for class in 0..3u8 {
        for i in 0..7u8 {
            write_image(&root.join(format!("c{class}/{i}.png")), 1 + class * 7 + i);
        }
    }
}

fn class_of(id: u8) -> i64 {
    ((id - 1) / 7) as i64
}

#[test]
fn shards_written_from_a_class_folder_hold_every_image_with_its_label() {
    let tmp = tempfile::tempdir().unwrap();
    class_folder(&tmp.path().join("images"));
    let pattern = tmp.path().join("shards/train-%06d.tar");
    let written = write_shards(&tmp.path().join("images"), pattern.to_str().unwrap(), 5, Some(0), false).unwrap();
    assert_eq!(written.samples, 21);
    assert_eq!(written.shards.len(), 5, "21 samples, 5 per shard");
    assert_eq!(written.classes, ["c0", "c1", "c2"]);
    let urls = written.urls.clone();
    assert!(urls.ends_with("train-{000000..000004}.tar"), "{urls}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("shards/classes.txt")).unwrap(),
        "c0\nc1\nc2\n"
    );

    let (splits, warnings) = config(&quoted(Path::new(&urls)), "").load().unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let train = splits.train;
    assert_eq!(train.classes(), ["c0", "c1", "c2"]);
    let seen = contents(train.as_ref());
    assert_eq!(seen.len(), 21);
    for &(id, label) in &seen {
        assert_eq!(label, class_of(id), "image {id}");
    }
    let ids: BTreeSet<u8> = seen.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, (1..=21).collect(), "every image once");
    // Shuffled before sharding, so that shards mix the classes.
    assert_ne!(
        seen.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        (1..=21).collect::<Vec<_>>()
    );
    // Each sample's source is named beside the shards, and each member of the shards is the
    // file named there, byte for byte.
    assert_eq!(written.sources, tmp.path().join("shards/train-sources.tsv"));
    let sources = std::fs::read_to_string(&written.sources).unwrap();
    assert_eq!(sources.lines().count(), 21, "{sources}");
    for line in sources.lines() {
        let [key, shard, file] = line.split('\t').collect::<Vec<_>>()[..] else {
            panic!("{line}")
        };
        let member = format!("{key}.png");
        let tar = std::fs::read(tmp.path().join("shards").join(shard)).unwrap();
        let mut reader = byol_data::tar::TarReader::new(std::io::Cursor::new(&tar), tar.len() as u64);
        let found = std::iter::from_fn(|| reader.next_member().unwrap())
            .find(|m| m.name == member)
            .unwrap_or_else(|| panic!("{member} in {shard}"));
        assert_eq!(
            reader.read_member(&found).unwrap(),
            std::fs::read(file).unwrap(),
            "{line}"
        );
    }

    // A second split beside the first shares its classes.txt: the same classes are fine, other
    // ones are refused before any shard is written (each set would read the other's names).
    let split = |name: &str| {
        tmp.path()
            .join(format!("shards/{name}-%06d.tar"))
            .to_str()
            .unwrap()
            .to_string()
    };
    class_folder(&tmp.path().join("val"));
    assert_eq!(
        write_shards(&tmp.path().join("val"), &split("val"), 50, None, false)
            .unwrap()
            .classes
            .len(),
        3
    );
    write_image(&tmp.path().join("other/c3/0.png"), 1);
    class_folder(&tmp.path().join("other"));
    let err = write_shards(&tmp.path().join("other"), &split("other"), 50, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("classes.txt already names other classes (3 of them)") && err.contains("(4)"),
        "{err}"
    );
    assert!(!tmp.path().join("shards/other-000000.tar").exists());
    // A class name that one trimmed line of classes.txt cannot hold.
    write_image(&tmp.path().join("spaced/c0 /0.png"), 1);
    let err = write_shards(&tmp.path().join("spaced"), &split("spaced"), 50, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("class folder \"c0 \"") && err.contains("rename the folder"),
        "{err}"
    );

    // The same shards as a list of paths, and a flat folder as unlabelled shards.
    let list = format!(
        "[{}]",
        written.shards.iter().map(|p| quoted(p)).collect::<Vec<_>>().join(", ")
    );
    let (splits, _) = config(&list, "").load().unwrap();
    assert_eq!(contents(splits.train.as_ref()), seen);

    // Line n of classes.txt names label n: blank lines at its end are nothing, one among the
    // names is refused (dropped, it would shift the names after it).
    let classes = tmp.path().join("shards/classes.txt");
    std::fs::write(&classes, "c0\nc1\nc2\n\n\n").unwrap();
    assert_eq!(config(&list, "").load().unwrap().0.train.classes(), ["c0", "c1", "c2"]);
    std::fs::write(&classes, "c0\n\nc1\nc2\n").unwrap();
    let err = config(&list, "")
        .load()
        .map(|_| ())
        .expect_err("a blank name")
        .to_string();
    assert!(
        err.contains("line 2 of") && err.contains("label 1 has no name"),
        "{err}"
    );
    // An editor's byte-order mark is no part of the first name.
    std::fs::write(&classes, "\u{feff}c0\nc1\nc2\n").unwrap();
    assert_eq!(config(&list, "").load().unwrap().0.train.classes(), ["c0", "c1", "c2"]);
    std::fs::write(&classes, "c0\nc1\nc2\n").unwrap();

    for i in 0..4u8 {
        write_image(&tmp.path().join(format!("flat/{i}.png")), 100 + i);
    }
    let flat = write_shards(
        &tmp.path().join("flat"),
        tmp.path().join("flat-shards/s-%d.tar").to_str().unwrap(),
        3,
        None,
        false,
    )
    .unwrap();
    assert!(flat.classes.is_empty() && flat.shards.len() == 2);
    assert!(!tmp.path().join("flat-shards/classes.txt").exists());
    // Written again under the same pattern: refused, the first set left whole.
    let again = write_shards(
        &tmp.path().join("flat"),
        tmp.path().join("flat-shards/s-%d.tar").to_str().unwrap(),
        4,
        None,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        again.contains("s-0.tar already exists") && again.contains("Remove the old shards"),
        "{again}"
    );
    assert!(flat.shards.iter().all(|s| s.is_file()));
    let (splits, _) = config(&quoted(Path::new(&flat.urls)), "").load().unwrap();
    assert!(!splits.train.is_labelled());
    assert_eq!(
        contents(splits.train.as_ref()),
        [(100, NO_LABEL), (101, NO_LABEL), (102, NO_LABEL), (103, NO_LABEL)],
        "in path order without a seed"
    );

    // `unlabelled`: sub-folders are not classes; every image at any depth, without labels.
    write_image(&tmp.path().join("tree/a/b/0.png"), 110);
    write_image(&tmp.path().join("tree/a/1.png"), 111);
    write_image(&tmp.path().join("tree/2.png"), 112);
    let tree = write_shards(
        &tmp.path().join("tree"),
        tmp.path().join("tree-shards/s-%d.tar").to_str().unwrap(),
        10,
        None,
        true,
    )
    .unwrap();
    assert!(tree.classes.is_empty() && tree.samples == 3, "{:?}", tree.warnings);
    assert!(!tmp.path().join("tree-shards/classes.txt").exists());
    let (splits, _) = config(&quoted(Path::new(&tree.urls)), "").load().unwrap();
    assert_eq!(
        contents(splits.train.as_ref()),
        [(112, NO_LABEL), (111, NO_LABEL), (110, NO_LABEL)]
    );
}

/// Writes shards with Python's `tarfile` exactly as `webdataset.TarWriter` lays samples out:
/// `%06d` keys in order, each sample's members one after the other (`.cls` an ASCII integer,
/// `.jpg` a JPEG from PIL), plus a `.json` member that readers ignore. Sample i has a flat
/// colour with red 10 * i and label i % 3.
const WEBDATASET_LAYOUT: &str = r#"
import io, sys, tarfile, time
from PIL import Image
out = sys.argv[1]
def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = time.time()
    info.mode = 0o444
    info.uname = info.gname = "bigdata"
    tar.addfile(info, io.BytesIO(data))
for shard in range(2):
    with tarfile.open(f"{out}/wds-{shard:06d}.tar", "w") as tar:
        for i in range(shard * 6, shard * 6 + 6):
            key = f"{i:06d}"
            image = io.BytesIO()
            Image.new("RGB", (20, 16), (10 * i, 90, 200)).save(image, format="JPEG", quality=95)
            add(tar, key + ".cls", str(i % 3).encode())
            add(tar, key + ".jpg", image.getvalue())
            add(tar, key + ".json", b'{"note": "ignored"}')
"#;

/// A JPEG named `.jfif` (or `.jpe`, `.jif`) is packed as the `.jpg` member readers look for.
#[test]
fn jpegs_named_jfif_are_packed_as_jpg_members() {
    let tmp = tempfile::tempdir().unwrap();
    class_folder(&tmp.path().join("images"));
    let jpeg = tmp.path().join("images/c0/extra.jfif");
    image::RgbImage::from_pixel(12, 10, image::Rgb([200, 0, 0]))
        .save_with_format(&jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let pattern = tmp.path().join("shards/train-%06d.tar");
    let written = write_shards(&tmp.path().join("images"), pattern.to_str().unwrap(), 50, None, false).unwrap();
    assert_eq!(written.samples, 22);
    let (splits, warnings) = config(&quoted(Path::new(&written.urls)), "").load().unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(splits.train.len(), 22);
}

/// Shards from two folders whose `classes.txt` differ are refused together: label 0 is `c0` in
/// one set and `c1` in the other, so the kNN monitor would file images under the wrong class.
/// Two folders with the same class list are one set.
#[test]
fn shards_from_folders_that_number_their_classes_differently_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    class_folder(&tmp.path().join("a"));
    for class in 1..3u8 {
        for i in 0..7u8 {
            write_image(&tmp.path().join(format!("b/c{class}/{i}.png")), 1 + class * 7 + i);
        }
    }
    let shard = |from: &str, to: &str| {
        let pattern = tmp.path().join(to).join("part-%06d.tar");
        let written = write_shards(&tmp.path().join(from), pattern.to_str().unwrap(), 50, None, false).unwrap();
        quoted(Path::new(&written.urls))
    };
    let (a, b) = (shard("a", "shards-a"), shard("b", "shards-b"));
    let err = config(&format!("[{a}, {b}]"), "").load().unwrap_err().to_string();
    assert!(
        err.contains("shards from two folders number their classes differently")
            && err.contains("shards-a/classes.txt names [c0, c1, c2]")
            && err.contains("shards-b/classes.txt names [c1, c2]"),
        "{err}"
    );
    // Without a class list beside the second set: its labels are numbers, not the same names.
    std::fs::remove_file(tmp.path().join("shards-b/classes.txt")).unwrap();
    let err = config(&format!("[{a}, {b}]"), "").load().unwrap_err().to_string();
    assert!(err.contains("has no classes.txt (labels are numbers)"), "{err}");

    // The same classes in both folders: one set, every label right.
    let c = shard("a", "shards-c");
    let (splits, _) = config(&format!("[{a}, {c}]"), "").load().unwrap();
    assert_eq!(splits.train.classes(), ["c0", "c1", "c2"]);
    let seen = contents(splits.train.as_ref());
    assert_eq!(seen.len(), 42);
    assert!(seen.iter().all(|&(id, label)| label == class_of(id)), "{seen:?}");
}

#[test]
fn shards_written_by_python_tarfile_in_the_webdataset_layout_read_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    python(WEBDATASET_LAYOUT, &[tmp.path()]);
    let urls = tmp.path().join("wds-{000000..000001}.tar");
    let (splits, warnings) = config(&quoted(&urls), "workers = 2").load().unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let train = splits.train;
    assert_eq!(train.len(), 12);
    // No classes.txt: the classes are the label numbers.
    assert_eq!(train.classes(), ["0", "1", "2"]);
    for (i, (red, label)) in contents(train.as_ref()).into_iter().enumerate() {
        assert!((red as i32 - 10 * i as i32).abs() <= 3, "sample {i}: red {red}");
        assert_eq!(label, i as i64 % 3, "sample {i}");
    }

    // A test split without classes.txt either, whose labels stop below the training split's top
    // class, or go past it: both splits take the classes up to the larger top label.
    for (labels, classes) in [
        (&["0", "1"][..], &["0", "1", "2"][..]),
        (&["3"][..], &["0", "1", "2", "3"][..]),
    ] {
        let mut tar = byol_data::tar::TarWriter::new(Vec::new());
        write_image(&tmp.path().join("t.png"), 7);
        let png = std::fs::read(tmp.path().join("t.png")).unwrap();
        for (i, label) in labels.iter().enumerate() {
            tar.append(&format!("{i}.png"), &png).unwrap();
            tar.append(&format!("{i}.cls"), label.as_bytes()).unwrap();
        }
        let test = tmp.path().join(format!("test-{}.tar", labels.len()));
        std::fs::write(&test, tar.finish().unwrap()).unwrap();
        let (splits, _) = config(&quoted(&urls), &format!("test_urls = {}", quoted(&test)))
            .load()
            .unwrap();
        assert_eq!(splits.train.classes(), classes);
        assert_eq!(splits.test.unwrap().classes(), classes);
    }
    // An unlabelled test split is no such case.
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    tar.append("0.png", &std::fs::read(tmp.path().join("t.png")).unwrap())
        .unwrap();
    let unlabelled = tmp.path().join("test-unlabelled.tar");
    std::fs::write(&unlabelled, tar.finish().unwrap()).unwrap();
    let err = config(&quoted(&urls), &format!("test_urls = {}", quoted(&unlabelled)))
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dataset.test_urls holds unlabelled samples (no .cls member)"),
        "{err}"
    );
}

/// A sample with a .png and a .jpg member is read from its .jpg whichever comes first in the
/// shard, and said once for all such samples.
#[test]
fn a_sample_with_two_images_is_read_from_its_jpg_and_said() {
    let tmp = tempfile::tempdir().unwrap();
    let (png, jpg) = (tmp.path().join("a.png"), tmp.path().join("b.jpg"));
    write_image(&png, 40);
    write_image(&jpg, 200);
    let (png, jpg) = (std::fs::read(&png).unwrap(), std::fs::read(&jpg).unwrap());
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    tar.append("0.png", &png).unwrap();
    tar.append("0.jpg", &jpg).unwrap();
    tar.append("1.jpg", &jpg).unwrap();
    tar.append("1.png", &png).unwrap();
    tar.append("2.png", &png).unwrap();
    let shard = tmp.path().join("two.tar");
    std::fs::write(&shard, tar.finish().unwrap()).unwrap();

    let (splits, warnings) = config(&quoted(&shard), "").load().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("2 sample(s) have more than one image member")
            && warnings[0].contains("key 0, with .png, .jpg"),
        "{warnings:?}"
    );
    let red: Vec<u8> = contents_unlabelled(splits.train.as_ref());
    // JPEG rounding moves the red channel a little; 40 and 200 stay far apart.
    assert!(red[0] > 150 && red[1] > 150 && red[2] < 60, "{red:?}");
}

/// A shard of links named like images (`tar` of a folder of linked images, without
/// `--dereference`) holds no image in them: they are left out and said, not read as nothing.
#[test]
fn links_named_like_images_are_left_out_and_said() {
    let tmp = tempfile::tempdir().unwrap();
    write_image(&tmp.path().join("a.png"), 40);
    let script = r#"
import sys, tarfile
with tarfile.open(sys.argv[1] + "/links.tar", "w", format=tarfile.GNU_FORMAT) as tar:
    tar.add(sys.argv[1] + "/a.png", arcname="0.png")
    for kind, name in [(tarfile.SYMTYPE, "1.png"), (tarfile.LNKTYPE, "2.png"), (tarfile.SYMTYPE, "3.txt")]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, "0.png"
        tar.addfile(info)
"#;
    python(script, &[tmp.path()]);
    let (splits, warnings) = config(&quoted(&tmp.path().join("links.tar")), "").load().unwrap();
    assert_eq!(splits.train.len(), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("2 member(s) named like images are links") && warnings[0].contains("member 1.png"),
        "{warnings:?}"
    );
}

/// The red channel of every sample of an unlabelled split, by index.
fn contents_unlabelled(split: &dyn Dataset) -> Vec<u8> {
    let mut out = vec![0u8; 3 * 8 * 8];
    (0..split.len())
        .map(|i| {
            split.read(i, &mut out).unwrap();
            out[0]
        })
        .collect()
}

/// 10 shards of 7 samples (ids 1..=70), unlabelled, written in order.
fn seventy(root: &Path) -> String {
    for i in 1..=70u8 {
        write_image(&root.join(format!("images/{i:02}.png")), i);
    }
    let written = write_shards(
        &root.join("images"),
        root.join("shards/part-%03d.tar").to_str().unwrap(),
        7,
        None,
        false,
    )
    .unwrap();
    quoted(Path::new(&written.urls))
}

/// A shard cut short after the run listed it (copied again, written again): reading a member
/// past its new end says the shard changed since the start, not only "failed to fill buffer".
#[test]
fn a_shard_cut_after_the_start_is_said_to_have_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let urls = seventy(tmp.path());
    let (splits, _) = config(&urls, "").load().unwrap();
    for entry in std::fs::read_dir(tmp.path().join("shards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tar") {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        }
    }
    let l = loader(&splits.train, 0, 1, 1);
    let err = l
        .prefetch(0, 0, Device::Cpu)
        .find_map(|batch| batch.err())
        .expect("a member past a shard's end")
        .to_string();
    assert!(
        err.contains("cannot read member") && err.contains("shorter than when the run listed it"),
        "{err}"
    );
}

fn loader(train: &Arc<dyn Dataset>, rank: usize, world: usize, workers: usize) -> BatchLoader {
    let mut loader = BatchLoader::new(train.clone(), 4, true, true, 11);
    loader.rank = rank;
    loader.world_size = world;
    loader.workers = workers;
    loader
}

/// The red channel (the image id) of every image of every batch of `prefetch(epoch, skip)`.
fn prefetched(loader: &BatchLoader, epoch: u64, skip: usize) -> Vec<Vec<(usize, u8)>> {
    loader
        .prefetch(epoch, skip, Device::Cpu)
        .map(|batch| {
            let batch = batch.unwrap();
            let reds = Vec::<u8>::try_from(batch.images.select(1, 0).select(1, 0).select(1, 0)).unwrap();
            batch.indices.iter().copied().zip(reds).collect()
        })
        .collect()
}

#[test]
fn two_processes_take_disjoint_halves_of_every_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let urls = seventy(tmp.path());
    let (splits, _) = config(&urls, "shuffle_buffer = 10").load().unwrap();
    let train = splits.train;
    let names: Vec<u8> = contents(train.as_ref()).iter().map(|&(id, _)| id).collect();
    for epoch in 0..3 {
        let mut union = BTreeSet::new();
        for rank in 0..2 {
            let l = loader(&train, rank, 2, 2);
            assert_eq!(l.batches_per_epoch(), 35 / 4);
            let stream = train.epoch_stream(11, epoch, rank, 2).unwrap();
            // 35 samples each, read in file order: whole shards, and a part of one at an end.
            assert_eq!(stream.reads.len(), 35);
            let mut order = stream.order.clone();
            order.sort_unstable();
            assert_eq!(order, (0..35).collect::<Vec<_>>(), "a permutation of the run");
            for &i in &stream.reads {
                assert!(union.insert(i), "epoch {epoch}: sample {i} in both processes");
            }
            // What the loader decodes is what the stream names, images included.
            let batches = prefetched(&l, epoch, 0);
            assert_eq!(batches.len(), 8);
            for (batch, indices) in batches.iter().zip(l.epoch_indices(epoch)) {
                assert_eq!(batch.iter().map(|&(i, _)| i).collect::<Vec<_>>(), indices);
                for &(i, red) in batch {
                    assert_eq!(red, names[i], "epoch {epoch} rank {rank} sample {i}");
                }
            }
        }
        assert_eq!(
            union.len(),
            70,
            "epoch {epoch}: together the processes see every sample"
        );
    }
    // The shard order changes with the epoch, and the buffer shuffles within the run.
    let e0 = train.epoch_stream(11, 0, 0, 2).unwrap();
    let e1 = train.epoch_stream(11, 1, 0, 2).unwrap();
    assert_ne!(e0.reads, e1.reads);
    assert_ne!(e0.order, (0..35).collect::<Vec<_>>());
    // One process over an odd split: 70 / 3 = 23 each, one sample waits for another epoch.
    let thirds: usize = (0..3)
        .map(|r| train.epoch_stream(11, 0, r, 3).unwrap().reads.len())
        .sum();
    assert_eq!(thirds, 69);
}

#[test]
fn a_loader_that_skips_trained_batches_reads_the_same_remaining_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let urls = seventy(tmp.path());
    let (splits, _) = config(&urls, "shuffle_buffer = 16").load().unwrap();
    let train = splits.train;
    for workers in [1, 3] {
        let whole = prefetched(&loader(&train, 0, 1, 1), 2, 0);
        assert_eq!(whole.len(), 17);
        // A resume after 5 batches, with another worker count: the same 12 batches follow.
        let resumed = prefetched(&loader(&train, 0, 1, workers), 2, 5);
        assert_eq!(resumed, whole[5..], "workers = {workers}");
    }
    // Stopping early (dropping the iterator) ends the reader thread and the next epoch reads.
    let l = loader(&train, 0, 1, 2);
    let first = l.prefetch(0, 0, Device::Cpu).next().unwrap().unwrap();
    assert_eq!(first.indices.len(), 4);
    assert_eq!(prefetched(&l, 0, 0).len(), 17);
}

#[test]
fn loader_crops_come_from_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let urls = seventy(tmp.path());
    let (splits, _) = config(&urls, "").load().unwrap();
    let mut l = loader(&splits.train, 0, 1, 2);
    let range = byol_data::CropRange {
        scale: (0.08, 1.0),
        ratio: (0.75, 4.0 / 3.0),
    };
    l.crops = Some(byol_data::LoaderCrops {
        views: [range, range],
        size: 6,
    });
    let names: Vec<u8> = contents(splits.train.as_ref()).iter().map(|&(id, _)| id).collect();
    for batch in l.prefetch(0, 0, Device::Cpu) {
        let batch = batch.unwrap();
        assert_eq!(batch.images.size(), [4, 6, 6, 6]);
        for (row, &i) in batch.indices.iter().enumerate() {
            // Both views' red planes hold the image's id everywhere.
            for view in [0, 3] {
                let red = batch.images.get(row as i64).get(view);
                assert_eq!(red.min().int64_value(&[]), names[i] as i64);
                assert_eq!(red.max().int64_value(&[]), names[i] as i64);
            }
        }
    }
}

#[test]
fn bad_samples_are_skipped_and_counted_and_damaged_shards_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    for i in 0..4u8 {
        let png = tmp.path().join(format!("{i}.png"));
        write_image(&png, 50 + i);
        let bytes = if i == 2 {
            b"not an image at all".to_vec()
        } else {
            std::fs::read(&png).unwrap()
        };
        tar.append(&format!("{i:06}.png"), &bytes).unwrap();
    }
    tar.append("000008.cls", b"3").unwrap(); // a label whose image is missing
    tar.append("000009.webp", b"RIFF....WEBP").unwrap();
    let bytes = tar.finish().unwrap();
    let shard = tmp.path().join("bad.tar");
    std::fs::write(&shard, &bytes).unwrap();

    let (splits, warnings) = config(&quoted(&shard), "").load().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("2 sample(s) have no .jpg, .jpeg or .png")
            && warnings[0].contains("key 000008, whose members are .cls)")
            && warnings[0].contains("WebP"),
        "{warnings:?}"
    );
    let train = splits.train;
    assert_eq!(train.len(), 4);
    let mut out = vec![0u8; 3 * 8 * 8];
    assert_eq!(train.read(2, &mut out).unwrap(), None, "skipped");
    let warning = train.take_warning().expect("counted");
    assert!(
        warning.contains("skipped 1 unreadable sample(s) of 4") && warning.contains("000002.png"),
        "{warning}"
    );
    // In a batch the skipped sample repeats another one of the batch.
    let l = BatchLoader::new(train.clone(), 4, true, true, 0);
    let batch = l.prefetch(0, 0, Device::Cpu).next().unwrap().unwrap();
    assert_eq!(batch.images.size()[0], 4);
    // A batch of unreadable samples only takes the next readable sample of the split (000003),
    // read from its shard by position: the epoch's stream does not hold it there.
    for workers in [1, 2] {
        let mut l = BatchLoader::new(train.clone(), 1, true, true, 0);
        l.workers = workers;
        let batches = prefetched(&l, 0, 0);
        assert_eq!(batches.len(), 4);
        for batch in batches {
            let (i, red) = batch[0];
            assert_eq!(red, if i == 2 { 53 } else { 50 + i as u8 }, "workers = {workers}");
        }
    }

    let (strict, _) = config(&quoted(&shard), "on_bad_image = \"error\"").load().unwrap();
    let err = strict.train.read(2, &mut out).unwrap_err().to_string();
    assert!(err.contains("bad.tar") && err.contains("000002.png"), "{err}");

    // A truncated shard and a file that is not a tar are errors that name the file.
    let cut = tmp.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..1500]).unwrap();
    let err = config(&quoted(&cut), "").load().unwrap_err().to_string();
    assert!(err.contains("cut.tar") && err.contains("truncated"), "{err}");
    // Cut exactly between two members, or to nothing: no header is broken, yet samples are lost.
    let end = bytes.len() - 1024;
    for (name, length) in [("short.tar", end - 1024), ("empty.tar", 0)] {
        let short = tmp.path().join(name);
        std::fs::write(&short, &bytes[..length]).unwrap();
        let err = config(&quoted(&short), "").load().unwrap_err().to_string();
        let byte = format!("truncated at byte {length}");
        assert!(
            err.contains(name) && (err.contains(&byte) || length == 0 && err.contains("empty (0 bytes")),
            "{err}"
        );
        assert!(err.contains("copy it again, or write it again"), "{err}");
    }
    // Two adjacent members of one name: the first image would get the second label.
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    let png = std::fs::read(tmp.path().join("0.png")).unwrap();
    for label in ["0", "1"] {
        tar.append("dup.png", &png).unwrap();
        tar.append("dup.cls", label.as_bytes()).unwrap();
    }
    let dup = tmp.path().join("dup.tar");
    std::fs::write(&dup, tar.finish().unwrap()).unwrap();
    let err = config(&quoted(&dup), "").load().unwrap_err().to_string();
    assert!(
        err.contains("dup.tar")
            && err.contains("sample dup: a second member named dup.png")
            && err.contains("unique key"),
        "{err}"
    );
    // A sample's files apart (a.png, b.png, a.cls): read as they stand, a's label would make a
    // second, imageless sample; the shard is refused, naming the stray member and its byte.
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    tar.append("a.png", &png).unwrap();
    tar.append("b.png", &png).unwrap();
    tar.append("a.cls", b"0").unwrap();
    let apart = tmp.path().join("apart.tar");
    std::fs::write(&apart, tar.finish().unwrap()).unwrap();
    let err = config(&quoted(&apart), "").load().unwrap_err().to_string();
    assert!(
        err.contains("apart.tar")
            && err.contains("sample a: a.cls (its data at byte ")
            && err.contains("comes after other samples' files")
            && err.contains("next to each other"),
        "{err}"
    );
    // Two samples of one key, apart (a.png a.cls b.png b.cls a.jpg): not a sample's files
    // apart, which `tar --sort=name` would mend, but a key used twice, which it would halve.
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    for key in ["a", "b"] {
        tar.append(&format!("{key}.png"), &png).unwrap();
        tar.append(&format!("{key}.cls"), b"0").unwrap();
    }
    // (The second sample's image a .jpg: still a key used twice.)
    tar.append("a.jpg", &png).unwrap();
    let twice = tmp.path().join("twice.tar");
    std::fs::write(&twice, tar.finish().unwrap()).unwrap();
    let err = config(&quoted(&twice), "").load().unwrap_err().to_string();
    assert!(
        err.contains("twice.tar")
            && err.contains("sample a: a second member named a.jpg")
            && err.contains("two samples share the key a")
            && !err.contains("--sort=name"),
        "{err}"
    );
    let text = tmp.path().join("text.tar");
    std::fs::write(&text, vec![b'x'; 2048]).unwrap();
    let err = config(&quoted(&text), "").load().unwrap_err().to_string();
    assert!(err.contains("text.tar") && err.contains("not a tar header"), "{err}");
    // A shell glob is not expanded, and said so.
    let err = config(&quoted(&tmp.path().join("*.tar")), "")
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wildcards (*, ?, [...]) are not expanded") && err.contains("brace range"),
        "{err}"
    );
    // A missing shard of a pattern is named with the count.
    let err = config(&quoted(&tmp.path().join("bad-{0..2}.tar")), "")
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 of the 3 shards do not exist") && err.contains("bad-0.tar"),
        "{err}"
    );
    // One left as `.tar.partial` by a `byol-run shard` that was stopped: said, with what to do.
    std::fs::write(tmp.path().join("bad-1.tar.partial"), b"").unwrap();
    let err = config(&quoted(&tmp.path().join("bad-{1..2}.tar")), "")
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad-1.tar.partial is there: a `byol-run shard` stopped")
            && err.contains("run that command again"),
        "{err}"
    );
}

/// Shards that are intact but not what is read are told for what they are: a compressed tar, a
/// folder given as a shard; and test shards beside partly labelled training shards name the
/// count that made the training split unlabelled.
#[test]
fn a_compressed_shard_a_folder_and_partly_labelled_shards_are_told_for_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("0.png");
    write_image(&png, 1);
    let png = std::fs::read(&png).unwrap();
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    for i in 0..3 {
        tar.append(&format!("{i}.png"), &png).unwrap();
        if i > 0 {
            tar.append(&format!("{i}.cls"), b"0").unwrap();
        }
    }
    let bytes = tar.finish().unwrap();
    let shard = tmp.path().join("partly.tar");
    std::fs::write(&shard, &bytes).unwrap();

    // Compressed archives start with their format's magic bytes (gzip's header here, then junk).
    for (name, magic, format) in [
        ("partly.tar.gz", &[0x1f, 0x8b, 0x08, 0x00][..], "gzip"),
        ("partly.tar.xz", &[0xfd, b'7', b'z', b'X', b'Z', 0x00][..], "xz"),
    ] {
        let compressed = tmp.path().join(name);
        std::fs::write(&compressed, [magic, &[7u8; 600][..]].concat()).unwrap();
        let err = config(&quoted(&compressed), "").load().unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains(&format!("a {format}-compressed file, not a tar archive")),
            "{err}"
        );
        assert!(!err.contains("damaged"), "{err}");
    }

    let err = config(&quoted(tmp.path()), "").load().unwrap_err().to_string();
    assert!(err.contains("is a folder; give the shards themselves"), "{err}");

    // A shard named twice is read twice, and told.
    let twice = format!(
        "[{}, {}]",
        quoted(&shard),
        quoted(&tmp.path().join(".").join("partly.tar"))
    );
    let (splits, warnings) = config(&twice, "").load().unwrap();
    assert_eq!(splits.train.len(), 6);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("dataset.urls names 1 file(s) again")),
        "{warnings:?}"
    );

    let test = format!("test_urls = {}", quoted(&shard));
    let err = config(&quoted(&shard), &test).load().unwrap_err().to_string();
    assert!(
        err.contains("needs labelled training shards") && err.contains("only 2 of 3 samples have a .cls label"),
        "{err}"
    );
}

/// Files that do not start as a JPEG or PNG does are left out of the shards with one counted
/// warning, and keys still name each sample's source.
#[test]
fn files_that_are_no_jpeg_or_png_are_left_out_of_the_shards_and_told() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    write_image(&images.join("a.png"), 1);
    write_image(&images.join("b.png"), 2);
    std::fs::write(images.join("empty.jpg"), b"").unwrap();
    std::fs::write(images.join("text.jpg"), "not an image").unwrap();
    std::os::unix::fs::symlink("missing.png", images.join("dangling.png")).unwrap();
    let pattern = tmp.path().join("shards/s-%06d.tar");
    let written = write_shards(&images, pattern.to_str().unwrap(), 10, None, false).unwrap();
    assert_eq!(written.samples, 2);
    let all = written.warnings.join("\n");
    assert!(
        all.contains("3 file(s) named like images cannot be read or are neither JPEG nor PNG")
            && all.contains("dangling.png"),
        "{all}"
    );
    let left: Vec<String> = std::fs::read_dir(tmp.path().join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|name| name.ends_with(".partial")), "{left:?}");
    let sources = std::fs::read_to_string(&written.sources).unwrap();
    assert_eq!(sources.lines().count(), 2, "{sources}");
    assert!(
        sources.contains("a.png") && sources.contains("b.png") && !sources.contains("text.jpg"),
        "{sources}"
    );
    let (splits, warnings) = config(&quoted(&written.shards[0]), "").load().unwrap();
    assert_eq!(splits.train.len(), 2, "{warnings:?}");
}

/// Nothing readable to pack is an error, with no shard left behind; keys number the samples
/// written, so a shard holds `--per-shard` samples whatever was left out before it; a set that
/// would share another's sources file is refused.
#[test]
fn shards_hold_per_shard_samples_and_nothing_to_pack_writes_no_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    for i in 0..5u8 {
        write_image(&images.join(format!("{i}.png")), i);
        std::fs::write(images.join(format!("{i}-bad.png")), b"").unwrap();
    }
    let pattern = tmp.path().join("shards/s-%06d.tar");
    let written = write_shards(&images, pattern.to_str().unwrap(), 2, None, false).unwrap();
    assert_eq!((written.samples, written.shards.len()), (5, 3), "2 + 2 + 1");
    let sources = std::fs::read_to_string(&written.sources).unwrap();
    let keys: Vec<&str> = sources.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(keys, ["000000", "000001", "000002", "000003", "000004"], "{sources}");
    // A set named with another number width would share the sources file: refused.
    let other_width = tmp.path().join("shards/s-%d.tar");
    let err = write_shards(&images, other_width.to_str().unwrap(), 2, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("s-sources.tsv already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&written.sources).unwrap(), sources);
    assert!(!tmp.path().join("shards/s-0.tar").exists());

    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("a.jpg"), "text").unwrap();
    let pattern = tmp.path().join("bad-shards/s-%06d.tar");
    let err = write_shards(&bad, pattern.to_str().unwrap(), 2, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no shard written") && err.contains("a.jpg"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("bad-shards")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Shards that are not what they seem say what they are: an empty path, a pipe (there, but no
/// file to read at offsets), and members whose key holds a dot (`img.0000.jpg` is key `img`).
#[test]
fn an_empty_path_a_pipe_and_dotted_member_names_are_said_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let err = config("\"\"", "").load().unwrap_err().to_string();
    assert!(err.contains("dataset.urls: shard 1 of 1 is an empty path"), "{err}");

    let fifo = tmp.path().join("fifo.tar");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let err = config(&quoted(&fifo), "").load().unwrap_err().to_string();
    assert!(
        err.contains("fifo.tar exists but is not a regular file (a pipe, socket or device"),
        "{err}"
    );

    let png = tmp.path().join("0.png");
    write_image(&png, 60);
    let mut tar = byol_data::tar::TarWriter::new(Vec::new());
    tar.append("img.0000.png", &std::fs::read(&png).unwrap()).unwrap();
    tar.append("img.0000.cls", b"0").unwrap();
    let shard = tmp.path().join("dotted.tar");
    std::fs::write(&shard, tar.finish().unwrap()).unwrap();
    // Its one sample has no image: the shard is refused, and why said.
    let err = config(&quoted(&shard), "").load().unwrap_err().to_string();
    assert!(
        err.contains("hold no samples with a .jpg")
            && err.contains("so img.0000.png is key img with extension .0000.png: name the members <key>.jpg"),
        "{err}"
    );
}
