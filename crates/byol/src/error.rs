use std::path::PathBuf;

/// Errors of the model crate. Each names the thing at fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ByolError {
    #[error("backbone has no feature tap '{name}'; available taps: {available}")]
    UnknownTap { name: String, available: String },

    #[error("cannot read weights from {path}: {reason}")]
    ReadWeights { path: PathBuf, reason: String },

    #[error("weights in {path} do not fit the model:\n{report}\nExport the state_dict of the matching PyTorch model (torchvision for ResNets: see the README, \"Pretrained weights\").")]
    StateDictMismatch { path: PathBuf, report: String },

    #[error("cannot write weights as safetensors: {0}")]
    WriteWeights(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Errors of dataset and augmentation plugins: a configuration to fix, or an image that cannot
/// be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset configuration: {0}")]
    Config(String),

    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl DataError {
    /// The message without `dataset configuration: ` before a configuration error: for data
    /// that is not the experiment's `[dataset]` (`[eval]`'s folders, a command's arguments),
    /// whose messages name it themselves.
    pub fn message(&self) -> String {
        match self {
            Self::Config(message) => message.clone(),
            other => other.to_string(),
        }
    }
}
