//! `byol-run eval knn|linear`: the field's two protocols on a trained checkpoint, offline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use byol_data::image_folder::{is_hidden, ImageFolderConfig, OnBadImage, Wording};
use byol_data::Dataset;
use byol_train::knn::knn_accuracy;
use byol_train::linear::{linear_probe, VALIDATION_FRACTION};
use byol_train::run_dir::CONFIG_FILE;
use byol_train::train::embed_split;
use byol_train::Experiment;

use crate::embed::{load_trained, run_folder_of, Trained};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Weighted kNN of test features against train features, with the run's own k and
    /// temperature unless flags give them.
    Knn {
        #[command(flatten)]
        data: EvalData,
        /// Neighbours [default: the run's eval.knn_k, from its config.toml, else from the
        /// experiment saved in the checkpoint].
        #[arg(long, value_parser = at_least_one)]
        k: Option<usize>,
        /// Temperature of the similarity weights [default: the run's eval.knn_temperature, found
        /// as k is].
        #[arg(long, value_parser = positive, allow_negative_numbers = true)]
        temperature: Option<f64>,
    },
    /// Linear classifier on frozen, cached features: SGD, Nesterov 0.9, no weight decay, cosine
    /// lr. The lr is chosen on a validation split (10% of each class of --train, seeded), then a
    /// classifier trained with it on all of --train is scored once on --test. JSON on stdout: the
    /// chosen lr, the validation top-1 per lr ("sweep") and the test top-1/top-5.
    Linear {
        #[command(flatten)]
        data: EvalData,
        /// Passes over the cached features, for each lr tried and for the final classifier.
        #[arg(long, default_value_t = 30, value_parser = at_least_one)]
        epochs: usize,
        /// Learning rates to try, separated by commas; the validation split chooses one.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0.01,0.03,0.1,0.3",
            value_parser = positive,
            allow_hyphen_values = true
        )]
        lrs: Vec<f64>,
    },
}

/// A count of at least 1 (k neighbours, epochs): 0 would score nothing or an untrained model.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// A finite number above 0 (a temperature, a learning rate).
fn positive(text: &str) -> Result<f64, String> {
    if text.starts_with("--") {
        return Err(format!("a value is missing (found the flag {text})"));
    }
    match text.parse::<f64>() {
        // Above float32's largest, the classifier's update could not hold it.
        Ok(x) if x > 0.0 && x <= f32::MAX as f64 => Ok(x),
        _ => Err(format!(
            "{text:?} is not a number above 0 (and within float32's 3.4e38)"
        )),
    }
}

