//! `byol-run export` and `byol-run embed`: using what a run trained.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use tch::{nn::VarStore, Device, Tensor};

use byol::Byol;
use byol_data::image_folder::decode_square;
use byol_train::checkpoint;
use byol_train::Experiment;

const BACKBONE_PREFIX: &str = "online.backbone.";

/// Writes the online backbone's variables under their torchvision names.
pub fn export(checkpoint_dir: &Path, out: &Path) -> anyhow::Result<()> {
    checkpoint::verify(checkpoint_dir).with_context(|| format!("checking checkpoint {}", checkpoint_dir.display()))?;
    let tensors = checkpoint::read_tensors(checkpoint_dir, checkpoint::MODEL_FILE)?;
    let backbone: Vec<(String, Tensor)> = tensors
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix(BACKBONE_PREFIX).map(|name| (name.to_string(), t)))
        .collect();
    if backbone.is_empty() {
        bail!("{} holds no '{BACKBONE_PREFIX}*' variables", checkpoint_dir.display());
    }
    Tensor::write_safetensors(&backbone, out).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {} backbone tensors to {}", backbone.len(), out.display());
    Ok(())
}

#[derive(Args)]
pub struct EmbedArgs {
    /// A checkpoint folder (runs/<run>/checkpoints/last).
    checkpoint: PathBuf,
    /// Folder of images (searched recursively for .jpg, .jpeg, .png).
    #[arg(long)]
    images: PathBuf,
    /// Output: .safetensors (tensor "embeddings") or .npy; file names go to <out>.names.txt.
    #[arg(long)]
    out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            image_files(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| ["jpg", "jpeg", "png"].iter().any(|x| e.eq_ignore_ascii_case(x)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// A checkpoint's trained networks, ready to embed.
pub struct Trained {
    pub experiment: Experiment,
    pub device: Device,
    pub byol: Byol,
    pub augment: Box<dyn byol::Augment>,
    _vs: VarStore,
}

/// Verifies a checkpoint folder and rebuilds its BYOL networks from the experiment it saved
/// (the online probe, a training-time monitor, is not rebuilt).
pub fn load_trained(dir: &Path) -> anyhow::Result<Trained> {
    let manifest = checkpoint::verify(dir).with_context(|| format!("checking checkpoint {}", dir.display()))?;
    let experiment = Experiment::parse(&manifest.config, &[]).context("reading the checkpoint's experiment")?;
    let device = byol_train::runner::parse_device(&experiment.run.device)?;
    let vs = VarStore::new(device);
    let size = experiment.augment.image_size();
    let byol = Byol::new(
        &vs,
        experiment.backbone.as_ref(),
        size,
        &experiment.byol.embedding_layer,
        &experiment.byol,
    )?;
    let saved: Vec<(String, Tensor)> = checkpoint::read_tensors(dir, checkpoint::MODEL_FILE)?
        .into_iter()
        .filter(|(name, _)| !name.starts_with("probe."))
        .collect();
    byol_train::runner::load_model_state(&vs, &saved).with_context(|| format!("loading {}", dir.display()))?;
    let augment = experiment.augment.build()?;
    Ok(Trained {
        experiment,
        device,
        byol,
        augment,
        _vs: vs,
    })
}

pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    let Trained {
        experiment,
        device,
        byol,
        augment,
        ..
    } = load_trained(&args.checkpoint)?;
    let mut files = Vec::new();
    image_files(&args.images, &mut files)?;
    if files.is_empty() {
        bail!("{} holds no .jpg, .jpeg or .png images", args.images.display());
    }
    let size = experiment.augment.image_size() as u32;
    let mut embeddings = Vec::new();
    for chunk in files.chunks(args.batch.max(1)) {
        let mut pixels = Vec::new();
        for file in chunk {
            pixels.extend(decode_square(file, size)?);
        }
        let images = Tensor::from_slice(&pixels)
            .view([chunk.len() as i64, 3, size as i64, size as i64])
            .to_device(device);
        embeddings.push(byol.embed(&augment.eval_view(&images)).to_device(Device::Cpu));
    }
    let embeddings = Tensor::cat(&embeddings, 0);
    match args.out.extension().and_then(|e| e.to_str()) {
        Some("npy") => embeddings.write_npy(&args.out)?,
        Some("safetensors") => Tensor::write_safetensors(&[("embeddings", &embeddings)], &args.out)?,
        _ => bail!("--out {} must end in .safetensors or .npy", args.out.display()),
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&args.images).unwrap_or(f).display().to_string())
        .collect();
    let names_path = PathBuf::from(format!("{}.names.txt", args.out.display()));
    std::fs::write(&names_path, names.join("\n") + "\n")?;
    println!(
        "embedded {} images ({} dims) into {} (names in {})",
        files.len(),
        embeddings.size()[1],
        args.out.display(),
        names_path.display()
    );
    Ok(())
}
