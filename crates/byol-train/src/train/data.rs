//! The training batches: the loader of a run's training split, and BYOL's two views of a batch.

use anyhow::{bail, Context};
use tch::{Device, Tensor};

use byol::Augment;
use byol_data::{BatchLoader, Splits};

use crate::experiment::SyncBatchNorm;
use crate::Experiment;

/// The training batches of `experiment` for process `rank` of `world`: micro-batches of the
/// global batch / accumulate / world, shuffled per epoch, crops cut by the loader when the
/// augmentation asks for them, and a small in-memory split kept on the GPU.
pub fn training_loader(
    experiment: &Experiment,
    splits: &Splits,
    device: Device,
    rank: usize,
    world: usize,
) -> anyhow::Result<BatchLoader> {
    let schedule = &experiment.schedule;
    let accumulate = schedule.accumulate.max(1);
    if schedule.batch_size == 0 || schedule.batch_size > splits.train.len() {
        bail!(
            "schedule.batch_size = {} must be between 1 and the {} training images",
            schedule.batch_size,
            splits.train.len()
        );
    }
    if !schedule.batch_size.is_multiple_of(accumulate * world) {
        bail!(
            "schedule.batch_size = {} (the global batch) is not a multiple of schedule.accumulate = {accumulate} \
             times the {world} processes",
            schedule.batch_size
        );
    }
    let micro_batch = schedule.batch_size / accumulate / world;
    // The projector's and predictor's batch norms (and most backbones') take statistics over
    // the micro-batch, or over every process's when synchronized: of one image they are undefined
    // (a NaN variance; PyTorch refuses such a batch).
    let synchronized = world > 1 && experiment.distributed.sync_batch_norm != SyncBatchNorm::None;
    if micro_batch == 1 && !synchronized {
        bail!(
            "schedule.batch_size = {} over schedule.accumulate = {accumulate} and {world} process(es) is 1 image per \
             batch-norm batch, whose statistics are undefined: make the batch larger or accumulate less",
            schedule.batch_size
        );
    }
    let mut loader = BatchLoader::new(splits.train.clone(), micro_batch, true, true, experiment.run.seed);
    // Rank r takes every world-th micro-batch: together the ranks see exactly the batches a
    // single process with the global batch would see.
    loader.rank = rank;
    loader.world_size = world;
    if let Some(crops) = experiment.augment.loader_crops() {
        if !splits.train.reads_crops() {
            bail!(
                "augment.crop_on = \"loader\" cuts crops from the full image files, which this dataset does not \
                 keep: use dataset type \"image_folder\" with cache = \"none\" or type \"webdataset\", or augment.crop_on = \"device\""
            );
        }
        loader.crops = Some(crops);
    }
    // A small in-memory split (CIFAR) lives on the GPU: batches are gathered there, and the
    // input path costs nothing next to the step. Larger ones stream through pinned memory.
    const ON_DEVICE_LIMIT: usize = 4 << 30;
    let [c, h, w] = splits.train.image_shape();
    if device.is_cuda() && splits.train.len() * c * h * w <= ON_DEVICE_LIMIT {
        loader.keep_on_device(device);
    }
    Ok(loader)
}

/// BYOL's two views of a batch from `loader`: from the crops it cut (`[N, 6, S, S]`, view 1's
/// RGB then view 2's) or from its uint8 images.
pub fn two_views(augment: &dyn Augment, loader: &BatchLoader, images: &Tensor) -> anyhow::Result<(Tensor, Tensor)> {
    if loader.crops.is_some() {
        augment
            .two_views_from_crops(&images.narrow(1, 0, 3), &images.narrow(1, 3, 3))
            .context("the augmentation plugin cannot take crops cut by the loader")
    } else {
        Ok(augment.two_views(images))
    }
}
