//! The `image_folder` dataset: every image flavour decoded like PIL's `convert("RGB")` (files
//! written by PIL in the test), the centre-square resize like PIL's, the real CIFAR-10 JPEGs, file
//! lists, and every bad input (missing/empty folders, unreadable images, small images, stray
//! files) with the message it gives.

mod common;

use std::path::{Path, PathBuf};

use byol_data::decode::{center_square_into, decode_rgb};
use byol_data::image_folder::{decode_square, ImageFolderConfig};
use common::{build, python, quoted};

/// A smooth pattern with some noise, `w` x `h`, as an RGB image.
fn pattern(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let noise = (x.wrapping_mul(73) ^ y.wrapping_mul(151) ^ seed.wrapping_mul(199)) % 23;
        image::Rgb([
            ((x * 255 / w.max(1)) as u8).wrapping_add(noise as u8),
            ((y * 255 / h.max(1)) as u8).wrapping_add(seed as u8),
            (((x + y) * 4) as u8).wrapping_add(noise as u8),
        ])
    })
}

fn write_image(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    pattern(w, h, seed).save(path).unwrap();
}

/// A `<root>/<class>/<i>.png|jpg` tree of `per_class` images per class.
fn image_tree(root: &Path, classes: &[&str], per_class: usize, size: (u32, u32)) {
    for (c, class) in classes.iter().enumerate() {
        for i in 0..per_class {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            write_image(
                &root.join(class).join(format!("{i:03}.{ext}")),
                size.0,
                size.1,
                (c * 100 + i) as u32,
            );
        }
    }
}

fn folder_toml(train: &Path, extra: &str) -> String {
    format!("type = \"image_folder\"\ntrain = {}\n{extra}\n", quoted(train))
}

fn load(train: &Path, extra: &str) -> Result<(byol_data::Splits, Vec<String>), byol_data::DataError> {
    let config: ImageFolderConfig = toml::from_str(&format!("train = {}\n{extra}\n", quoted(train))).unwrap();
    config.load()
}

fn read_rgb(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn mean_max_diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.len() as f64, max)
}

/// Files PIL writes in every flavour we read, each with PIL's `convert("RGB")` pixels beside it
/// (`<file>.rgb`, HWC bytes).
const PIL_FLAVOURS: &str = r#"
import sys, os, numpy as np
from PIL import Image, features
assert features.check_feature("libjpeg_turbo"), "this PIL decodes JPEGs without libjpeg-turbo, which the exact comparison needs (pip's Pillow wheels bundle it)"
d = sys.argv[1]
h, w = 29, 37
yy, xx = np.mgrid[0:h, 0:w]
rng = np.random.default_rng(0)
base = np.stack([(xx * 6 + yy * 2), (yy * 8 + 10), (255 - xx * 5)], -1)
rgb = np.clip(base + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
im = Image.fromarray(rgb, "RGB")
alpha = Image.fromarray(rng.integers(0, 256, (h, w)).astype(np.uint8), "L")
gray = im.convert("L")
rgba = im.copy(); rgba.putalpha(alpha)
la = gray.copy(); la.putalpha(alpha)
# 16-bit values of every low byte, not multiples of 257 (where rounding and high bytes agree).
wide = rng.integers(0, 65536, (h, w, 3)).astype(np.uint16)

def png16(path, values, colour_type):  # PIL writes no 16-bit colour PNG
    import struct, zlib
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
cases = {
    "baseline.jpg": lambda p: im.save(p, quality=92),
    "baseline444.jpg": lambda p: im.save(p, quality=92, subsampling=0),
    "progressive.jpg": lambda p: im.save(p, quality=92, progressive=True),
    "gray.jpg": lambda p: gray.save(p, quality=92),
    "cmyk.jpg": lambda p: im.convert("CMYK").save(p, quality=92),
    "rgb.png": lambda p: im.save(p),
    "rgba.png": lambda p: rgba.save(p),
    "gray.png": lambda p: gray.save(p),
    "la.png": lambda p: la.save(p),
    "palette.png": lambda p: im.convert("P", palette=Image.ADAPTIVE, colors=64).save(p),
    "gray16.png": lambda p: Image.fromarray(wide[..., 0]).save(p),
    "rgb16.png": lambda p: png16(p, wide, 2),
    "rgba16.png": lambda p: png16(p, np.concatenate([wide, wide[..., :1] ^ 0x5A5A], -1), 6),
}
for name, save in cases.items():
    p = os.path.join(d, name)
    save(p)
    ref = Image.open(p)
    if name == "gray16.png":
        # PIL clips 16-bit gray at 255 in convert("RGB"); its values' high bytes are what PIL
        # reads of 16-bit RGB.
        assert ref.mode == "I;16", ref.mode
        ref = Image.fromarray((wide[..., 0] >> 8).astype(np.uint8), "L")
    assert ref.size == (w, h)
    np.asarray(ref.convert("RGB")).tofile(p + ".rgb")
assert Image.open(os.path.join(d, "progressive.jpg")).info.get("progressive") == 1
assert Image.open(os.path.join(d, "cmyk.jpg")).mode == "CMYK"
"#;

/// Every flavour must match PIL exactly: PNGs through `image`, JPEGs through the same
/// libjpeg-turbo decoder as PIL's (CMYK converted with PIL's own formula).
#[test]
fn every_flavour_decodes_like_pil() {
    let tmp = tempfile::tempdir().unwrap();
    python(PIL_FLAVOURS, &[tmp.path()]);
    for name in [
        "baseline.jpg",
        "baseline444.jpg",
        "progressive.jpg",
        "gray.jpg",
        "cmyk.jpg",
        "rgb.png",
        "rgba.png",
        "gray.png",
        "la.png",
        "palette.png",
        "gray16.png",
        "rgb16.png",
        "rgba16.png",
    ] {
        let path = tmp.path().join(name);
        let ours = decode_rgb(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((ours.width, ours.height), (37, 29), "{name}");
        let pil = read_rgb(&tmp.path().join(format!("{name}.rgb")));
        let (mean, max) = mean_max_diff(&ours.pixels, &pil);
        println!("{name}: mean abs diff {mean:.3}, max {max}");
        assert_eq!(max, 0, "{name}: pixels differ from PIL's (mean {mean})");
    }
}

/// The stored square: centre square of the shorter side, antialiased bilinear like PIL's
/// `resize(..., BILINEAR, box=centre square)`, down and up (images smaller than the crop).
#[test]
fn centre_square_resize_matches_pil() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (97u32, 61u32, 32u32),
        (98, 61, 32),
        (40, 90, 24),
        (13, 9, 32),
        (32, 32, 32),
        (50, 50, 17),
    ];
    for (i, &(w, h, _)) in cases.iter().enumerate() {
        write_image(&tmp.path().join(format!("{i}.png")), w, h, i as u32);
    }
    let sizes: Vec<String> = cases.iter().map(|c| c.2.to_string()).collect();
    python(
        &format!(
            r#"
import sys, os, numpy as np
from PIL import Image
d = sys.argv[1]
for i, size in enumerate([{}]):
    im = Image.open(os.path.join(d, "%d.png" % i)).convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w - s) / 2 + s, (h - s) / 2 + s)
    np.asarray(im.resize((size, size), Image.BILINEAR, box=box)).transpose(2, 0, 1).tofile(os.path.join(d, "%d.chw" % i))
"#,
            sizes.join(", ")
        ),
        &[tmp.path()],
    );
    for (i, &(w, h, size)) in cases.iter().enumerate() {
        let ours = decode_square(&tmp.path().join(format!("{i}.png")), size).unwrap();
        let pil = read_rgb(&tmp.path().join(format!("{i}.chw")));
        let (mean, max) = mean_max_diff(&ours, &pil);
        println!("{w}x{h} -> {size}: mean abs diff {mean:.3}, max {max}");
        assert!(max <= 1, "{w}x{h} -> {size}: max abs diff {max} vs PIL (mean {mean})");
    }
    // Same size: a plain HWC -> CHW copy.
    let image = decode_rgb(&std::fs::read(tmp.path().join("4.png")).unwrap()).unwrap();
    let mut out = vec![0u8; 3 * 32 * 32];
    center_square_into(&image, 32, &mut out).unwrap();
    assert_eq!(out[32 * 32 + 5], image.pixels[5 * 3 + 1]);
}

