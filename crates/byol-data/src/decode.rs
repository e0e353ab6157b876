//! Image files to RGB pixels, and the centre-square crop + resize the datasets store.
//!
//! JPEG (baseline and progressive; grayscale, YCbCr, CMYK and YCCK) goes straight to zune-jpeg
//! in strict mode, so truncated and corrupt files are errors rather than grey fill; everything
//! else (PNG: grayscale, palette, alpha, 16-bit) goes through `image`. Output is always 8-bit
//! RGB; alpha is dropped, as PIL's `convert("RGB")` does.

use std::path::Path;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// An 8-bit RGB image, pixels interleaved (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Largest side accepted, in pixels, for every format (a guard against decompression bombs).
const MAX_SIDE: usize = 1 << 14;

/// Bytes a decoder may allocate: a 16-bit RGBA image of the largest size (8 bytes a pixel), so
/// that any image within [`MAX_SIDE`] decodes whatever its format and depth.
const MAX_ALLOC: u64 = (MAX_SIDE * MAX_SIDE * 8) as u64;

/// The same refusal for every format, checked from the header before decoding.
fn check_size(width: usize, height: usize) -> Result<(), String> {
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "{width}x{height} pixels is over the limit of {MAX_SIDE} pixels per side (a guard against \
             decompression bombs): downscale the image to at most {MAX_SIDE} pixels on its longer side"
        ));
    }
    Ok(())
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes a JPEG or PNG file's bytes to RGB. The error says what is wrong with the data.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    // A decoder bug on hostile input must not take the loader down: a panic is a bad image.
    std::panic::catch_unwind(|| {
        if is_jpeg(bytes) {
            decode_jpeg(bytes)
        } else {
            decode_other(bytes)
        }
    })
    .unwrap_or_else(|_| Err("the decoder panicked on this file".into()))
    // Decoders' messages may span lines; each becomes part of a one-line warning.
    .map_err(|message| message.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Strict, so that a truncated or corrupted scan is an error rather than gray pixels, as PIL
/// refuses a truncated file; but bytes between two headers, which libjpeg (PIL, torchvision)
/// only warns about ("extraneous bytes before marker") and which some photo collections hold,
/// are decoded past, in a file that ends whole (with its end marker). The retry keys on
/// zune-jpeg's message for them (0.5's "[strict-mode]: Extra bytes between headers"); a test
/// decodes such a file.
fn decode_jpeg(bytes: &[u8]) -> Result<Rgb, String> {
    match decode_jpeg_with(bytes, true) {
        Err(e) if e.contains("Extra bytes between headers") && ends_whole(bytes) => decode_jpeg_with(bytes, false),
        decoded => decoded,
    }
}

/// Whether a JPEG's bytes end with its end-of-image marker (trailing zero padding allowed).
fn ends_whole(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

fn decode_jpeg_with(bytes: &[u8], strict: bool) -> Result<Rgb, String> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(strict)
        // JPEG's own limit: the size check below gives the message, the same for every format.
        .set_max_width(u16::MAX as usize)
        .set_max_height(u16::MAX as usize);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| format!("invalid JPEG: {e:?}"))?;
    let info = decoder.info().ok_or("invalid JPEG: no frame header")?;
    let (width, height) = (info.width as u32, info.height as u32);
    check_size(width as usize, height as usize)?;
    let pixels = decoder.decode().map_err(|e| format!("invalid JPEG: {e:?}"))?;
    if pixels.len() != 3 * width as usize * height as usize {
        return Err(format!(
            "invalid JPEG: decoded {} bytes for {width}x{height} RGB",
            pixels.len()
        ));
    }
    Ok(Rgb { width, height, pixels })
}

fn decode_other(bytes: &[u8]) -> Result<Rgb, String> {
    let format = image::guess_format(bytes).map_err(|_| "not a JPEG or PNG file".to_string())?;
    let header = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = header
        .into_dimensions()
        .map_err(|e| format!("invalid {format:?}: {e}"))?;
    check_size(width as usize, height as usize)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE as u32);
    limits.max_image_height = Some(MAX_SIDE as u32);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| format!("invalid {format:?}: {e}"))?
        .to_rgb8();
    let (width, height) = image.dimensions();
    Ok(Rgb {
        width,
        height,
        pixels: image.into_raw(),
    })
}

thread_local! {
    /// Resizers keep scratch buffers: one per thread.
    static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
}

/// Resizes `image` (or the window `options` crops) to `size` x `size`, writing planar CHW bytes
/// into `out`. Typed to 8-bit RGB: the untyped `Resizer::resize` picks the pixel type at run
/// time, so it compiles every pixel type's filters, two thirds of this crate's machine code.
pub(crate) fn resize_rgb_into(image: &Rgb, size: u32, options: &ResizeOptions, out: &mut [u8]) -> Result<(), String> {
    let src =
        TypedImageRef::<U8x3>::from_buffer(image.width, image.height, &image.pixels).map_err(|e| e.to_string())?;
    let mut resized = vec![0u8; out.len()];
    let mut dst = TypedImage::<U8x3>::from_buffer(size, size, &mut resized).map_err(|e| e.to_string())?;
    RESIZER
        .with(|r| r.borrow_mut().resize_typed(&src, &mut dst, options))
        .map_err(|e| format!("resize failed: {e}"))?;
    hwc_to_chw(&resized, out);
    Ok(())
}

/// Resizes the central square of `image` (side = its shorter side) to `size` x `size` with an
/// antialiased bilinear filter (PIL's `BILINEAR`), cropping before resizing, and writes the
/// result as planar CHW bytes into `out` (`3 * size * size` bytes). Images smaller than `size`
/// are upscaled.
pub fn center_square_into(image: &Rgb, size: u32, out: &mut [u8]) -> Result<(), String> {
    let plane = (size * size) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer of a {size}x{size} RGB image");
    let (w, h) = (image.width, image.height);
    if (w, h) == (size, size) {
        hwc_to_chw(&image.pixels, out);
        return Ok(());
    }
    let side = w.min(h) as f64;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop((w as f64 - side) / 2.0, (h as f64 - side) / 2.0, side, side);
    resize_rgb_into(image, size, &options, out)
}

/// Interleaved RGB to three planes.
pub fn hwc_to_chw(hwc: &[u8], out: &mut [u8]) {
    let plane = hwc.len() / 3;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
}

/// Reads `path`, decodes it, and writes its centre square resized to `size` as CHW bytes into
/// `out`. The error is the reason, without the path.
pub fn read_square_into(path: &Path, size: u32, out: &mut [u8]) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let image = decode_rgb(&bytes)?;
    center_square_into(&image, size, out)
}