#[derive(Args)]
pub struct EvalData {
    /// A checkpoint folder (runs/<run>/checkpoints/last), or a run folder (runs/<run>: its newest
    /// intact checkpoint).
    checkpoint: PathBuf,
    /// Labelled training images: <train>/<class>/<image>.
    #[arg(long)]
    train: PathBuf,
    /// Labelled test images, same classes.
    #[arg(long)]
    test: PathBuf,
    /// Use at most this many images per class (0: all).
    #[arg(long, default_value_t = 0)]
    limit_per_class: usize,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the network runs: cpu, cuda, cuda:N or auto (default: the run's run.device, or the
    /// CPU when that device is not on this machine).
    #[arg(long)]
    device: Option<String>,
    /// Stop at the first unreadable image instead of skipping it with a counted warning (the
    /// result's `skipped_images` counts those skipped, and `skipped` names them).
    #[arg(long)]
    strict: bool,
}

struct Features {
    train: (tch::Tensor, tch::Tensor),
    test: (tch::Tensor, tch::Tensor),
    classes: i64,
    /// The checkpoint they were computed with, and the experiment saved in it.
    checkpoint: PathBuf,
    experiment: Experiment,
    /// The unreadable images left out, `<split>\t<image>: <why>`.
    skipped: Vec<String>,
}

fn features(data: &EvalData) -> anyhow::Result<Features> {
    let Trained {
        checkpoint,
        experiment,
        device,
        model,
        augment,
        ..
    } = load_trained(&data.checkpoint, data.device.as_deref())?;
    check_labelled_folder("--train", &data.train)?;
    check_labelled_folder("--test", &data.test)?;
    let folder = ImageFolderConfig {
        train: data.train.clone(),
        test: Some(data.test.clone()),
        image_size: crate::embed::evaluation_decode_size(&experiment),
        limit_per_class: data.limit_per_class,
        on_bad_image: if data.strict {
            OnBadImage::Error
        } else {
            OnBadImage::Skip
        },
        ..Default::default()
    };
    let wording = Wording {
        on_bad_image: Some(("pass --strict".into(), "leave out --strict".into())),
        ..Wording::flags("evaluate on them")
    };
    let (splits, warnings) = folder
        .load_worded(&wording)
        .map_err(|e| anyhow::anyhow!(e.message()))
        .context("reading the evaluation images")?;
    for w in warnings {
        byol::eprint_line!("warning: {w}");
    }
    let test: Arc<dyn Dataset> = splits.test.clone().expect("test split requested");
    if let Some(shared) =
        byol_train::shared_images::shared_images(splits.train.as_ref(), test.as_ref()).filter(|s| s.images > 0)
    {
        byol::eprint_line!(
            "warning: {} --test images are among the --train images (the same files, or copies of the same name, \
             size and bytes): the accuracy partly measures recall of --train images, not generalization; give \
             held-out images as --test",
            shared.describe()
        );
    }
    let schedule = &experiment.schedule;
    let batch = experiment
        .eval
        .feature_batch(schedule.batch_size / schedule.accumulate.max(1));
    let train = embed_split(&model.byol, augment.as_ref(), &splits.train, batch, device)?;
    // The folders were counted before reading; a class whose folder is empty or whose images are
    // all unreadable leaves the others, maybe one.
    let labels = Vec::<i64>::try_from(train.1.to_device(tch::Device::Cpu))?;
    let readable: std::collections::BTreeSet<i64> = labels.into_iter().collect();
    if let [only] = readable.iter().copied().collect::<Vec<_>>()[..] {
        bail!(
            "--train {}: only class {} has readable images (the other class folders are empty or their images \
             unreadable, as warned above), and an accuracy over one class measures nothing; give it images of \
             two classes or more",
            data.train.display(),
            splits.train.classes()[only as usize]
        );
    }
    let test_features = embed_split(&model.byol, augment.as_ref(), &test, batch, device)?;
    let skipped = [("train", &splits.train), ("test", &test)]
        .into_iter()
        .flat_map(|(split, data)| data.skipped().into_iter().map(move |s| format!("{split}\t{s}")))
        .collect();
    Ok(Features {
        train,
        test: test_features,
        classes: splits.train.classes().len() as i64,
        checkpoint,
        experiment,
        skipped,
    })
}

/// `--train` and `--test` must be folders of class sub-folders. Checked here so that the common
/// mistakes are told in this command's terms: the image folder reader would read a folder
/// without class sub-folders as unlabelled training images.
fn check_labelled_folder(flag: &str, dir: &Path) -> anyhow::Result<()> {
    let layout = "one sub-folder of images per class (<folder>/<class>/<image>)";
    if !dir.is_dir() {
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        bail!(
            "{flag} {}: this folder does not exist (relative paths start from the working directory {cwd}); \
             it should hold {layout}",
            dir.display()
        );
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("{flag} {}: cannot list it", dir.display()))?;
    let classes: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    match classes.as_slice() {
        [] => bail!(
            "{flag} {}: no class sub-folders; evaluation needs labelled images, {layout}",
            dir.display()
        ),
        // Said before the test folder is compared with it, which would blame the test folder.
        [only] if flag == "--train" => bail!(
            "--train {}: its images are of one class ({}), and an accuracy over one class is 100% whatever \
             the features; give it a folder of two class sub-folders or more",
            dir.display(),
            byol_data::name_text(only.file_name().unwrap_or_default())
        ),
        _ => Ok(()),
    }
}

/// The kNN k and temperature of the run a checkpoint belongs to, and where they were read: the
/// run folder's config.toml (what its kNN monitor used last; these keys may change on resume),
/// else the experiment saved in the checkpoint (a checkpoint copied out of its run folder).
fn run_knn_settings(checkpoint: &Path, saved: &Experiment) -> (usize, f64, String) {
    if let Some(run) = run_folder_of(checkpoint) {
        let path = run.join(CONFIG_FILE);
        let parsed = std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|text| Experiment::parse(&text, &[]));
        match parsed {
            Ok(run) => return (run.eval.knn_k, run.eval.knn_temperature, path.display().to_string()),
            Err(e) => byol::eprint_line!(
                "warning: cannot read the kNN settings of {}: {e:#}; using those saved in the checkpoint",
                path.display()
            ),
        }
    }
    (
        saved.eval.knn_k,
        saved.eval.knn_temperature,
        format!("the experiment saved in {}", checkpoint.display()),
    )
}