/// CRC-32 (the PNG chunk checksum).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn every_format_has_the_same_size_limit_and_says_it() {
    // Two rows keep these small while a side sits at and just over the limit.
    for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
        for side in [16384u32, 16385] {
            let mut bytes = Vec::new();
            image::RgbImage::from_pixel(side, 2, image::Rgb([200, 10, 10]))
                .write_to(&mut std::io::Cursor::new(&mut bytes), format)
                .unwrap();
            match decode_rgb(&bytes) {
                Ok(image) => assert_eq!((side, image.width, image.height), (16384, 16384, 2), "{format:?}"),
                Err(e) => {
                    assert_eq!(side, 16385, "{format:?}: {e}");
                    assert!(
                        e.contains("16385x2 pixels is over the limit of 16384 pixels per side")
                            && e.contains("downscale"),
                        "{format:?}: {e}"
                    );
                }
            }
        }
    }
    // A PNG whose header claims 20000x20000 is refused from the header, before any allocation.
    let mut png = Vec::new();
    image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&20000u32.to_be_bytes());
    png[20..24].copy_from_slice(&20000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = decode_rgb(&png).unwrap_err();
    assert!(err.contains("20000x20000 pixels is over the limit"), "{err}");
    // Within the sides, over PIL's pixel limit (178,956,970): refused from the header too; at
    // the limit, the header passes (the decoder then finds the data missing).
    for (side, over) in [(13377u32, false), (13377 + 1, true)] {
        png[16..20].copy_from_slice(&side.to_be_bytes());
        png[20..24].copy_from_slice(&side.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_rgb(&png).unwrap_err();
        assert_eq!(err.contains("over the limit of 178956970"), over, "{side}: {err}");
    }
}

/// A file of another format named like a JPEG or PNG says what it is by its contents.
#[test]
fn another_format_under_an_image_name_is_named() {
    let gif = b"GIF89a\x04\x00\x04\x00\x80\x00\x00";
    let err = decode_rgb(gif).unwrap_err();
    assert!(
        err.contains("a GIF file by its contents") && err.contains("convert it"),
        "{err}"
    );
}

/// The real CIFAR-10 JPEGs (`byol_testkit::cifar10_jpeg`: skipped where they are absent, a
/// failure when CI=true): our decode equals PIL's on a slice of them (4:2:0 chroma subsampling,
/// where decoders' upsampling differs most).
#[test]
fn real_cifar_jpegs_decode_like_pil() {
    let Some(root) = common::cifar10_jpeg("real_cifar_jpegs_decode_like_pil") else {
        return;
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for class in ["airplane", "cat", "truck"] {
        files.extend((0..20).map(|i| root.join("test").join(class).join(format!("{i:04}.jpg"))));
    }
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("files.txt");
    std::fs::write(
        &list,
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    python(
        r#"
import sys, numpy as np
from PIL import Image, features
assert features.check_feature("libjpeg_turbo"), "this PIL decodes JPEGs without libjpeg-turbo, which the exact comparison needs (pip's Pillow wheels bundle it)"
out = open(sys.argv[2], "wb")
for line in open(sys.argv[1]).read().split("\n"):
    out.write(np.asarray(Image.open(line).convert("RGB")).tobytes())
"#,
        &[&list, &tmp.path().join("pil.rgb")],
    );
    let pil = read_rgb(&tmp.path().join("pil.rgb"));
    let mut ours = Vec::new();
    for f in &files {
        let image = decode_rgb(&std::fs::read(f).unwrap()).unwrap();
        assert_eq!((image.width, image.height), (32, 32));
        ours.extend(image.pixels);
    }
    let (mean, max) = mean_max_diff(&ours, &pil);
    println!("{} CIFAR-10 JPEGs: mean abs diff {mean:.3}, max {max}", files.len());
    assert_eq!(max, 0, "pixels differ from PIL's (mean abs diff {mean})");
}

/// JPEGs that libjpeg decodes with a warning decode to the pixels of the clean file: bytes
/// between two headers (after APP0) and before the end marker; a truncated one is an error (as
/// PIL and torchvision refuse it), never gray pixels.
#[test]
fn jpegs_with_extraneous_bytes_decode_and_truncated_ones_do_not() {
    let Some(root) = common::cifar10_jpeg("jpegs_with_extraneous_bytes_decode_and_truncated_ones_do_not") else {
        return;
    };
    for i in 0..10 {
        let clean = std::fs::read(root.join(format!("test/ship/{i:04}.jpg"))).unwrap();
        let expected = decode_rgb(&clean).unwrap();
        assert_eq!(&clean[2..4], [0xFF, 0xE0], "starts with APP0");
        let after_app0 = 4 + u16::from_be_bytes([clean[4], clean[5]]) as usize;
        let end = clean.len() - 2;
        assert_eq!(&clean[end..], [0xFF, 0xD9], "ends with EOI");
        let junk = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];
        for (name, at) in [("between headers", after_app0), ("before the end", end)] {
            let bytes = [&clean[..at], &junk[..], &clean[at..]].concat();
            let decoded = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(decoded.pixels, expected.pixels, "{name}");
        }
        let e = decode_rgb(&clean[..clean.len() * 2 / 3]).unwrap_err();
        assert!(e.starts_with("invalid JPEG"), "{e}");
        // Bytes between headers do not excuse a cut: still an error, never gray pixels.
        let both = [&clean[..after_app0], &junk[..], &clean[after_app0..clean.len() * 2 / 3]].concat();
        let e = decode_rgb(&both).unwrap_err();
        assert!(e.starts_with("invalid JPEG"), "{e}");
    }
}

#[test]
fn labels_come_from_sorted_folders_and_stray_files_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["zebra", "apple", "mango"], 3, (20, 16));
    // Not images, or not classes: ignored.
    std::fs::write(root.join("README.txt"), "about").unwrap();
    std::fs::write(root.join("apple/notes.csv"), "a,b").unwrap();
    std::fs::write(root.join("apple/.DS_Store"), [0u8; 8]).unwrap();
    write_image(&root.join("apple/._hidden.jpg"), 8, 8, 0);
    write_image(&root.join(".ipynb_checkpoints/x.png"), 8, 8, 0);
    // Deeper in a class folder: that class's, after the folder's own images (torchvision's
    // ImageFolder walks class folders too).
    write_image(&root.join("zebra/2019/deep.png"), 8, 8, 0);
    let (splits, warnings) = load(&root, "image_size = 16").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let train = splits.train;
    assert_eq!(train.classes(), ["apple", "mango", "zebra"]);
    assert_eq!(train.len(), 10);
    assert_eq!(train.image_shape(), [3, 16, 16]);
    let (images, labels) = train.batch(&(0..10).collect::<Vec<_>>()).unwrap();
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]);
    // The first image is apple/000.png, centre square of 20x16 resized to 16.
    let expected = decode_square(&root.join("apple/000.png"), 16).unwrap();
    assert_eq!(Vec::<u8>::try_from(images.get(0).flatten(0, -1)).unwrap(), expected);
    let deep = decode_square(&root.join("zebra/2019/deep.png"), 16).unwrap();
    assert_eq!(Vec::<u8>::try_from(images.get(9).flatten(0, -1)).unwrap(), deep);
}

