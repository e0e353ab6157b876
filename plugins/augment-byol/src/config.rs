use serde::{Deserialize, Serialize};

use byol::{Augment, AugmentSpec, BuildContext, CropRange, DataError, LoaderCrops, Normalization};

use crate::view::{ByolAugment, ViewParams};

/// Starting values for both views; any key set under `[augment.view1]` / `[augment.view2]`
/// overrides its preset value.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The paper's ImageNet views (Table 6) at 224 px, ImageNet mean/std.
    #[default]
    Imagenet,
    /// The common CIFAR recipe (solo-learn, lightly): 32 px crops, no blur, CIFAR mean/std.
    Cifar,
}

impl Preset {
    /// The central fraction of the image the evaluation view is (the paper's 224 of 256).
    fn eval_crop_fraction(self) -> f64 {
        match self {
            Preset::Imagenet => 0.875,
            Preset::Cifar => 1.0,
        }
    }
}

/// Where the random resized crop happens.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CropOn {
    /// On the training device, from the dataset's pre-sized squares (in-memory datasets: CIFAR).
    #[default]
    Device,
    /// On the loader's CPU threads, from the full decoded image before resizing (image folders
    /// of photos with `cache = "none"`: the paper's crop, with antialiased bicubic resizing).
    Loader,
}

/// Optional per-view overrides of the preset (`[augment.view1] solarize_p = 0.1`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ViewOverrides {
    /// Random resized crop: area fraction range.
    pub crop_scale: Option<(f64, f64)>,
    /// Random resized crop: aspect-ratio range (log-uniform).
    pub crop_ratio: Option<(f64, f64)>,
    /// Horizontal flip probability.
    pub flip_p: Option<f64>,
    /// Probability of applying colour jitter.
    pub jitter_p: Option<f64>,
    pub brightness: Option<f64>,
    pub contrast: Option<f64>,
    pub saturation: Option<f64>,
    pub hue: Option<f64>,
    pub grayscale_p: Option<f64>,
    pub blur_p: Option<f64>,
    /// Blur sigma range, in pixels of the view.
    pub blur_sigma: Option<(f64, f64)>,
    /// Blur kernel side as a fraction of the view side (odd, at least 3).
    pub blur_kernel_fraction: Option<f64>,
    pub solarize_p: Option<f64>,
    pub solarize_threshold: Option<f64>,
}

impl ViewOverrides {
    fn apply(&self, mut p: ViewParams) -> ViewParams {
        macro_rules! take {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { p.$field = v; })* };
        }
        take!(
            crop_scale,
            crop_ratio,
            flip_p,
            jitter_p,
            grayscale_p,
            blur_p,
            blur_sigma,
            blur_kernel_fraction,
            solarize_p,
            solarize_threshold
        );
        if let Some(v) = self.brightness {
            p.jitter.brightness = v;
        }
        if let Some(v) = self.contrast {
            p.jitter.contrast = v;
        }
        if let Some(v) = self.saturation {
            p.jitter.saturation = v;
        }
        if let Some(v) = self.hue {
            p.jitter.hue = v;
        }
        p
    }
}

/// `[augment] type = "byol"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
pub struct ByolAugmentConfig {
    /// The views' parameters: "imagenet" (the paper's, 224 px) or "cifar" (32 px, no blur).
    pub preset: Preset,
    /// Side of the views in pixels (preset: 224 / 32).
    pub image_size: Option<i64>,
    /// The evaluation view (kNN, linear probe, embed) is the central `eval_crop_fraction` of the
    /// image, in [0.25, 1]: shorter side resized to image_size / eval_crop_fraction (rounded),
    /// then the central image_size square (preset: 0.875 / 1.0; the paper's 256 then 224).
    pub eval_crop_fraction: Option<f64>,
    /// Per-channel normalization (preset: ImageNet / CIFAR-10 statistics).
    pub mean: Option<[f64; 3]>,
    pub std: Option<[f64; 3]>,
    /// Where the random resized crops are cut: "device" (from the decoded squares, batched) or
    /// "loader" (from the full images, on the loader's threads). See [`CropOn`].
    pub crop_on: CropOn,
    pub view1: ViewOverrides,
    pub view2: ViewOverrides,
}

