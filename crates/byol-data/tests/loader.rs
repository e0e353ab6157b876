//! The batch loader: the prefetching worker threads deliver exactly the batches of
//! `epoch_indices` + `load`, whatever the worker count and look-ahead, shuffled per epoch, with
//! `skip`, `drop_last` and rank sharding; errors end the iteration; early drops stop the workers;
//! pinned CUDA copies where a GPU exists.

mod common;

use std::path::Path;
use std::sync::Arc;

use byol_data::{BatchLoader, Dataset};
use common::{build, quoted};
use tch::{Device, Tensor};

/// `classes` x `per_class` small JPEG/PNG files of varied sizes, plus two unreadable ones.
fn folder(root: &Path, classes: usize, per_class: usize) {
    for c in 0..classes {
        for i in 0..per_class {
            let (w, h) = (9 + (i as u32 * 7) % 23, 8 + (c as u32 * 5 + i as u32) % 17);
            let image = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 20) as u8, (y * 15 + c as u32 * 40) as u8, (i * 9) as u8])
            });
            let ext = if (c + i) % 3 == 0 { "jpg" } else { "png" };
            let path = root.join(format!("class{c}")).join(format!("{i:03}.{ext}"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image.save(path).unwrap();
        }
    }
    std::fs::write(root.join("class0/500-bad.jpg"), b"\xff\xd8\xff not a jpeg").unwrap();
    std::fs::write(root.join("class1/500-bad.png"), b"").unwrap();
}

fn streaming(root: &Path, extra: &str) -> Arc<dyn Dataset> {
    build(&format!(
        "type = \"image_folder\"\ntrain = {}\nimage_size = 12\ncache = \"none\"\n{extra}\n",
        quoted(root)
    ))
    .unwrap()
    .train
}

/// Every batch of `prefetch(epoch, skip)` as (indices, images, labels) on the CPU.
fn prefetched(loader: &BatchLoader, epoch: u64, skip: usize) -> Vec<(Vec<usize>, Tensor, Tensor)> {
    loader
        .prefetch(epoch, skip, Device::Cpu)
        .map(|b| {
            let b = b.unwrap();
            (b.indices, b.images, b.labels)
        })
        .collect()
}

fn loaded(loader: &BatchLoader, epoch: u64) -> Vec<(Vec<usize>, Tensor, Tensor)> {
    loader
        .epoch_indices(epoch)
        .into_iter()
        .map(|indices| {
            let (images, labels) = loader.load(&indices, Device::Cpu).unwrap();
            (indices, images, labels)
        })
        .collect()
}

fn assert_same(a: &[(Vec<usize>, Tensor, Tensor)], b: &[(Vec<usize>, Tensor, Tensor)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: batch count");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.0, y.0, "{what}: indices of batch {k}");
        assert_eq!(x.1.size(), y.1.size(), "{what}: shape of batch {k}");
        assert!(x.1.equal(&y.1), "{what}: images of batch {k}");
        assert!(x.2.equal(&y.2), "{what}: labels of batch {k}");
    }
}

#[test]
fn prefetch_gives_the_same_batches_whatever_the_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path(), 4, 13);
    let dataset = streaming(tmp.path(), "");
    assert_eq!(dataset.len(), 54);
    let mut loader = BatchLoader::new(dataset, 8, true, false, 17);
    let reference = loaded(&loader, 0);
    assert_eq!(reference.len(), 7, "54 images in batches of 8, last one short");
    assert_eq!(reference[6].0.len(), 6);
    for (workers, ahead) in [(1, 1), (2, 3), (3, 1), (7, 2), (0, 4)] {
        loader.workers = workers;
        loader.batches_ahead = ahead;
        assert_same(
            &prefetched(&loader, 0, 0),
            &reference,
            &format!("{workers} workers, {ahead} ahead"),
        );
    }
    // Shuffled per epoch, the same way every time.
    let epoch1 = prefetched(&loader, 1, 0);
    assert_ne!(epoch1[0].0, reference[0].0, "epoch 1 has another order");
    assert_same(&epoch1, &loaded(&loader, 1), "epoch 1");
    // skip: the tail of the epoch, for resuming mid-epoch.
    assert_same(&prefetched(&loader, 1, 4), &epoch1[4..], "skip 4");
    assert!(prefetched(&loader, 1, 99).is_empty());
    // The bad images were met: one warning remains to print, counted once.
    assert!(
        loader.dataset().take_warning().is_none(),
        "printed at the end of the epoch"
    );
}

#[test]
fn prefetch_on_real_cifar_jpegs_is_worker_independent() {
    let Some(root) = common::cifar10_jpeg("prefetch_on_real_cifar_jpegs_is_worker_independent") else {
        return;
    };
    let dataset = build(&format!(
        "type = \"image_folder\"\ntrain = {}\nimage_size = 32\ncache = \"none\"\nlimit_per_class = 40\n",
        quoted(&root.join("train"))
    ))
    .unwrap()
    .train;
    let mut loader = BatchLoader::new(dataset, 64, true, true, 3);
    loader.workers = 1;
    let one = prefetched(&loader, 2, 0);
    assert_eq!(one.len(), 6, "400 images, batches of 64, drop_last");
    loader.workers = 4;
    assert_same(&prefetched(&loader, 2, 0), &one, "4 workers vs 1");
    assert_same(&loaded(&loader, 2), &one, "load vs prefetch");
}