/// JPEGs under JPEG's other extensions (`.jpe`, `.jfif`, `.jif`, any case) are read as JPEGs,
/// not passed over without a word.
#[test]
fn jpegs_named_jpe_or_jfif_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 2, (8, 8));
    let jpeg = std::fs::read(root.join("a/001.jpg")).unwrap();
    for name in ["a/x.jfif", "a/y.JPE", "b/z.jif"] {
        std::fs::write(root.join(name), &jpeg).unwrap();
    }
    let (splits, warnings) = load(&root, "image_size = 8").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(splits.train.len(), 7);
    let (images, _) = splits.train.batch(&(0..7).collect::<Vec<_>>()).unwrap();
    // a: 000.png, 001.jpg, x.jfif, y.JPE: the copies decode as the JPEG they copy.
    assert!(images.get(2).equal(&images.get(1)) && images.get(3).equal(&images.get(1)));
}

/// Images in formats that are not read (torchvision's ImageFolder reads WebP, BMP, TIFF too)
/// are left out with a warning that counts and names them, in a class folder and unlabelled.
#[test]
fn images_in_formats_that_are_not_read_are_counted_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 2, (8, 8));
    for name in ["a/x.webp", "a/y.WEBP", "b/deep/z.bmp"] {
        std::fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
        std::fs::write(root.join(name), b"image bytes").unwrap();
    }
    for extra in ["image_size = 8", "image_size = 8\nlabels = \"none\""] {
        let (splits, warnings) = load(&root, extra).unwrap();
        assert_eq!(splits.train.len(), 4, "{extra}");
        assert_eq!(warnings.len(), 1, "one for the split: {warnings:?}");
        assert!(
            warnings[0].contains("holds 3 image(s) in formats that are not read (.bmp, .webp; the first: ")
                && warnings[0].contains("x.webp), left out: convert them to JPEG or PNG"),
            "{extra}: {warnings:?}"
        );
    }
    // A folder of nothing but other formats: the error says why it holds no images.
    let webp = tmp.path().join("webp");
    for name in ["c/x.webp", "c/y.webp"] {
        std::fs::create_dir_all(webp.join(name).parent().unwrap()).unwrap();
        std::fs::write(webp.join(name), b"image bytes").unwrap();
    }
    for extra in ["image_size = 8", "image_size = 8\nlabels = \"none\""] {
        let err = error_of(&webp, extra);
        assert!(
            err.contains("holds no .jpg, .jpeg (.jpe, .jfif, .jif) or .png files")
                && err.contains("holds 2 image(s) in formats that are not read (.webp"),
            "{extra}: {err}"
        );
    }
}

