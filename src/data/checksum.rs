//! SHA-256 verification of the fetched cache against `MANIFEST.json` (written by `datasets/fetch.py`).
//!
//! The manifest lists, per source, `files: {relative path: sha256}`. Every listed file must exist and
//! hash to its entry; in addition the manifest's entries for the files this module reads must equal the
//! pins in [`PINNED`] (the same values as `SOURCES` in `datasets/fetch.py`), so a manifest rewritten to
//! match altered data is caught too.

use super::load::FETCH_HINT;
use crate::error::{Result, RlhfError};
use std::collections::BTreeMap;
use std::path::Path;

/// SHA-256 pins of the data files read by `crate::data` and `crate::ground_truth::vader` (copied from
/// `datasets/fetch.py`'s `SOURCES`; change both together).
pub const PINNED: [(&str, &str); 4] = [
    (
        "pang-lee/reviews.csv",
        "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f",
    ),
    (
        "pang-lee/sentences.csv",
        "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f",
    ),
    (
        "rotten-tomatoes/rotten_tomatoes_corpus_full.csv",
        "a6d44ceb33484c6ffa6bf9de99f4f4c5d12c4e410fa04b703498c97c5db652d4",
    ),
    (
        "vader/vader_lexicon.txt",
        "1ec9c6e9ee19aade328f8beb393a6afa71a5bb3acf7d3cc22d4ef568df374bf5",
    ),
];

#[derive(serde::Deserialize)]
struct Manifest {
    sources: Vec<ManifestSource>,
}

#[derive(serde::Deserialize)]
struct ManifestSource {
    files: BTreeMap<String, String>,
}

/// Verifies every file listed in `dir/MANIFEST.json` (and that the manifest agrees with [`PINNED`]).
/// Returns the verified relative paths, sorted. Missing manifest or file: [`RlhfError::Io`] with the
/// fetch hint; wrong hash: [`RlhfError::Checksum`]; unreadable manifest: [`RlhfError::Format`].
pub fn verify_checksums(dir: &Path) -> Result<Vec<String>> {
    let manifest_path = dir.join("MANIFEST.json");
    let text = super::load::read_data_file(&manifest_path)?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| RlhfError::format(&manifest_path, "fetch manifest (JSON)", e))?;
    let files: BTreeMap<String, String> =
        manifest.sources.into_iter().flat_map(|s| s.files).collect();
    for (rel, pinned) in PINNED {
        match files.get(rel) {
            None => {
                return Err(RlhfError::format(
                    &manifest_path,
                    "fetch manifest",
                    format!("no entry for {rel}; {FETCH_HINT}"),
                ))
            }
            Some(listed) if listed != pinned => {
                return Err(RlhfError::Checksum {
                    path: manifest_path.join(rel).display().to_string(),
                    expected: pinned.to_string(),
                    got: listed.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for (rel, expected) in &files {
        let path = dir.join(rel);
        if !path.is_file() {
            return Err(RlhfError::Io {
                path: path.display().to_string(),
                reason: format!("no such file; {FETCH_HINT}"),
            });
        }
        let got = crate::io::sha256_file(&path)?;
        if &got != expected {
            return Err(RlhfError::Checksum {
                path: path.display().to_string(),
                expected: expected.clone(),
                got,
            });
        }
    }
    Ok(files.into_keys().collect())
}