impl ByolAugmentConfig {
    /// The resolved pipeline: preset values with the overrides applied, checked.
    pub fn resolve(&self) -> Result<ByolAugment, DataError> {
        let (size, crop_fraction, mean, std, mut view1, mut view2) = match self.preset {
            Preset::Imagenet => (
                224,
                Preset::Imagenet.eval_crop_fraction(),
                [0.485, 0.456, 0.406],
                [0.229, 0.224, 0.225],
                ViewParams::paper_view1(),
                ViewParams::paper_view2(),
            ),
            Preset::Cifar => {
                let cifar = |p: ViewParams| ViewParams { blur_p: 0.0, ..p };
                (
                    32,
                    Preset::Cifar.eval_crop_fraction(),
                    [0.4914, 0.4822, 0.4465],
                    [0.2470, 0.2435, 0.2616],
                    cifar(ViewParams::paper_view1()),
                    cifar(ViewParams::paper_view2()),
                )
            }
        };
        view1 = self.view1.apply(view1);
        view2 = self.view2.apply(view2);
        let size = self.image_size.unwrap_or(size);
        if size < 4 {
            return Err(DataError::Config(format!(
                "augment.image_size = {size} is too small: it must be at least 4"
            )));
        }
        for (name, p) in [("view1", &view1), ("view2", &view2)] {
            for (key, v) in [
                ("flip_p", p.flip_p),
                ("jitter_p", p.jitter_p),
                ("grayscale_p", p.grayscale_p),
                ("blur_p", p.blur_p),
                ("solarize_p", p.solarize_p),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(DataError::Config(format!(
                        "augment.{name}.{key} = {v} is not a probability in [0, 1]"
                    )));
                }
            }
            if !(0.0 < p.crop_scale.0 && p.crop_scale.0 <= p.crop_scale.1 && p.crop_scale.1 <= 1.0) {
                return Err(DataError::Config(format!(
                    "augment.{name}.crop_scale = {:?} must satisfy 0 < lo <= hi <= 1",
                    p.crop_scale
                )));
            }
            if !(p.blur_sigma.0 > 0.0 && p.blur_sigma.0 <= p.blur_sigma.1) {
                return Err(DataError::Config(format!(
                    "augment.{name}.blur_sigma = {:?} must satisfy 0 < lo <= hi",
                    p.blur_sigma
                )));
            }
            if !(0.0 < p.crop_ratio.0 && p.crop_ratio.0 <= p.crop_ratio.1 && p.crop_ratio.1.is_finite()) {
                return Err(DataError::Config(format!(
                    "augment.{name}.crop_ratio = {:?} must satisfy 0 < lo <= hi (width / height)",
                    p.crop_ratio
                )));
            }
            check_view_ranges(name, p)?;
        }
        let crop_fraction = self.eval_crop_fraction.unwrap_or(crop_fraction);
        if !(0.25..=1.0).contains(&crop_fraction) {
            return Err(DataError::Config(format!(
                "augment.eval_crop_fraction = {crop_fraction} is not in [0.25, 1]: the evaluation view is \
                 that fraction of the image's centre (0.875: resize to 256, crop 224; 1: the whole image)"
            )));
        }
        let std = self.std.unwrap_or(std);
        if let Some(bad) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::Config(format!(
                "augment.std = {std:?}: {bad} is not above 0 (normalization divides by it)"
            )));
        }
        Ok(ByolAugment {
            size,
            eval_resize: (size as f64 / crop_fraction).round() as i64,
            view1,
            view2,
            mean: self.mean.unwrap_or(mean),
            std,
        })
    }
}