/// `--json`'s path, checked before the features are computed (see [`crate::embed::check_output`]).
fn check_json(data: &EvalData) -> anyhow::Result<()> {
    match &data.json {
        Some(path) => crate::embed::check_output(path, "--json"),
        None => Ok(()),
    }
}

fn report(json: &Option<PathBuf>, value: serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&value)?;
    say!("{text}");
    if let Some(path) = json {
        byol_train::run_dir::replace_file(path, text.as_bytes())?;
    }
    Ok(())
}

pub fn run(command: &EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Knn { data, k, temperature } => knn(data, *k, *temperature),
        EvalCommand::Linear { data, epochs, lrs } => linear(data, *epochs, lrs),
    }
}

/// `eval knn`: weighted kNN with the run's k and temperature unless given.
fn knn(data: &EvalData, k: Option<usize>, temperature: Option<f64>) -> anyhow::Result<()> {
    check_json(data)?;
    let f = features(data)?;
    let (run_k, run_temperature, run_source) = run_knn_settings(&f.checkpoint, &f.experiment);
    let (k, k_from) = match k {
        Some(k) => (k, "--k".to_string()),
        None => (run_k, format!("eval.knn_k of {run_source}")),
    };
    let (temperature, temperature_from) = match temperature {
        Some(t) => (t, "--temperature".to_string()),
        None => (run_temperature, format!("eval.knn_temperature of {run_source}")),
    };
    byol::eprint_line!("kNN: k = {k} ({k_from}), temperature = {temperature} ({temperature_from})");
    let bank = f.train.0.size()[0] as usize;
    if k > bank {
        byol::eprint_line!(
            "note: k = {k} is more than the {bank} training images: each test image is voted on by all {bank}"
        );
    }
    note_without_top5(f.classes);
    let acc = knn_accuracy(
        &f.test.0,
        &f.test.1,
        &f.train.0,
        &f.train.1,
        f.classes,
        k as i64,
        temperature,
    );
    report(
        &data.json,
        serde_json::json!({
            "protocol": "knn",
            "checkpoint": f.checkpoint,
            "train_images": f.train.0.size()[0],
            "test_images": f.test.0.size()[0],
            "skipped_images": f.skipped.len(),
            "skipped": f.skipped,
            "k": k.min(bank),
            "k_requested": k,
            "k_from": k_from,
            "temperature": temperature,
            "temperature_from": temperature_from,
            "top1": acc.top1,
            "top5": acc.top5,
        }),
    )
}

