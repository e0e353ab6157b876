//! Image files to RGB pixels, and the centre-square crop + resize the datasets store.
//!
//! JPEG (baseline, progressive and arithmetic-coded; grayscale, YCbCr, CMYK and YCCK) goes to
//! libjpeg-turbo's decoder, as in PIL and torchvision, with a truncated file an error rather than
//! gray fill; everything else (PNG: grayscale, palette, alpha, 16-bit) goes through `image`.
//! Output is always 8-bit RGB, PIL's `convert("RGB")` pixels: alpha is dropped.

use std::path::Path;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};

/// An 8-bit RGB image, pixels interleaved (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Largest side accepted, in pixels, for every format (a guard against decompression bombs).
const MAX_SIDE: usize = 1 << 14;

/// Most pixels accepted, for every format: PIL's own limit (`Image.MAX_IMAGE_PIXELS`, twice of
/// which raises `DecompressionBombError`), so that a file PIL refuses is refused here too. A
/// 16384-pixel square is 268 million pixels, 2 GiB to decode at 16-bit RGBA: a small file can
/// hold one.
const MAX_PIXELS: usize = 2 * 89_478_485;

/// Bytes a decoder may allocate: a 16-bit RGBA image of the most pixels (8 bytes a pixel), so
/// that any image within the limits decodes whatever its format and depth.
const MAX_ALLOC: u64 = (MAX_PIXELS * 8) as u64;

/// The same refusal for every format, checked from the header before decoding.
fn check_size(width: usize, height: usize) -> Result<(), String> {
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "{width}x{height} pixels is over the limit of {MAX_SIDE} pixels per side (a guard against \
             decompression bombs): downscale the image to at most {MAX_SIDE} pixels on its longer side"
        ));
    }
    if width * height > MAX_PIXELS {
        return Err(format!(
            "{width}x{height} pixels is {} pixels, over the limit of {MAX_PIXELS} (PIL's, a guard against \
             decompression bombs): downscale the image",
            width * height
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

/// libjpeg-turbo's decoder (mozjpeg's fork), with the settings PIL and torchvision use (the
/// accurate integer inverse DCT, smooth chroma upsampling): the same pixels as theirs. Like PIL,
/// it refuses a file whose data ends early (libjpeg would fill the rest with gray and warn) and
/// decodes past what libjpeg merely warns about, such as bytes between two headers.
fn decode_jpeg(bytes: &[u8]) -> Result<Rgb, String> {
    let decoded = std::panic::catch_unwind(|| -> Result<Rgb, String> {
        let invalid = |e: std::io::Error| format!("invalid JPEG: {e}");
        let decompress = mozjpeg::Decompress::builder()
            .with_err(strict_errors())
            .from_mem(bytes)
            .map_err(invalid)?;
        let (width, height) = (decompress.width(), decompress.height());
        check_size(width, height)?;
        let cmyk = matches!(
            decompress.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        );
        let colour_space = if cmyk {
            mozjpeg::ColorSpace::JCS_CMYK
        } else {
            mozjpeg::ColorSpace::JCS_RGB
        };
        let mut started = decompress.to_colorspace(colour_space).map_err(invalid)?;
        let samples: Vec<u8> = started.read_scanlines().map_err(invalid)?;
        started.finish().map_err(invalid)?;
        let pixels = if cmyk { cmyk_to_rgb(&samples) } else { samples };
        if pixels.len() != 3 * width * height {
            return Err(format!(
                "invalid JPEG: decoded {} bytes for {width}x{height} RGB",
                pixels.len()
            ));
        }
        Ok(Rgb {
            width: width as u32,
            height: height as u32,
            pixels,
        })
    });
    // libjpeg's errors unwind out of it as a String (see `strict_errors`).
    decoded.unwrap_or_else(|panic| {
        Err(match panic.downcast::<String>() {
            Ok(message) => format!("invalid JPEG: {message}"),
            Err(_) => "the JPEG decoder panicked on this file".into(),
        })
    })
}

/// libjpeg's error handling: an error, or the warning that the data ended early, unwinds out of
/// the decoder with libjpeg's message (`resume_unwind`: no panic hook prints it); other
/// warnings are ignored, as PIL ignores them.
fn strict_errors() -> mozjpeg_sys::jpeg_error_mgr {
    use mozjpeg_sys::{jpeg_common_struct, JWRN_JPEG_EOF};
    fn message(cinfo: &mut jpeg_common_struct) -> String {
        // SAFETY: libjpeg calls these with its decompressor, whose `err` is this manager.
        let err = unsafe { &*cinfo.err };
        let mut buffer = [0u8; 200]; // JMSG_LENGTH_MAX
        match err.format_message {
            Some(format) => {
                // SAFETY: format_message writes at most JMSG_LENGTH_MAX bytes, NUL-terminated, into
                // its buffer; the binding types that buffer as 80 read-only bytes, too few.
                let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
                    unsafe { std::mem::transmute(format) };
                unsafe { format(cinfo, buffer.as_mut_ptr()) };
                let text = buffer.split(|&b| b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(text).into_owned()
            }
            None => format!("libjpeg error {}", err.msg_code),
        }
    }
    extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
        std::panic::resume_unwind(Box::new(message(cinfo)));
    }
    extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: std::os::raw::c_int) {
        // SAFETY: as in `message`.
        let code = unsafe { (*cinfo.err).msg_code };
        if level < 0 && code == JWRN_JPEG_EOF {
            std::panic::resume_unwind(Box::new(format!("{} (the file is cut short)", message(cinfo))));
        }
    }
    // SAFETY: a zeroed manager is what jpeg_std_error fills in.
    let mut errors: mozjpeg_sys::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut errors) };
    errors.error_exit = Some(error_exit);
    errors.emit_message = Some(emit_message);
    errors
}

