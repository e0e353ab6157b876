//! `ScalarLogger::image` read back by TensorBoard's own
//! `EventAccumulator`: width and height right (not swapped), pixels exact.

use byol_train::tensorboard::ScalarLogger;
use tch::{Device, Kind, Tensor};

#[test]
fn images_read_back_by_tensorboard_with_the_right_size_and_pixels() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(0);
    // Not square, so that a width/height swap shows.
    let rgb = Tensor::randint(256, [3, 20, 33], (Kind::Uint8, Device::Cpu));
    let gray = Tensor::randint(256, [1, 7, 4], (Kind::Uint8, Device::Cpu));
    {
        let mut logger = ScalarLogger::create(dir.path()).unwrap();
        logger.scalar("train/loss", 0.5, 1);
        logger.image("views/rgb", &rgb, 3).unwrap();
        logger.image("views/gray", &gray, 4).unwrap();
        let err = logger
            .image("bad", &Tensor::zeros([3, 4, 4], (Kind::Float, Device::Cpu)), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be uint8 [3, H, W] or [1, H, W]"), "{err}");
        assert!(logger
            .image("bad", &Tensor::zeros([4, 4], (Kind::Uint8, Device::Cpu)), 0)
            .is_err());
    }
    let script = format!(
        r#"
import io, numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator({dir:?}, size_guidance={{"images": 0}})
acc.Reload()
assert sorted(acc.Tags()["images"]) == ["views/gray", "views/rgb"], acc.Tags()
assert [e.value for e in acc.Scalars("train/loss")] == [0.5]
for tag in ["views/rgb", "views/gray"]:
    (event,) = acc.Images(tag)
    png = Image.open(io.BytesIO(event.encoded_image_string))
    key = tag.split("/")[1]
    outputs[key] = torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
    outputs[key + "_header"] = torch.tensor([event.width, event.height, png.width, png.height, event.step])
"#,
        dir = dir.path().display().to_string()
    );
    let out = byol_testkit::run_python(&script, &[]);
    let header = |k: &str| Vec::<i64>::try_from(&out[k]).unwrap();
    assert_eq!(
        header("rgb_header"),
        [33, 20, 33, 20, 3],
        "width, height (header, PNG), step"
    );
    assert_eq!(header("gray_header"), [4, 7, 4, 7, 4]);
    assert!(out["rgb"].equal(&rgb), "RGB pixels");
    assert!(out["gray"].equal(&gray.expand([3, 7, 4], false)), "gray pixels");
}
