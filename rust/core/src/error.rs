use std::fmt;

/// Every error the engine can report. Messages are one line and name the offending value.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// An argument is outside its domain (K < 1, K > N, sparsity outside [0, 1), ...).
    InvalidArgument(String),
    /// A value in the input data is NaN or infinite.
    NonFinite { row: usize, col: usize },
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidArgument(msg) => write!(f, "{msg}"),
            CoreError::NonFinite { row, col } => {
                write!(
                    f,
                    "non-finite value (NaN or Inf) in unit {row} at position {col}"
                )
            }
        }
    }
}

impl std::error::Error for CoreError {}

pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(CoreError::InvalidArgument(msg.into()))
}
