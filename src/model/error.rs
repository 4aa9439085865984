//! What can go wrong building, loading or saving a model. Tensor math inside `forward`/`loss` reports candle's own
//! error; everything that touches files names the file and the tensor or field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: unexpected tensors {names:?} (not part of a {arch} model)")]
    UnexpectedTensors { path: PathBuf, arch: String, names: Vec<String> },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape { path: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("{0}")]
    Unsupported(String),
    /// Boxed: hub errors carry URLs and listings, and would otherwise bloat every `Result` in this module.
    #[error(transparent)]
    Hub(Box<crate::hub::HubError>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<crate::hub::HubError> for ModelError {
    fn from(e: crate::hub::HubError) -> Self {
        ModelError::Hub(Box::new(e))
    }
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Format { path: path.into(), msg: msg.into() }
    }
}