#[test]
fn images_beside_the_class_folders_are_left_out_with_a_warning_that_names_one_or_refused_when_most() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 2, (8, 8));
    write_image(&root.join("loose-1.png"), 8, 8, 0);
    write_image(&root.join("loose-2.jpg"), 8, 8, 0);
    let (splits, warnings) = load(&root, "image_size = 8").unwrap();
    assert_eq!(splits.train.len(), 4);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("2 image(s) directly in")
            && warnings[0].contains("loose-1.png")
            && warnings[0].contains("labels = \"none\""),
        "{}",
        warnings[0]
    );

    // More images beside the class folders than in them (an unlabelled folder that gained a
    // sub-folder): reading it by folders would leave most out, so it is refused.
    for i in 3..=5 {
        write_image(&root.join(format!("loose-{i}.png")), 8, 8, 0);
    }
    let error = load(&root, "image_size = 8").unwrap_err().to_string();
    assert!(
        error.contains("5 image(s) directly in") && error.contains("more than the 4 in its class folders"),
        "{error}"
    );
    let (splits, _) = load(&root, "image_size = 8\nlabels = \"none\"").unwrap();
    assert_eq!(splits.train.len(), 9, "labels = \"none\" reads every image");
}

#[test]
fn streaming_and_memory_caches_give_the_same_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 5, (23, 31));
    let memory = build(&folder_toml(&root, "image_size = 12\ncache = \"memory\"")).unwrap();
    let none = build(&folder_toml(&root, "image_size = 12\ncache = \"none\"\nworkers = 3")).unwrap();
    let indices = [9, 0, 4, 5, 2];
    let (a, la) = memory.train.batch(&indices).unwrap();
    let (b, lb) = none.train.batch(&indices).unwrap();
    assert!(a.equal(&b) && la.equal(&lb));
    assert_eq!(none.train.workers(), 3);
    assert_eq!(memory.train.workers(), 1);
}

#[test]
fn images_smaller_than_the_crop_are_upscaled() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    write_image(&root.join("tiny/a.png"), 5, 3, 1);
    write_image(&root.join("tiny/b.jpg"), 1, 1, 2);
    let splits = build(&folder_toml(&root, "image_size = 32")).unwrap();
    let (images, _) = splits.train.batch(&[0, 1]).unwrap();
    assert_eq!(images.size(), [2, 3, 32, 32]);
    // A 1x1 image upscales to a constant square.
    let one = images.get(1).to_kind(tch::Kind::Float);
    let spread = (one.amax([1i64, 2].as_slice(), false) - one.amin([1i64, 2].as_slice(), false))
        .max()
        .double_value(&[]);
    assert_eq!(spread, 0.0);
}

fn error_of(train: &Path, extra: &str) -> String {
    match load(train, extra) {
        Ok(_) => panic!("expected an error for {}", train.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_or_empty_folders_are_named_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no/such/folder");
    let err = error_of(&missing, "");
    assert!(err.contains("dataset.train"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("<train>/<class>/<image>"), "{err}");

    let file = tmp.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    assert!(error_of(&file, "").contains("is not a folder"));

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = error_of(&empty, "");
    assert!(err.contains("has no class sub-folders"), "{err}");
    assert!(err.contains(&empty.display().to_string()), "{err}");

    // Class folders, but nothing that is an image.
    let no_images = tmp.path().join("no-images");
    std::fs::create_dir_all(no_images.join("cats")).unwrap();
    std::fs::write(no_images.join("cats/readme.md"), "x").unwrap();
    let err = error_of(&no_images, "");
    assert!(
        err.contains("holds no .jpg, .jpeg (.jpe, .jfif, .jif) or .png files"),
        "{err}"
    );
    assert!(err.contains("cats"), "{err}");

    // The test split missing.
    let root = tmp.path().join("ok");
    image_tree(&root, &["a"], 1, (8, 8));
    let err = error_of(&root, &format!("test = {}", quoted(&tmp.path().join("val"))));
    assert!(err.contains("dataset.test"), "{err}");
}

#[test]
fn empty_class_folders_warn_and_test_classes_must_match() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    image_tree(&train, &["a", "b"], 2, (8, 8));
    std::fs::create_dir_all(train.join("c")).unwrap();
    let (splits, warnings) = load(&train, "image_size = 8").unwrap();
    assert_eq!(splits.train.classes(), ["a", "b", "c"]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("1 of the 3 class folders") && warnings[0].contains(": c"),
        "{warnings:?}"
    );

    let test = tmp.path().join("test");
    image_tree(&test, &["a", "x"], 1, (8, 8));
    let err = error_of(&train, &format!("test = {}", quoted(&test)));
    assert!(
        err.contains("has classes [a, x], the training split has [a, b, c]"),
        "{err}"
    );
    // The check before any image is read (`byol-run validate`) finds it too.
    let config: ImageFolderConfig =
        toml::from_str(&format!("train = {}\ntest = {}\n", quoted(&train), quoted(&test))).unwrap();
    let err = byol_data::DatasetSpec::check(&config).unwrap_err().to_string();
    assert!(
        err.contains("has classes [a, x], the training split has [a, b, c]"),
        "{err}"
    );
    // The empty class folder is named as the likely cause.
    assert!(
        err.contains(&format!("({} holds no images: remove it", train.join("c").display())),
        "{err}"
    );

    // A test split of images without class folders, and a training split without them (read
    // unlabelled) beside a test split: the check says what loading says.
    let check = |train: &Path, test: &Path| {
        let config: ImageFolderConfig =
            toml::from_str(&format!("train = {}\ntest = {}\n", quoted(train), quoted(test))).unwrap();
        let checked = byol_data::DatasetSpec::check(&config).unwrap_err().to_string();
        assert_eq!(checked, error_of(train, &format!("test = {}", quoted(test))));
        checked
    };
    let err = check(&train, &test.join("a"));
    assert!(
        err.contains("holds images but no class sub-folders") && err.contains("needs their labels"),
        "{err}"
    );
    let err = check(&train.join("a"), &test);
    assert!(
        err.contains("dataset.test needs labelled training images") && err.contains("is unlabelled"),
        "{err}"
    );

    // Names that look the same but are encoded differently (é as one code point, or e and a
    // combining accent) show their code points.
    let (composed, decomposed) = ("caf\u{e9}", "cafe\u{301}");
    let nfc = tmp.path().join("nfc");
    let nfd = tmp.path().join("nfd");
    image_tree(&nfc, &["b", composed], 1, (8, 8));
    image_tree(&nfd, &["b", decomposed], 1, (8, 8));
    let err = error_of(&nfc, &format!("test = {}", quoted(&nfd)));
    assert!(
        err.contains("(c a f e U+0301)") && err.contains("(c a f U+00E9)") && !err.contains("b ("),
        "{err}"
    );
}

/// Unreadable files of every kind next to good ones.
fn tree_with_bad_images(root: &Path) -> Vec<PathBuf> {
    image_tree(root, &["a", "b"], 4, (12, 10));
    let good_jpeg = std::fs::read(root.join("a/001.jpg")).unwrap();
    let bad = vec![
        (
            root.join("a/900-garbage.jpg"),
            b"\xff\xd8\xff\xe0 this is not a JPEG at all".to_vec(),
        ),
        (
            root.join("a/901-truncated.jpg"),
            good_jpeg[..good_jpeg.len() * 2 / 3].to_vec(),
        ),
        (root.join("b/902-empty.png"), Vec::new()),
        (root.join("b/903-text.png"), b"hello, I am text".to_vec()),
    ];
    for (path, bytes) in &bad {
        std::fs::write(path, bytes).unwrap();
    }
    bad.into_iter().map(|(p, _)| p).collect()
}

#[test]
fn bad_images_are_skipped_with_one_counted_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    let bad = tree_with_bad_images(&root);
    for file in &bad {
        assert!(decode_square(file, 8).is_err(), "{} decodes", file.display());
    }
    let (splits, warnings) = load(&root, "image_size = 8").unwrap();
    assert_eq!(
        splits.train.len(),
        8,
        "the 4 bad images are left out of the memory cache"
    );
    assert_eq!(warnings.len(), 1, "one line, not one per file: {warnings:?}");
    let w = &warnings[0];
    assert!(w.contains("skipped 4 unreadable image(s) of 12"), "{w}");
    // The first three by path, each with its reason; the fourth is counted.
    for file in &bad[..3] {
        assert!(
            w.contains(&format!("{}: ", file.display())),
            "names {}: {w}",
            file.display()
        );
    }
    assert!(
        !w.contains(&bad[3].display().to_string()) && w.contains("; and 1 more)"),
        "{w}"
    );
    assert!(w.contains("on_bad_image = \"error\""), "{w}");
}

/// A skipped image whose name holds a line break is named on the warning's one line, escaped
/// as in the run's skipped-images.txt.
#[test]
fn a_skipped_images_name_stays_on_the_warnings_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 2, (12, 10));
    std::fs::write(root.join("a/new\nline.png"), "not a png").unwrap();
    let (_, warnings) = load(&root, "image_size = 8").unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].contains("new\\nline.png: ") && !warnings[0].contains('\n'),
        "{warnings:?}"
    );
}

