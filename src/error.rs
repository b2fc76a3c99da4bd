//! Typed errors. Every public function validates its inputs and returns one of these instead of panicking
//! or producing a silent NaN. Each variant names the offending argument.

use thiserror::Error;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, RlhfError>;

/// What went wrong, and with which argument.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RlhfError {
    /// Two tensors that must agree in shape do not.
    #[error("shape mismatch: `{arg}` has shape {got:?}, expected {expected}")]
    Shape {
        arg: String,
        got: Vec<i64>,
        expected: String,
    },

    /// A tensor has the wrong dtype (e.g. integer logits, float labels).
    #[error("dtype: `{arg}` is {got}, expected {expected}")]
    Dtype {
        arg: String,
        got: String,
        expected: String,
    },

    /// A mask holds a value other than 0 or 1.
    #[error("mask `{arg}` must contain only 0 and 1")]
    NonBinaryMask { arg: String },

    /// NaN or ±Inf where a real number is required (at an unmasked position, for masked inputs).
    #[error("`{arg}` contains NaN or Inf at {count} position(s) that are used")]
    NonFinite { arg: String, count: i64 },

    /// Finite inputs produced NaN or ±Inf in an output (the arithmetic overflowed, e.g. `1e308 + 1e308`).
    /// Never returned as numbers: a non-finite output is as silent as a non-finite input.
    #[error("`{arg}`: {count} value(s) overflowed to NaN or Inf from finite inputs (rescale the inputs or compute in f64)")]
    NonFiniteOutput { arg: String, count: i64 },

    /// A reduction over tokens was asked of rows that have no unmasked token.
    #[error(
        "`{arg}`: row(s) {rows:?} have zero unmasked tokens, so a mean over them is undefined"
    )]
    EmptyRows { arg: String, rows: Vec<i64> },

    /// A hyper-parameter is outside its valid range.
    #[error("`{arg}` = {value} is out of range: must be {range}")]
    OutOfRange {
        arg: String,
        value: f64,
        range: String,
    },

    /// Any other invalid argument, with an explanation.
    #[error("invalid `{arg}`: {reason}")]
    Invalid { arg: String, reason: String },

    /// An error reported by libtorch (should not happen on validated input; kept typed, never a panic).
    #[error("libtorch: {0}")]
    Torch(String),

    /// A file could not be read or written (missing data, permissions, disk full).
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },

    /// A file exists but its content is not what it should be (corrupt checkpoint, malformed CSV/JSONL/GGUF,
    /// truncated safetensors). `what` names the format.
    #[error("{path}: not a valid {what}: {reason}")]
    Format {
        path: String,
        what: String,
        reason: String,
    },

    /// A downloaded or cached file does not have the pinned SHA-256.
    #[error("{path}: checksum mismatch: expected sha256 {expected}, got {got}")]
    Checksum {
        path: String,
        expected: String,
        got: String,
    },

    /// A run configuration (TOML) is invalid: unknown field, wrong type, value out of range.
    #[error("config {source_name}: {reason}")]
    Config { source_name: String, reason: String },
}

impl From<tch::TchError> for RlhfError {
    fn from(e: tch::TchError) -> Self {
        RlhfError::Torch(e.to_string())
    }
}

impl RlhfError {
    /// A short machine-readable name of the error class (used in the JSON errors of `rlhf-lab calc`).
    pub fn kind(&self) -> &'static str {
        match self {
            RlhfError::Shape { .. } => "shape_mismatch",
            RlhfError::Dtype { .. } => "dtype",
            RlhfError::NonBinaryMask { .. } => "non_binary_mask",
            RlhfError::NonFinite { .. } => "non_finite",
            RlhfError::NonFiniteOutput { .. } => "non_finite_output",
            RlhfError::EmptyRows { .. } => "empty_rows",
            RlhfError::OutOfRange { .. } => "out_of_range",
            RlhfError::Invalid { .. } => "invalid_argument",
            RlhfError::Torch(_) => "torch",
            RlhfError::Io { .. } => "io",
            RlhfError::Format { .. } => "format",
            RlhfError::Checksum { .. } => "checksum",
            RlhfError::Config { .. } => "config",
        }
    }

    /// The argument the error is about, if any.
    pub fn argument(&self) -> Option<&str> {
        match self {
            RlhfError::Shape { arg, .. }
            | RlhfError::Dtype { arg, .. }
            | RlhfError::NonBinaryMask { arg }
            | RlhfError::NonFinite { arg, .. }
            | RlhfError::NonFiniteOutput { arg, .. }
            | RlhfError::EmptyRows { arg, .. }
            | RlhfError::OutOfRange { arg, .. }
            | RlhfError::Invalid { arg, .. } => Some(arg),
            RlhfError::Torch(_)
            | RlhfError::Io { .. }
            | RlhfError::Format { .. }
            | RlhfError::Checksum { .. }
            | RlhfError::Config { .. } => None,
        }
    }
}

/// One-line constructors, so that a check reads as one line:
/// `return Err(RlhfError::out_of_range("beta", beta, "> 0"));`
impl RlhfError {
    /// An [`RlhfError::Invalid`]: `arg` is wrong because `reason`.
    pub fn invalid(arg: impl Into<String>, reason: impl Into<String>) -> Self {
        RlhfError::Invalid {
            arg: arg.into(),
            reason: reason.into(),
        }
    }

    /// An [`RlhfError::OutOfRange`]: `arg` = `value` is not in `range` (e.g. `"> 0"`, `"in [0, 1)"`).
    pub fn out_of_range(arg: impl Into<String>, value: f64, range: impl Into<String>) -> Self {
        RlhfError::OutOfRange {
            arg: arg.into(),
            value,
            range: range.into(),
        }
    }

    /// An [`RlhfError::Shape`]: `arg` has shape `got`, not `expected`.
    pub fn shape(arg: impl Into<String>, got: Vec<i64>, expected: impl Into<String>) -> Self {
        RlhfError::Shape {
            arg: arg.into(),
            got,
            expected: expected.into(),
        }
    }

    /// The same error with its argument name qualified by a config section: `lr` → `optim.lr`.
    pub fn in_section(self, section: &str) -> Self {
        match self {
            RlhfError::OutOfRange { arg, value, range } => {
                RlhfError::out_of_range(format!("{section}.{arg}"), value, range)
            }
            RlhfError::Invalid { arg, reason } => {
                RlhfError::invalid(format!("{section}.{arg}"), reason)
            }
            e => e,
        }
    }

    /// An [`RlhfError::Io`] for `path`, keeping the OS reason (`No such file or directory`, …).
    pub fn io(path: impl AsRef<std::path::Path>, e: impl std::fmt::Display) -> Self {
        RlhfError::Io {
            path: path.as_ref().display().to_string(),
            reason: e.to_string(),
        }
    }

    /// An [`RlhfError::Format`]: `path` is not a valid `what`.
    pub fn format(
        path: impl AsRef<std::path::Path>,
        what: &str,
        reason: impl std::fmt::Display,
    ) -> Self {
        RlhfError::Format {
            path: path.as_ref().display().to_string(),
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }
}
