use tch::{Kind, Tensor};

use byol_data::transfer::constant;
use byol_data::{ops, preview};

/// Every parameter of one view's pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    pub crop_scale: (f64, f64),
    pub crop_ratio: (f64, f64),
    pub flip_p: f64,
    pub jitter_p: f64,
    pub jitter: ops::JitterStrength,
    pub grayscale_p: f64,
    pub blur_p: f64,
    pub blur_sigma: (f64, f64),
    /// Blur kernel side as a fraction of the view side (paper: 23 px at 224, about 0.1).
    pub blur_kernel_fraction: f64,
    pub solarize_p: f64,
    pub solarize_threshold: f64,
}

impl ViewParams {
    /// The paper's view 1 (Table 6, column T).
    pub fn paper_view1() -> Self {
        Self {
            crop_scale: (0.08, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            jitter_p: 0.8,
            jitter: ops::JitterStrength {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.2,
                hue: 0.1,
            },
            grayscale_p: 0.2,
            blur_p: 1.0,
            blur_sigma: (0.1, 2.0),
            blur_kernel_fraction: 0.1,
            solarize_p: 0.0,
            solarize_threshold: 0.5,
        }
    }

    /// The paper's view 2 (Table 6, column T'): blur 0.1, solarize 0.2.
    pub fn paper_view2() -> Self {
        Self {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..Self::paper_view1()
        }
    }

    /// Blur kernel side for views of `size` pixels: odd, at least 3 (23 at 224 px).
    pub fn blur_kernel(&self, size: i64) -> i64 {
        let k = (self.blur_kernel_fraction * size as f64).round() as i64;
        (k.max(3) / 2) * 2 + 1
    }
}

/// The runtime augmentation: uint8 batches in, two normalized float views out.
#[derive(Debug, Clone)]
pub struct ByolAugment {
    pub size: i64,
    /// The shorter side the evaluation view resizes images to before its central `size` crop.
    pub eval_resize: i64,
    pub view1: ViewParams,
    pub view2: ViewParams,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl ByolAugment {
    /// One view of float images in [0, 1].
    pub fn view(&self, images: &Tensor, p: &ViewParams) -> Tensor {
        let dims = images.size();
        let (n, h, w) = (dims[0], dims[2], dims[3]);
        let device = images.device();
        let boxes = ops::random_resized_crop_boxes(n, h, w, p.crop_scale, p.crop_ratio, device);
        let flip = ops::bernoulli(n, p.flip_p, device);
        self.after_crop(ops::resized_crop(images, &boxes, self.size, Some(&flip)), p)
    }

    /// One view of crops the loader already cut (float in [0, 1], `size` pixels): the flip,
    /// then everything after the crop.
    pub fn view_of_crops(&self, crops: &Tensor, p: &ViewParams) -> Tensor {
        let flip = ops::bernoulli(crops.size()[0], p.flip_p, crops.device());
        self.after_crop(ops::select(&flip, &crops.flip([3]), crops), p)
    }

    /// Colour jitter, grayscale, blur, solarize and normalization of cropped views.
    fn after_crop(&self, mut x: Tensor, p: &ViewParams) -> Tensor {
        let n = x.size()[0];
        let device = x.device();
        // Every draw is made for the whole batch, in a fixed order, before its coin flip: a
        // sample's views do not depend on which other samples an op was applied to.
        if p.jitter_p > 0.0 {
            let draw = ops::JitterDraw::new(n, p.jitter, device);
            let apply = ops::bernoulli(n, p.jitter_p, device);
            x = ops::apply_where(&apply, &x, |x, rows| ops::apply_jitter(x, &draw.rows(rows)));
        }
        if p.grayscale_p > 0.0 {
            x = ops::apply_where(&ops::bernoulli(n, p.grayscale_p, device), &x, |x, _| ops::grayscale(x));
        }
        if p.blur_p > 0.0 {
            let sigma = ops::uniform(n, p.blur_sigma.0, p.blur_sigma.1, device);
            let kernel = p.blur_kernel(self.size);
            let apply = ops::bernoulli(n, p.blur_p, device);
            x = ops::apply_where(&apply, &x, |x, rows| ops::gaussian_blur(x, kernel, &rows.of(&sigma)));
        }
        if p.solarize_p > 0.0 {
            let threshold = p.solarize_threshold;
            x = ops::apply_where(&ops::bernoulli(n, p.solarize_p, device), &x, |x, _| {
                ops::solarize(x, threshold)
            });
        }
        ops::normalize(&x, self.mean, self.std)
    }
}

impl ByolAugment {
    /// Normalized views back to [0, 1] floats.
    pub fn unnormalize(&self, views: &Tensor) -> Tensor {
        let device = views.device();
        let mean = constant(&self.mean.map(|m| m as f32), Kind::Float, device).view([1, 3, 1, 1]);
        let std = constant(&self.std.map(|s| s as f32), Kind::Float, device).view([1, 3, 1, 1]);
        views * std + mean
    }

