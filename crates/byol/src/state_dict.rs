//! Moving weights between byol-rs and PyTorch by state_dict name, as safetensors files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::Tensor;

use crate::ByolError;

/// The metadata key of an export that names, as a JSON list, the backbone's tensors its run never
/// trained and the file leaves out (the layers past an inner `byol.embedding_layer`).
pub const LEFT_OUT_KEY: &str = "byol_rs.left_out";

/// Loads a safetensors state_dict into `variables` (names relative to the module), copying in
/// place. `ignore` names keys of the file that the module deliberately lacks (a classifier head).
/// Any missing, unexpected or mis-shaped key fails the whole load with one report, before
/// anything is written; keys that the file says it left out as never trained ([`LEFT_OUT_KEY`],
/// a byol-rs export) keep the module's own values, said in the note it returns for the caller
/// to show (once, where several processes load the same file).
pub fn load_safetensors(
    variables: &HashMap<String, Tensor>,
    path: &Path,
    ignore: impl Fn(&str) -> bool,
) -> Result<Option<String>, ByolError> {
    let unreadable = |reason: String| ByolError::ReadWeights {
        path: path.to_path_buf(),
        reason,
    };
    // libtorch's own message repeats the path and wraps the OS error in debug syntax: say the
    // common cases plainly.
    if let Err(e) = std::fs::metadata(path) {
        return Err(unreadable(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no such file (a relative path starts from the working directory)".to_string()
            }
            _ => e.to_string(),
        }));
    }
    let loaded =
        Tensor::read_safetensors(path).map_err(|e| unreadable(format!("not a readable safetensors file ({e})")))?;
    let loaded: BTreeMap<String, Tensor> = loaded.into_iter().filter(|(k, _)| !ignore(k)).collect();
    let left_out: Vec<String> = safetensors_metadata(path)
        .and_then(|metadata| serde_json::from_str(metadata.get(LEFT_OUT_KEY)?).ok())
        .unwrap_or_default();
    let (mut untrained, mut missing): (Vec<&str>, Vec<&str>) = variables
        .keys()
        .filter(|k| !loaded.contains_key(*k))
        .map(String::as_str)
        .partition(|k| left_out.iter().any(|l| l == k));
    missing.sort();
    untrained.sort();
    let unexpected: Vec<&str> = loaded
        .keys()
        .filter(|k| !variables.contains_key(*k))
        .map(String::as_str)
        .collect();
    let misshaped: Vec<String> = loaded
        .iter()
        .filter_map(|(k, t)| {
            let v = variables.get(k)?;
            (v.size() != t.size()).then(|| format!("{k}: file {:?}, model {:?}", t.size(), v.size()))
        })
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
        let mut report = String::new();
        for (title, keys) in [
            (
                "missing keys",
                missing.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ),
            ("unexpected keys", unexpected.iter().map(|s| s.to_string()).collect()),
            ("mis-shaped keys", misshaped),
        ] {
            if !keys.is_empty() {
                report.push_str(&format!("  {title} ({}): {}\n", keys.len(), keys.join(", ")));
            }
        }
        return Err(ByolError::StateDictMismatch {
            path: path.to_path_buf(),
            report,
        });
    }
    tch::no_grad(|| {
        for (k, t) in &loaded {
            let v = &variables[k];
            v.shallow_clone().copy_(&t.to_kind(v.kind()).to_device(v.device()));
        }
    });
    Ok(untrained.first().map(|first| {
        format!(
            "{} leaves out {} tensors its run never trained (past its byol.embedding_layer; the first: \
             {first}): they keep their initial values here",
            path.display(),
            untrained.len()
        )
    }))
}

/// The `__metadata__` of a safetensors file, from its header alone; None when it has none or
/// the header does not read.
pub fn safetensors_metadata(path: &Path) -> Option<HashMap<String, String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).ok()?;
    // safetensors' own bound on a header.
    let length = usize::try_from(u64::from_le_bytes(length))
        .ok()
        .filter(|&n| n <= 100_000_000)?;
    let mut header = vec![0u8; length];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    serde_json::from_value(header.get("__metadata__")?.clone()).ok()
}