/// A link to a missing file is an unreadable image like the others: counted and named when
/// skipped, the error when asked, never left out without a word.
#[test]
fn a_link_to_a_missing_file_is_an_unreadable_image() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 2, (12, 10));
    let link = root.join("b/zz-gone.jpg");
    std::os::unix::fs::symlink(root.join("b/deleted.jpg"), &link).unwrap();
    let (splits, warnings) = load(&root, "image_size = 8").unwrap();
    assert_eq!(splits.train.len(), 4);
    assert!(
        warnings.len() == 1 && warnings[0].contains("skipped 1 unreadable image(s) of 5"),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains(&format!(
            "{}: a broken link: it leads to {}, which does not exist",
            link.display(),
            root.join("b/deleted.jpg").display()
        )),
        "{warnings:?}"
    );
    let err = error_of(&root, "image_size = 8\non_bad_image = \"error\"");
    assert!(
        err.contains("zz-gone.jpg") && err.contains("a broken link: it leads to"),
        "said as the skip says it: {err}"
    );
}

#[test]
fn bad_images_stop_with_the_path_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    let bad = tree_with_bad_images(&root);
    // An empty file is known from the listing, before any image is decoded, in memory or
    // streaming.
    let streaming = "image_size = 8\non_bad_image = \"error\"\ncache = \"none\"";
    for strict in ["image_size = 8\non_bad_image = \"error\"", streaming] {
        let err = error_of(&root, strict);
        assert!(
            err.contains(&bad[2].display().to_string()) && err.contains("empty file"),
            "{err}"
        );
    }
    std::fs::remove_file(&bad[2]).unwrap();
    let err = error_of(&root, "image_size = 8\non_bad_image = \"error\"");
    assert!(err.contains(&bad[0].display().to_string()), "{err}");
    assert!(err.contains("on_bad_image = \"skip\""), "{err}");

    // Streaming: the error comes with the batch that holds the file.
    let (splits, _) = load(&root, streaming).unwrap();
    assert_eq!(splits.train.len(), 11);
    assert!(splits.train.batch(&[0, 1]).is_ok());
    let err = splits.train.batch(&[0, 5]).unwrap_err().to_string();
    assert!(err.contains("901-truncated.jpg"), "{err}");
}

#[test]
fn streaming_replaces_bad_images_within_the_batch_and_warns_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    tree_with_bad_images(&root);
    let (splits, warnings) = load(&root, "image_size = 8\ncache = \"none\"").unwrap();
    assert!(warnings.is_empty());
    let train = splits.train;
    // Sorted: a/000 a/001 a/002 a/003 a/900 a/901 b/000 ... b/902 b/903.
    assert_eq!(train.len(), 12);
    assert!(train.take_warning().is_none());
    let (images, labels) = train.batch(&[4, 0, 5, 7]).unwrap();
    let (good, good_labels) = train.batch(&[0, 0, 7, 7]).unwrap();
    assert!(
        images.equal(&good),
        "a bad image repeats the next good one of the batch"
    );
    assert!(labels.equal(&good_labels));
    let w = train.take_warning().expect("a warning");
    assert!(w.contains("skipped 2 unreadable image(s) of 12"), "{w}");
    assert!(train.take_warning().is_none(), "reported once");
    // Seen again: no new line; a new bad one: a new count.
    let _ = train.batch(&[4, 5, 0]).unwrap();
    assert!(train.take_warning().is_none());
    let _ = train.batch(&[10, 1]).unwrap();
    assert!(train.take_warning().unwrap().contains("skipped 3 unreadable"));
    // A batch of bad images only takes the first readable image after the batch's first index
    // in the split (b/000 after a/901), wrapping around at the end (b/903 to a/000).
    let (images, labels) = train.batch(&[5, 4]).unwrap();
    let (good, good_labels) = train.batch(&[6, 6]).unwrap();
    assert!(images.equal(&good) && labels.equal(&good_labels));
    let (images, labels) = train.batch(&[11, 10]).unwrap();
    let (good, good_labels) = train.batch(&[0, 0]).unwrap();
    assert!(images.equal(&good) && labels.equal(&good_labels));
}