    /// The TensorBoard picture of the views: uint8 `[3, H, W]` on the CPU whose rows are
    /// (original resized to the view size, view 1, view 2) of the first `count` images.
    pub fn preview_grid(&self, images: &Tensor, count: i64) -> Tensor {
        tch::no_grad(|| {
            let images = images.narrow(0, 0, count.min(images.size()[0]));
            let (view1, view2) = byol::Augment::two_views(self, &images);
            self.grid(&images, &view1, &view2)
        })
    }

    /// [`ByolAugment::preview_grid`] for crops the loader cut (uint8 `[N, 6, S, S]`: view 1 RGB,
    /// view 2 RGB) from the full images that `images` shows resized.
    pub fn preview_grid_of_crops(&self, images: &Tensor, crops: &Tensor, count: i64) -> Tensor {
        tch::no_grad(|| {
            let count = count.min(images.size()[0]);
            let (images, crops) = (images.narrow(0, 0, count), crops.narrow(0, 0, count));
            let view1 = self.view_of_crops(&to_unit_float(&crops.narrow(1, 0, 3)), &self.view1);
            let view2 = self.view_of_crops(&to_unit_float(&crops.narrow(1, 3, 3)), &self.view2);
            self.grid(&images, &view1, &view2)
        })
    }

    fn grid(&self, images: &Tensor, view1: &Tensor, view2: &Tensor) -> Tensor {
        let original = ops::resize_center_crop(&to_unit_float(images), self.size, self.size);
        let cells = [original, self.unnormalize(view1), self.unnormalize(view2)].map(|x| preview::to_uint8(&x));
        preview::grid(&[&cells[0], &cells[1], &cells[2]], 2, 255)
    }

    /// Images per preview: 8, or 4 for views over 96 px.
    fn preview_count(&self) -> i64 {
        if self.size > 96 {
            4
        } else {
            8
        }
    }
}

fn to_unit_float(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 255.0
}

impl byol::Augment for ByolAugment {
    fn two_views(&self, images: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let x = to_unit_float(images);
            (self.view(&x, &self.view1), self.view(&x, &self.view2))
        })
    }

    fn two_views_from_crops(&self, view1_crops: &Tensor, view2_crops: &Tensor) -> Option<(Tensor, Tensor)> {
        Some(tch::no_grad(|| {
            (
                self.view_of_crops(&to_unit_float(view1_crops), &self.view1),
                self.view_of_crops(&to_unit_float(view2_crops), &self.view2),
            )
        }))
    }

    /// Rows of (original resized to the view size, view 1, view 2) for the first 8 images (4
    /// for views over 96 px), normalization undone, 2 px white padding.
    fn preview(&self, images: &Tensor) -> Option<Tensor> {
        Some(self.preview_grid(images, self.preview_count()))
    }

    fn preview_of_crops(&self, images: &Tensor, crops: &Tensor) -> Option<Tensor> {
        Some(self.preview_grid_of_crops(images, crops, self.preview_count()))
    }

    fn eval_view(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            ops::normalize(
                &ops::resize_center_crop(&to_unit_float(images), self.eval_resize, self.size),
                self.mean,
                self.std,
            )
        })
    }
}