/// `variables` as a sorted list of (name, tensor) on the CPU, ready for `write_safetensors`.
pub fn to_cpu_sorted(variables: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = variables
        .iter()
        .map(|(k, t)| (k.clone(), t.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `tensors` (any device or layout: written row-major from the CPU) as the bytes of a safetensors
/// file whose header carries `metadata` (`safe_open(path, "pt").metadata()` in Python). tch
/// writes no metadata.
pub fn safetensors_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, ByolError> {
    let views = tensors
        .iter()
        .map(|(name, tensor)| Ok((name.as_str(), TensorBytes::new(tensor)?)))
        .collect::<Result<Vec<_>, ByolError>>()?;
    let bytes =
        safetensors::tensor::serialize(views, &Some(metadata)).map_err(|e| ByolError::WriteWeights(e.to_string()))?;
    Ok(with_sorted_header(bytes))
}

/// The bytes of a safetensors file with its header's entries and metadata in name order: the
/// writer lays the metadata out in a hash map's order, so that the same tensors and metadata
/// would give other bytes on every write. The data that follows the header is left as it is.
fn with_sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    use std::collections::BTreeMap;
    let sorted = || -> Option<Vec<u8>> {
        let length = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        let header = bytes.get(8..8 + length)?;
        let mut entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
        if let Some(metadata) = entries.get_mut("__metadata__") {
            let in_order: BTreeMap<String, String> = serde_json::from_value(metadata.take()).ok()?;
            *metadata = serde_json::to_value(in_order).ok()?;
        }
        let mut header = serde_json::to_vec(&entries).ok()?;
        // Padded with spaces to 8 bytes, as the writer pads it, so that the data stays aligned.
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&bytes[8 + length..]);
        Some(out)
    };
    sorted().unwrap_or(bytes)
}

/// A tensor's shape, dtype and row-major bytes, as safetensors' writer takes them.
struct TensorBytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl TensorBytes {
    fn new(tensor: &Tensor) -> Result<Self, ByolError> {
        let dtype = tensor
            .kind()
            .try_into()
            .map_err(|e| ByolError::WriteWeights(format!("a {:?} tensor: {e}", tensor.kind())))?;
        let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
        let mut bytes = vec![0u8; tensor.numel() * tensor.kind().elt_size_in_bytes()];
        tensor.copy_data_u8(&mut bytes, tensor.numel());
        Ok(Self {
            dtype,
            shape: tensor.size().iter().map(|&d| d as usize).collect(),
            bytes,
        })
    }
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tensors and metadata give the same bytes, whatever order a hash map holds the
    /// metadata in, and the file reads back as written.
    #[test]
    fn safetensors_with_metadata_are_the_same_bytes_every_time() {
        let tensors = vec![
            ("b".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0])),
            ("a".to_string(), Tensor::from_slice(&[7i64]).view([1, 1])),
        ];
        let metadata: HashMap<String, String> = (0..32).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
        let first = safetensors_with_metadata(&tensors, metadata.clone()).unwrap();
        // Another map of the same entries: another hash order.
        for _ in 0..4 {
            let rebuilt: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(first, safetensors_with_metadata(&tensors, rebuilt).unwrap());
        }
        let header_length = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!(header_length % 8, 0, "the data stays aligned");
        let (_, read) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        let read_back: HashMap<String, String> = read.metadata().clone().unwrap();
        assert_eq!(read_back, metadata);
        let file = safetensors::SafeTensors::deserialize(&first).unwrap();
        let b: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(file.tensor("b").unwrap().data(), b);
        assert_eq!(file.tensor("a").unwrap().data(), 7i64.to_le_bytes());
        assert_eq!(file.tensor("a").unwrap().shape(), [1, 1]);
    }
}