#[test]
fn evaluation_batches_leave_bad_images_out_instead_of_repeating_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    tree_with_bad_images(&root);
    let (splits, _) = load(&root, "image_size = 8\ncache = \"none\"").unwrap();
    let loader = byol_data::BatchLoader::new(splits.train.clone(), 4, false, false, 0);
    // a/900 (4) and a/901 (5) are unreadable: two rows, those of a/000 and b/001, in order.
    let (images, labels) = loader.load_readable(&[4, 0, 5, 7], tch::Device::Cpu).unwrap();
    let (good, good_labels) = splits.train.batch(&[0, 7]).unwrap();
    assert!(images.equal(&good) && labels.equal(&good_labels));
    let (images, labels) = loader.load_readable(&[5, 4], tch::Device::Cpu).unwrap();
    assert_eq!((images.size(), labels.size()), (vec![0, 3, 8, 8], vec![0]));
}

#[test]
fn the_loader_fills_a_batch_of_bad_images_only_from_outside_it_whatever_the_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    tree_with_bad_images(&root);
    let (splits, _) = load(&root, "image_size = 8\ncache = \"none\"").unwrap();
    let train = splits.train;
    for workers in [1, 3] {
        // In order, two per batch: [4, 5] (a/900, a/901) and [10, 11] (b/902, b/903) are bad.
        let mut loader = byol_data::BatchLoader::new(train.clone(), 2, false, false, 0);
        loader.workers = workers;
        let batches: Vec<_> = loader.prefetch(0, 0, tch::Device::Cpu).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 6);
        for (batch, fill) in [(2, 6), (5, 0)] {
            let (good, good_labels) = train.batch(&[fill, fill]).unwrap();
            assert!(
                batches[batch].images.equal(&good) && batches[batch].labels.equal(&good_labels),
                "workers = {workers}: batch {batch} repeats image {fill}"
            );
        }
    }

    // Only when the split has no readable image left does the batch fail, naming a file.
    let bad_only = tmp.path().join("bad-only");
    std::fs::create_dir_all(bad_only.join("a")).unwrap();
    for name in ["x.jpg", "y.png"] {
        std::fs::write(bad_only.join("a").join(name), b"nope").unwrap();
    }
    let (splits, _) = load(&bad_only, "image_size = 8\ncache = \"none\"").unwrap();
    let err = splits.train.batch(&[1]).unwrap_err().to_string();
    assert!(
        err.contains("none of the 2 images of the split could be read") && err.contains("y.png"),
        "{err}"
    );
}

#[test]
fn no_readable_image_at_all_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/x.jpg"), b"nope").unwrap();
    let err = error_of(&root, "");
    assert!(err.contains("none of the 1 images"), "{err}");
    assert!(err.contains("x.jpg"), "{err}");
}

#[test]
fn a_file_list_picks_the_images() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b", "c"], 4, (8, 8));
    let list = tmp.path().join("subset.txt");
    // A byte-order mark, comments, blank lines, spaces and `find .`'s ./ prefix are all fine.
    std::fs::write(&list, "\u{feff}# a subset\nb/002.png\n\n  ./a/001.jpg  \nb/./000.png\n").unwrap();
    let (splits, warnings) = load(&root, &format!("image_size = 8\nfile_list = {}", quoted(&list))).unwrap();
    let train = splits.train;
    assert_eq!(train.classes(), ["a", "b", "c"], "classes are all folders");
    assert_eq!(train.len(), 3);
    assert_eq!(warnings.len(), 1, "class c has no listed image: {warnings:?}");
    let (images, labels) = train.batch(&[0, 1, 2]).unwrap();
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [0, 1, 1]);
    let expected: Vec<u8> = ["a/001.jpg", "b/002.png", "b/000.png"]
        .iter()
        .flat_map(|f| decode_square(&root.join(f), 8).unwrap())
        .collect();
    assert_eq!(Vec::<u8>::try_from(images.flatten(0, -1)).unwrap(), expected);

    // One file named twice, spelt two ways: read twice, and told.
    std::fs::write(&list, "b/002.png\n./a/001.jpg\na/001.jpg\n").unwrap();
    let (splits, warnings) = load(&root, &format!("image_size = 8\nfile_list = {}", quoted(&list))).unwrap();
    assert_eq!(splits.train.len(), 3);
    let all = warnings.join("\n");
    assert!(
        all.contains("subset.txt names 1 file(s) again that it named before (the first: ") && all.contains("a/001.jpg"),
        "{all}"
    );
}