/// `eval linear`: a linear classifier on frozen features, its lr chosen on a validation split.
fn linear(data: &EvalData, epochs: usize, lrs: &[f64]) -> anyhow::Result<()> {
    check_json(data)?;
    // A value given twice would train the same classifiers twice and show twice in the sweep.
    let mut distinct: Vec<f64> = Vec::new();
    for &lr in lrs {
        match distinct.contains(&lr) {
            true => byol::eprint_line!("warning: --lrs names {lr} more than once: it is tried once"),
            false => distinct.push(lr),
        }
    }
    let lrs = distinct.as_slice();
    let f = features(data)?;
    note_without_top5(f.classes);
    let result = linear_probe(
        (&f.train.0, &f.train.1),
        (&f.test.0, &f.test.1),
        f.classes,
        epochs,
        lrs,
        0,
    )?;
    let sweep: Vec<String> = result
        .sweep
        .iter()
        .map(|(lr, top1)| format!("lr {lr}: {:.1}%", top1 * 100.0))
        .chain(result.diverged.iter().map(|lr| format!("lr {lr}: diverged")))
        .collect();
    byol::eprint_line!(
        "linear: lr {} chosen on the {} split ({} of {} training images held out: {:.0}% of each class, \
         at least one of each with two or more; validation top-1 {}); test top-1/top-5 are of a \
         classifier trained with lr {} on all {} training images",
        result.chosen_lr,
        result.lr_chosen_on,
        result.validation_size,
        result.validation_size + result.sweep_train_size,
        VALIDATION_FRACTION * 100.0,
        sweep.join(", "),
        result.chosen_lr,
        result.validation_size + result.sweep_train_size,
    );
    // Few images per class: the one held out of each is far more than the fraction.
    let held_out = result.validation_size as f64 / (result.validation_size + result.sweep_train_size).max(1) as f64;
    if held_out > 2.0 * VALIDATION_FRACTION {
        byol::eprint_line!(
            "warning: the validation split is {:.0}% of the training images, not {:.0}%: with this few images per \
             class, one of each is held out, and the lr is chosen on a classifier trained on the {} left",
            held_out * 100.0,
            VALIDATION_FRACTION * 100.0,
            result.sweep_train_size
        );
    }
    if !result.diverged.is_empty() {
        byol::eprint_line!(
            "warning: the classifier diverged (its weights became Inf or NaN) at lr {}: left out of the choice",
            result
                .diverged
                .iter()
                .map(f64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // At the edge of the lrs that stayed finite, with one that diverged beyond it: a better lr
    // may lie between the two, not beyond the grid.
    let diverged_beyond = |edge: &str| {
        let beyond = |&lr: &f64| {
            if edge == "largest" {
                lr > result.chosen_lr
            } else {
                lr < result.chosen_lr
            }
        };
        result.diverged.iter().any(beyond)
    };
    if let Some(edge) = edge_of_grid(&result.sweep).filter(|edge| !diverged_beyond(edge)) {
        byol::eprint_line!(
            "warning: the chosen lr {} is the {edge} tried: a better one may lie beyond it; give --lrs \
             reaching further {}",
            result.chosen_lr,
            if edge == "largest" { "up" } else { "down" }
        );
    }
    report(
        &data.json,
        serde_json::json!({
            "protocol": "linear",
            "checkpoint": f.checkpoint,
            "train_images": f.train.0.size()[0],
            "test_images": f.test.0.size()[0],
            "skipped_images": f.skipped.len(),
            "skipped": f.skipped,
            "epochs": epochs,
            "lr_chosen_on": result.lr_chosen_on,
            "chosen_lr": result.chosen_lr,
            "validation_fraction": VALIDATION_FRACTION,
            "validation_size": result.validation_size,
            "sweep": result.sweep,
            "diverged": result.diverged,
            "top1": result.accuracy.top1,
            "top5": result.accuracy.top5,
        }),
    )
}

/// Top-5 is left out (null in the JSON) where every label is among the top 5.
fn note_without_top5(classes: i64) {
    if !byol_train::knn::has_top5(classes) {
        byol::eprint_line!("note: top-5 is not reported: with {classes} classes every label is among the top 5");
    }
}

/// "largest" or "smallest" when the lr at that end of a grid of several (lr, validation top-1)
/// did strictly better than every other: a better one may lie beyond the grid. A tie says
/// nothing of the kind (the first of equals is chosen).
fn edge_of_grid(sweep: &[(f64, f64)]) -> Option<&'static str> {
    let by_lr = |a: &&(f64, f64), b: &&(f64, f64)| a.0.total_cmp(&b.0);
    let largest = sweep.iter().max_by(by_lr)?;
    let smallest = sweep.iter().min_by(by_lr)?;
    let beats_the_rest = |edge: &(f64, f64)| sweep.iter().all(|other| other.0 == edge.0 || other.1 < edge.1);
    if largest.0 == smallest.0 {
        None
    } else if beats_the_rest(largest) {
        Some("largest")
    } else if beats_the_rest(smallest) {
        Some("smallest")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::edge_of_grid;

    #[test]
    fn an_lr_at_either_end_of_the_grid_that_beats_the_rest_is_told() {
        let sweep = |tops: [f64; 4]| [(0.03, tops[0]), (0.01, tops[1]), (0.3, tops[2]), (0.1, tops[3])];
        assert_eq!(edge_of_grid(&sweep([0.5, 0.4, 0.7, 0.6])), Some("largest"));
        assert_eq!(edge_of_grid(&sweep([0.5, 0.7, 0.4, 0.6])), Some("smallest"));
        assert_eq!(edge_of_grid(&sweep([0.5, 0.4, 0.6, 0.7])), None, "best inside the grid");
        assert_eq!(
            edge_of_grid(&sweep([0.5, 0.5, 0.5, 0.5])),
            None,
            "all tie: nothing beyond"
        );
        assert_eq!(
            edge_of_grid(&sweep([0.5, 0.4, 0.7, 0.7])),
            None,
            "tied with an inner lr"
        );
        assert_eq!(edge_of_grid(&[(0.5, 0.9)]), None, "one lr is no grid");
    }
}
