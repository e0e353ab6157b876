use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset configuration: {0}")]
    Config(String),

    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