impl ByolAugmentConfig {
    /// The same views with every value the preset gives written out (the preset then decides
    /// nothing, and is the default's), for comparing configs only. `None` where the config does
    /// not resolve.
    fn spelled_out_config(&self) -> Option<Self> {
        let augment = self.resolve().ok()?;
        let spelled = |p: &ViewParams| ViewOverrides {
            crop_scale: Some(p.crop_scale),
            crop_ratio: Some(p.crop_ratio),
            flip_p: Some(p.flip_p),
            jitter_p: Some(p.jitter_p),
            brightness: Some(p.jitter.brightness),
            contrast: Some(p.jitter.contrast),
            saturation: Some(p.jitter.saturation),
            hue: Some(p.jitter.hue),
            grayscale_p: Some(p.grayscale_p),
            blur_p: Some(p.blur_p),
            blur_sigma: Some(p.blur_sigma),
            blur_kernel_fraction: Some(p.blur_kernel_fraction),
            solarize_p: Some(p.solarize_p),
            solarize_threshold: Some(p.solarize_threshold),
        };
        Some(Self {
            preset: Preset::default(),
            image_size: Some(augment.size),
            eval_crop_fraction: Some(self.eval_crop_fraction.unwrap_or(self.preset.eval_crop_fraction())),
            mean: Some(augment.mean),
            std: Some(augment.std),
            crop_on: self.crop_on,
            view1: spelled(&augment.view1),
            view2: spelled(&augment.view2),
        })
    }
}

/// The colour jitter's strengths (torchvision's ranges: factors drawn from [1 - s, 1 + s], the
/// hue shift from [-hue, hue] turns), the blur kernel and the solarization threshold of a view.
fn check_view_ranges(name: &str, p: &ViewParams) -> Result<(), DataError> {
    let j = &p.jitter;
    let strength = |v: f64| v >= 0.0 && v.is_finite();
    let (fraction, threshold) = (p.blur_kernel_fraction, p.solarize_threshold);
    for (key, v, ok, range) in [
        ("brightness", j.brightness, strength(j.brightness), ">= 0"),
        ("contrast", j.contrast, strength(j.contrast), ">= 0"),
        ("saturation", j.saturation, strength(j.saturation), ">= 0"),
        ("hue", j.hue, (0.0..=0.5).contains(&j.hue), "in [0, 0.5]"),
        (
            "blur_kernel_fraction",
            fraction,
            fraction > 0.0 && fraction <= 1.0,
            "in (0, 1]",
        ),
        (
            "solarize_threshold",
            threshold,
            (0.0..=1.0).contains(&threshold),
            "in [0, 1]",
        ),
    ] {
        if !ok {
            return Err(DataError::Config(format!("augment.{name}.{key} = {v} must be {range}")));
        }
    }
    Ok(())
}

byol::register_plugin! {
    name: "byol",
    description: "the paper's two asymmetric views (Table 6), per-sample random, on the device; presets imagenet and cifar",
    optional: "image_size = 224               # view side (default: the preset's, 224 or 32)\n\
               eval_crop_fraction = 0.875     # evaluation: resize to image_size / this, central crop (default: the preset's, 0.875 or 1)\n\
               mean = [0.485, 0.456, 0.406]   # normalization (default: the preset's)\n\
               std = [0.229, 0.224, 0.225]\n\
               # view1.* and view2.* override the preset for one view: crop_scale, crop_ratio, flip_p,\n\
               # jitter_p, brightness, contrast, saturation, hue, grayscale_p, blur_p, blur_sigma,\n\
               # blur_kernel_fraction, solarize_p, solarize_threshold\n\
               view1.blur_p = 1.0\n\
               view2.solarize_p = 0.2",
    impl AugmentSpec for ByolAugmentConfig {
        fn build(&self, _: &BuildContext) -> Result<Box<dyn Augment>, DataError> {
            Ok(Box::new(self.resolve()?))
        }
        fn image_size(&self) -> i64 {
            self.image_size.unwrap_or(match self.preset {
                Preset::Imagenet => 224,
                Preset::Cifar => 32,
            })
        }
        fn eval_resize(&self) -> i64 {
            self.resolve().map_or(self.image_size(), |augment| augment.eval_resize)
        }
        fn loader_crops(&self) -> Option<LoaderCrops> {
            let augment = self.resolve().ok()?;
            (self.crop_on == CropOn::Loader).then(|| LoaderCrops {
                views: [&augment.view1, &augment.view2].map(|v| CropRange {
                    scale: v.crop_scale,
                    ratio: v.crop_ratio,
                }),
                size: augment.size as u32,
            })
        }
        fn normalization(&self) -> Option<Normalization> {
            let augment = self.resolve().ok()?;
            Some(Normalization {
                mean: augment.mean,
                std: augment.std,
            })
        }
        fn spelled_out(&self) -> Option<Box<dyn AugmentSpec>> {
            Some(Box::new(self.spelled_out_config()?))
        }
    }
}
