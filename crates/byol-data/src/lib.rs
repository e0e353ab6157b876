//! Data for BYOL: dataset plugins, the loader that turns them into uint8 batches, and the batched,
//! per-sample-random image ops (on the training device) that the augmentation plugins compose.

pub mod cifar;
pub mod crop;
pub mod dataset;
pub mod decode;
pub mod image_folder;
pub mod loader;
mod memory;
pub mod ops;
pub mod preview;
pub mod rng;
mod skipped;
pub mod synthetic;
pub mod tar;
pub mod transfer;
pub mod webdataset;

// The plugin seams (dataset and augmentation specs, the crops an augmentation asks the loader
// for, their error type) live in `byol` with the other plugin traits; re-exported here for the
// datasets, the loader and the ops that implement them.
pub use byol::{AugmentSpec, CropRange, DataError, Dataset, DatasetSpec, EpochStream, Listing, LoaderCrops, Splits};
pub use dataset::ImageSet;
pub use loader::{Batch, BatchLoader, Prefetch};

/// A path as one line of a text file that names files one per line (`byol-run embed`'s
/// `names.txt`, `byol-run shard`'s `sources.tsv`): backslash, newline, carriage return and tab
/// escaped (`\\`, `\n`, `\r`, `\t`), and each byte that is not UTF-8 (names are bytes on
/// Unix) as `\xNN`, so that every path is written as it is and two never share a line or a
/// column.
pub fn path_line(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut line = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        line.push_str(&text_line(chunk.valid()));
        for byte in chunk.invalid() {
            line.push_str(&format!("\\x{byte:02x}"));
        }
    }
    line
}

/// `text` on one line as [`path_line`] writes it: backslash, newline, carriage return and tab
/// escaped (`\\`, `\n`, `\r`, `\t`).
pub fn text_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c => line.push(c),
        }
    }
    line
}

/// A file or folder name as text: valid UTF-8 as it is, each other byte (names are bytes on
/// Unix) as `\xNN`, so that names that differ on disk differ as text: two class folders are two
/// classes, and a renamed file changes a split's record.
pub fn name_text(name: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut text = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        text.push_str(chunk.valid());
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}