#[test]
fn file_list_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 2, (8, 8));
    let list = tmp.path().join("list.txt");
    let with = |text: &str| {
        std::fs::write(&list, text).unwrap();
        error_of(&root, &format!("file_list = {}", quoted(&list)))
    };
    let err = with("a/000.png\nb/777.png\n");
    assert!(
        err.contains("list.txt line 2") && err.contains("777.png does not exist"),
        "{err}"
    );
    std::fs::create_dir_all(root.join("a/deeper")).unwrap();
    let err = with("a/deeper\n");
    assert!(err.contains("deeper is a folder, not an image file"), "{err}");
    // A file the folder read alone leaves out: not an image's name (a text file would stop the
    // run at its first epoch; another format's, be read by its bytes).
    for name in ["notes.txt", "photo.webp"] {
        std::fs::copy(root.join("a/000.png"), root.join("a").join(name)).unwrap();
        let err = with(&format!("a/000.png\na/{name}\n"));
        assert!(
            err.contains(&format!("line 2: 'a/{name}' is not named like a JPEG or PNG image")),
            "{err}"
        );
        let unlabelled = error_of(&root, &format!("labels = \"none\"\nfile_list = {}", quoted(&list)));
        assert!(
            unlabelled.contains(&format!("line 2: 'a/{name}' is not named like")),
            "{unlabelled}"
        );
        std::fs::remove_file(root.join("a").join(name)).unwrap();
    }
    // Entries that are there but no file: each said for what it is (a pipe is never opened).
    std::os::unix::fs::symlink("gone.png", root.join("a/dangling.png")).unwrap();
    std::os::unix::fs::symlink("loop2.png", root.join("a/loop1.png")).unwrap();
    std::os::unix::fs::symlink("loop1.png", root.join("a/loop2.png")).unwrap();
    let fifo = std::ffi::CString::new(root.join("a/pipe.png").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A class folder that is a link to another's: its images would be of both classes.
    std::os::unix::fs::symlink("a", root.join("kitty")).unwrap();
    let err = with("a/000.png\nkitty/000.png\n");
    assert!(
        err.contains("line 2: 'kitty/000.png' is in kitty, a link to the class folder a"),
        "{err}"
    );
    std::fs::remove_file(root.join("kitty")).unwrap();
    // An image that is a link to another class folder's image: its label would be two.
    std::os::unix::fs::symlink("../a/000.png", root.join("b/link.png")).unwrap();
    let err = with("b/000.png\nb/link.png\n");
    assert!(
        err.contains("line 2: 'b/link.png' is a link to") && err.contains("an image of the class folder a"),
        "{err}"
    );
    // One into its own class folder, or to a file outside the classes, keeps its label.
    std::os::unix::fs::symlink("000.png", root.join("a/same.png")).unwrap();
    std::fs::copy(root.join("a/000.png"), tmp.path().join("outside.png")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside.png"), root.join("b/outside.png")).unwrap();
    std::fs::write(&list, "a/same.png\nb/outside.png\n").unwrap();
    let (splits, _) = load(&root, &format!("file_list = {}", quoted(&list))).unwrap();
    assert_eq!(splits.train.len(), 2);
    for name in ["b/link.png", "a/same.png", "b/outside.png"] {
        std::fs::remove_file(root.join(name)).unwrap();
    }
    for (entry, what) in [
        (
            "a/dangling.png",
            "is a broken link: it leads to gone.png, which does not exist",
        ),
        ("a/loop1.png", "is a link that leads round in a loop"),
        ("a/pipe.png", "is not a file (a pipe, a socket or a device)"),
    ] {
        let err = with(&format!("{entry}\n"));
        assert!(
            err.contains(&format!("{entry} {what}")) && err.contains("fix the list"),
            "{err}"
        );
    }
    let err = with("a/000.png\n000.png\n");
    assert!(err.contains("line 2: '000.png' is not inside a class folder"), "{err}");
    let err = with("zzz/000.png\n");
    assert!(
        err.contains("line 1: 'zzz/000.png' is in zzz, which is no class folder of")
            && err.contains("(its 2 classes: a, b)"),
        "{err}"
    );
    let err = with("A/000.png\n");
    assert!(
        err.contains("'A/000.png' is in A, which is no class folder")
            && err.contains("the class folder a differs from it in case only"),
        "{err}"
    );
    let err = with("b\n");
    assert!(
        err.contains("line 1: 'b' names the class folder b, not an image in it"),
        "{err}"
    );
    let err = with("# nothing\n");
    assert!(err.contains("names no images"), "{err}");
    // A path that climbs out would pass for its first folder's class.
    let err = with("a/../b/000.png\n");
    assert!(err.contains("line 1: 'a/../b/000.png' leaves the folder"), "{err}");
    let err = error_of(&root, &format!("file_list = {}", quoted(&tmp.path().join("nope.txt"))));
    assert!(
        err.contains("dataset.file_list: cannot read") && err.contains("nope.txt"),
        "{err}"
    );
}

#[test]
fn limit_per_class() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 5, (8, 8));
    let (splits, _) = load(&root, "image_size = 8\nlimit_per_class = 2").unwrap();
    assert_eq!(splits.train.len(), 4);
}

/// A file cut anywhere gives an error of one line (decoders' messages may hold line breaks, and
/// the message becomes part of a one-line warning), or, cut in its trailing bytes, the image.
#[test]
fn a_truncated_image_gives_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["cut.jpg", "cut.png"] {
        let path = tmp.path().join(name);
        write_image(&path, 23, 17, 5);
        let bytes = std::fs::read(&path).unwrap();
        let mut errors = 0;
        for end in 1..bytes.len() {
            if let Err(e) = decode_rgb(&bytes[..end]) {
                errors += 1;
                assert!(
                    !e.contains('\n') && !e.contains('\r') && e == e.trim(),
                    "{name} cut at {end}: {e:?}"
                );
            }
        }
        assert!(
            errors > bytes.len() / 2,
            "{name}: {errors} errors of {} cuts",
            bytes.len()
        );
    }
}

/// A link inside a class folder to a folder above it, into another class folder, or to a pipe
/// named like an image: each image is read once, under the class folder that holds it (links
/// from `a` into `b` would otherwise give `b`'s images the label `a` as well), and what was
/// passed over is told. The same tree unlabelled reads each image once too.
#[test]
fn links_out_of_a_class_folder_read_no_image_twice_nor_under_another_label() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b", "c"], 2, (16, 16));
    write_image(&root.join("b/sub/deep.png"), 16, 16, 7);
    write_image(&root.join("c/x/deep.png"), 16, 16, 8);
    std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
    std::os::unix::fs::symlink("../b", root.join("a/bb")).unwrap();
    std::os::unix::fs::symlink("../b/sub", root.join("a/sub")).unwrap();
    // The temporary folder, above the root.
    std::os::unix::fs::symlink("../..", root.join("c/top")).unwrap();
    // Links to images read where they are: left out, each read once under its own label. A link
    // to an image outside the split is read.
    std::os::unix::fs::symlink("../b/sub/deep.png", root.join("a/deep-of-b.png")).unwrap();
    std::os::unix::fs::symlink(root.join("c/x/deep.png"), root.join("b/sub/deep-of-c.png")).unwrap();
    std::os::unix::fs::symlink("000.png", root.join("c/again.png")).unwrap();
    write_image(&tmp.path().join("outside.png"), 16, 16, 9);
    std::os::unix::fs::symlink("../../outside.png", root.join("a/outside.png")).unwrap();
    // A class folder that is another class folder: left empty, not read twice, and c's own
    // sub-folder x still c's.
    std::os::unix::fs::symlink("c", root.join("d")).unwrap();
    let fifo = std::ffi::CString::new(root.join("b/pipe.jpg").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let (splits, warnings) = load(&root, "image_size = 16").unwrap();
    let train = splits.train;
    assert_eq!(train.classes(), ["a", "b", "c", "d"]);
    let (_, labels) = train.batch(&(0..train.len()).collect::<Vec<_>>()).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(&labels).unwrap(),
        [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "{warnings:?}"
    );
    let all = warnings.join("\n");
    assert!(
        all.contains("5 folder(s) under") && all.contains("were not read there") && all.contains("train/a/bb"),
        "{all}"
    );
    assert!(
        all.contains("1 entries under") && all.contains("not files") && all.contains("b/pipe.jpg"),
        "{all}"
    );
    assert!(
        all.contains("3 image(s) under") && all.contains("read where they are") && all.contains("a/deep-of-b.png"),
        "{all}"
    );
    assert!(
        all.contains("class folders of") && all.contains(": d"),
        "d is empty: {all}"
    );

    let (splits, warnings) = load(&root, "image_size = 16\nlabels = \"none\"").unwrap();
    assert_eq!(splits.train.len(), 9, "{warnings:?}");
}