/// Whether the JPEG decoder runs its SIMD code on this CPU: compiled in when `nasm` was found as
/// byol-run was built (the same pixels either way, decoded faster). For `byol-run doctor`.
pub fn jpeg_simd() -> bool {
    unsafe extern "C" {
        /// libjpeg-turbo's own query (0 from its SIMD-less build).
        fn jsimd_can_idct_islow() -> std::os::raw::c_int;
    }
    // SAFETY: no arguments; it reads the CPU's features once and returns a flag.
    unsafe { jsimd_can_idct_islow() != 0 }
}

/// PIL's CMYK to RGB: its JPEG reader takes every CMYK file as Adobe's inverted convention
/// ("CMYK;I"), then `convert("RGB")` computes (255 - k) - c (255 - k) / 255 per channel, rounded
/// as PIL's MULDIV255.
fn cmyk_to_rgb(samples: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    samples
        .chunks_exact(4)
        .flat_map(|p| {
            let ink = |v: u8| 255 - i32::from(v);
            let not_k = 255 - ink(p[3]);
            [0, 1, 2].map(|i| (not_k - muldiv255(ink(p[i]), not_k)).clamp(0, 255) as u8)
        })
        .collect()
}

fn decode_other(bytes: &[u8]) -> Result<Rgb, String> {
    let format = image::guess_format(bytes).map_err(|_| "not a JPEG or PNG file".to_string())?;
    if format != image::ImageFormat::Png {
        return Err(format!(
            "a {} file by its contents, whatever its name says: only JPEG and PNG are read; convert it to one of them",
            format
                .extensions_str()
                .first()
                .map_or("other".to_string(), |e| e.to_uppercase())
        ));
    }
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
    let image = reader.decode().map_err(|e| format!("invalid {format:?}: {e}"))?;
    let image = high_bytes(image).to_rgb8();
    let (width, height) = image.dimensions();
    Ok(Rgb {
        width,
        height,
        pixels: image.into_raw(),
    })
}

/// A 16-bit image as 8 bits by the high byte of each value, as PIL reads 16-bit PNGs (`image`'s
/// own conversion rounds `v / 257`, one level above PIL's for about half the values); 8-bit
/// images pass through. PIL's `convert("RGB")` of 16-bit grayscale clips at 255 instead: that one
/// is not followed (it would turn the image white).
fn high_bytes(image: image::DynamicImage) -> image::DynamicImage {
    use image::{DynamicImage as D, ImageBuffer};
    fn high(values: &[u16]) -> Vec<u8> {
        values.iter().map(|v| (v >> 8) as u8).collect()
    }
    let (w, h) = (image.width(), image.height());
    let same_size = "8-bit values of a 16-bit image's size";
    match &image {
        D::ImageLuma16(b) => D::ImageLuma8(ImageBuffer::from_raw(w, h, high(b.as_raw())).expect(same_size)),
        D::ImageLumaA16(b) => D::ImageLumaA8(ImageBuffer::from_raw(w, h, high(b.as_raw())).expect(same_size)),
        D::ImageRgb16(b) => D::ImageRgb8(ImageBuffer::from_raw(w, h, high(b.as_raw())).expect(same_size)),
        D::ImageRgba16(b) => D::ImageRgba8(ImageBuffer::from_raw(w, h, high(b.as_raw())).expect(same_size)),
        _ => image,
    }
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
    let bytes = read_file(path)?;
    let image = decode_rgb(&bytes)?;
    center_square_into(&image, size, out)
}

/// The bytes of an image file; the error is the reason, without the path: "cannot read: <the
/// OS's reason>", or for a link whose target is gone, that it is a broken link and to what (the
/// OS says only "No such file", of a file that is listed).
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match std::fs::read_link(path) {
        Ok(_) if e.kind() == std::io::ErrorKind::NotFound => {
            format!(
                "a broken link: it leads to {}, which does not exist",
                link_end(path).display()
            )
        }
        _ => format!("cannot read: {e}"),
    })
}

/// Where a chain of links ends (a link to a link...): each target relative to its link's folder.
fn link_end(link: &Path) -> std::path::PathBuf {
    let mut end = link.to_path_buf();
    // As the kernel follows at most 40 links.
    for _ in 0..40 {
        match std::fs::read_link(&end) {
            Ok(target) => end = end.parent().unwrap_or(Path::new("")).join(target),
            Err(_) => break,
        }
    }
    end
}