#[test]
fn drop_last_and_rank_sharding() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path(), 3, 10);
    let dataset = streaming(tmp.path(), "workers = 2");
    assert_eq!(dataset.len(), 32);
    let mut loader = BatchLoader::new(dataset, 5, true, true, 0);
    assert_eq!(loader.batches_per_epoch(), 6);
    let all = prefetched(&loader, 0, 0);
    assert!(all.iter().all(|b| b.0.len() == 5), "drop_last");
    loader.world_size = 2;
    let mut shards = Vec::new();
    for rank in 0..2 {
        loader.rank = rank;
        assert_eq!(loader.batches_per_epoch(), 3);
        let mine = prefetched(&loader, 0, 0);
        assert_eq!(mine.len(), 3);
        assert_same(&mine, &loaded(&loader, 0), &format!("rank {rank}"));
        shards.push(mine);
    }
    // Rank r takes batches r, r + 2, ...: together they are the whole epoch.
    for (k, batch) in all.iter().enumerate() {
        assert_eq!(batch.0, shards[k % 2][k / 2].0);
    }
}

#[test]
fn device_resident_batches_equal_the_workers_batches() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path(), 3, 9);
    let in_memory = build(&format!(
        "type = \"image_folder\"\ntrain = {}\nimage_size = 12\ncache = \"memory\"\n",
        quoted(tmp.path())
    ))
    .unwrap()
    .train;
    let workers = BatchLoader::new(in_memory, 4, true, true, 5);
    let mut resident = workers.clone();
    assert!(resident.keep_on_device(Device::Cpu));
    assert!(resident.is_on_device() && !workers.is_on_device());
    for epoch in [0, 3] {
        assert_same(
            &prefetched(&resident, epoch, 1),
            &prefetched(&workers, epoch, 1),
            "resident vs workers",
        );
    }
    // Datasets that decode files stay with the workers.
    let mut files = BatchLoader::new(streaming(tmp.path(), ""), 4, true, true, 5);
    assert!(!files.keep_on_device(Device::Cpu));
}

#[test]
fn in_memory_datasets_prefetch_too() {
    let splits = build("type = \"synthetic\"\ntrain_size = 50\ntest_size = 0\nimage_size = 8\n").unwrap();
    let mut loader = BatchLoader::new(splits.train, 16, true, true, 5);
    assert_eq!(loader.workers, 1);
    let reference = loaded(&loader, 3);
    loader.workers = 3;
    assert_same(&prefetched(&loader, 3, 0), &reference, "synthetic");
}

#[test]
fn an_error_ends_the_iteration_and_early_drop_stops_the_workers() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path(), 2, 6);
    // (The empty one is refused before any batch: the listing knows it.)
    std::fs::remove_file(tmp.path().join("class1/500-bad.png")).unwrap();
    let dataset = streaming(tmp.path(), "on_bad_image = \"error\"\nworkers = 3");
    let loader = BatchLoader::new(dataset, 4, false, false, 0);
    // Sequential: class0/000..005, class0/500-bad.jpg (index 6) is in batch 1.
    let results: Vec<_> = loader.prefetch(0, 0, Device::Cpu).collect();
    assert_eq!(results.len(), 2, "batch 0, then the error, then nothing");
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("500-bad.jpg"), "{err}");

    // Taking one batch and dropping the iterator returns promptly (workers joined).
    let loader = BatchLoader::new(streaming(tmp.path(), ""), 2, true, false, 0);
    let mut it = loader.prefetch(0, 0, Device::Cpu);
    assert!(it.next().unwrap().is_ok());
    drop(it);
}

/// CUDA only: batches arrive on the GPU equal to the CPU ones (through pinned memory).
#[test]
fn prefetch_to_cuda_matches_cpu() {
    if !tch::Cuda::is_available() {
        eprintln!("SKIPPED prefetch_to_cuda_matches_cpu: no CUDA device");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path(), 2, 9);
    let loader = BatchLoader::new(streaming(tmp.path(), "workers = 2"), 4, true, false, 1);
    let cpu = prefetched(&loader, 0, 0);
    let gpu: Vec<_> = loader.prefetch(0, 0, Device::Cuda(0)).map(Result::unwrap).collect();
    assert_eq!(cpu.len(), gpu.len());
    for (c, g) in cpu.iter().zip(&gpu) {
        assert_eq!(g.images.device(), Device::Cuda(0));
        assert_eq!(c.0, g.indices);
        assert!(c.1.equal(&g.images.to_device(Device::Cpu)));
        assert!(c.2.equal(&g.labels.to_device(Device::Cpu)));
    }
}