/// `limit_per_class` takes the first files of each class folder, readable or not: a class whose
/// first files are all unreadable has no image left, which is told (its label still counts).
#[test]
fn a_class_left_without_readable_images_is_told() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["a", "b"], 4, (16, 16));
    std::fs::write(root.join("a/-text.jpg"), "not an image").unwrap();
    std::fs::write(root.join("a/-zero.jpg"), b"").unwrap();
    let (splits, warnings) = load(&root, "image_size = 16\nlimit_per_class = 2").unwrap();
    assert_eq!(splits.train.len(), 2, "{warnings:?}");
    let all = warnings.join("\n");
    assert!(
        all.contains("1 of the 2 classes of")
            && all.contains("no readable image left")
            && all.contains(": a (2 unreadable)"),
        "{all}"
    );
    assert!(all.contains("limit_per_class takes the first files"), "{all}");

    let (splits, warnings) = load(&root, "image_size = 16").unwrap();
    assert_eq!(splits.train.len(), 8);
    assert!(!warnings.join("\n").contains("no readable image left"), "{warnings:?}");
}

/// Two class folders that are one folder (a link beside the real one, sorting first): the real
/// folder's class gets the images, the link's stays empty; and a class folder that links to a
/// sub-folder of another takes that sub-folder's images, which its parent class does not read.
#[test]
fn a_class_folder_that_links_to_another_takes_nothing_from_the_real_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    image_tree(&root, &["cat", "dog"], 2, (16, 16));
    write_image(&root.join("dog/puppies/0.png"), 16, 16, 9);
    std::os::unix::fs::symlink("cat", root.join("a_cat")).unwrap();
    std::os::unix::fs::symlink("dog/puppies", root.join("puppy")).unwrap();
    let (splits, warnings) = load(&root, "image_size = 16").unwrap();
    let train = splits.train;
    assert_eq!(train.classes(), ["a_cat", "cat", "dog", "puppy"]);
    let (_, labels) = train.batch(&(0..train.len()).collect::<Vec<_>>()).unwrap();
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [1, 1, 2, 2, 3], "{warnings:?}");
    let all = warnings.join("\n");
    assert!(all.contains("class folders of") && all.contains(": a_cat"), "{all}");
}

/// A folder whose path is longer than the system takes (4096 bytes on Linux) cannot be looked
/// at: the listing says so, naming it, instead of leaving its images out without a word. (The
/// tree is made by python3 from inside it, where each step's path is short.)
#[test]
fn a_folder_past_the_longest_path_is_named_not_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    image_tree(&train, &["a", "b"], 2, (8, 8));
    let deep = "import os, sys\nos.chdir(sys.argv[1])\nfor _ in range(45):\n    name = 'd' * 100\n    \
                os.mkdir(name)\n    os.chdir(name)\nopen('x.png', 'wb').write(open(sys.argv[2], 'rb').read())\n";
    let made = std::process::Command::new("python3")
        .args(["-c", deep])
        .arg(train.join("a"))
        .arg(train.join("a/000.png"))
        .status()
        .expect("python3");
    assert!(made.success());
    let Err(err) = load(&train, "") else {
        panic!("the deep folder was left out without a word");
    };
    let err = err.to_string();
    assert!(err.contains("cannot look at") && err.contains("ddddd"), "{err}");
}

/// Names are bytes on Unix: class folders (and files) whose names differ only in bytes that are
/// not UTF-8 are told apart, their bytes written as `\xNN`, so that they are two classes and a
/// renamed file changes the split's record.
#[test]
fn names_that_are_not_utf8_are_told_apart() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    let name = |bytes: &[u8]| std::ffi::OsStr::from_bytes(bytes).to_owned();
    for (class, seed) in [(&b"c\xfed"[..], 1), (&b"c\xffd"[..], 2)] {
        write_image(&train.join(name(class)).join(name(b"x\xfe.png")), 8, 8, seed);
    }
    let (splits, _) = load(&train, "image_size = 8").unwrap();
    assert_eq!(splits.train.classes(), ["c\\xfed", "c\\xffd"]);
    let before = splits.train.content().unwrap();
    std::fs::rename(
        train.join(name(b"c\xffd")).join(name(b"x\xfe.png")),
        train.join(name(b"c\xffd")).join(name(b"x\xff.png")),
    )
    .unwrap();
    let (splits, _) = load(&train, "image_size = 8").unwrap();
    let after = splits.train.content().unwrap();
    assert_ne!(before.digest, after.digest, "a renamed file is another record");
    let parts: Vec<&str> = after.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(parts, ["c\\xfed/", "c\\xffd/"]);
}

/// Images that cannot all be held in memory are refused before the allocation, which would
/// abort the process without a word, saying how to read them instead.
#[test]
fn a_memory_cache_larger_than_the_machine_is_refused_with_the_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    image_tree(&train, &["a", "b"], 2, (8, 8));
    // 4 images at 2e9 pixels a side: 48 exabytes, more than any machine has.
    let Err(err) = load(&train, "image_size = 2000000000") else {
        panic!("48 exabytes were allocated");
    };
    let err = err.to_string();
    assert!(
        err.contains("the 4 images of") && err.contains("more than the") && err.contains("cache = \"none\""),
        "{err}"
    );
}
