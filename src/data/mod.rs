//! Movie-review data (stub; lands with the data work of issue 4).

use crate::error::{Result, RlhfError};
use std::path::{Path, PathBuf};

/// Where `datasets/fetch.py` puts the extracted files: `$RLHF_LAB_DATA` or `<repo>/datasets/cache`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("RLHF_LAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::io::project_root().join("datasets").join("cache"))
}

/// Texts of the language-modelling corpus, by split.
#[derive(Debug, Clone, Default)]
pub struct TextSplits {
    pub train: Vec<String>,
    pub validation: Vec<String>,
    pub test: Vec<String>,
}

/// Review texts for SFT, split so that no sentence is in two splits.
pub fn lm_texts(_dir: &Path) -> Result<TextSplits> {
    Err(RlhfError::Invalid {
        arg: "data".into(),
        reason: "not implemented yet".into(),
    })
}
