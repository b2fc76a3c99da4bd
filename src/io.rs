//! File plumbing shared by data, checkpoints and reports: atomic writes, SHA-256, safetensors.
//!
//! **Atomic writes.** Every file the library writes (checkpoints, tokenizers, metrics, manifests) goes
//! through [`atomic_write`]: the bytes go to a temporary file in the same directory, are `fsync`ed, then
//! renamed over the target, and the directory is `fsync`ed. A process killed at any instant (SIGKILL
//! included) leaves either the old file or the new one, never a torn one.
//!
//! **Checkpoint format.** Tensors are stored as safetensors (never pickle); the model config travels as a
//! JSON file beside it. See [`save_tensors`] / [`load_tensors`].

use crate::error::{Result, RlhfError};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Writes `bytes` to `path` atomically (temp file in the same directory + fsync + rename + fsync dir).
/// Parent directories are created.
pub fn atomic_write(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| RlhfError::io(&dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .map_err(|e| RlhfError::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| RlhfError::io(path, e))?;
    // tempfile creates 0600; a report or checkpoint gets the usual 0644 (umask permitting).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| RlhfError::io(path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| RlhfError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| RlhfError::io(path, e.error))?;
    sync_dir(&dir);
    Ok(())
}

/// [`atomic_write`] of a value as pretty JSON (with a trailing newline).
pub fn write_json<T: serde::Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)
        .map_err(|e| RlhfError::format(path.as_ref(), "JSON value", e))?;
    s.push('\n');
    atomic_write(path, s.as_bytes())
}

/// Reads and parses a JSON file, with the path in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| RlhfError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RlhfError::format(path, "JSON file", e))
}

/// Saves named tensors as one safetensors file, atomically. Tensors are moved to the CPU and made
/// contiguous first; dtypes are kept.
pub fn save_tensors(path: impl AsRef<Path>, named: &[(String, Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| RlhfError::io(&dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".safetensors")
        .tempfile_in(&dir)
        .map_err(|e| RlhfError::io(&dir, e))?;
    let cpu: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&cpu, tmp.path())?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| RlhfError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| RlhfError::io(path, e.error))?;
    sync_dir(&dir);
    Ok(())
}

/// Loads every tensor of a safetensors file (on the CPU). A missing file is [`RlhfError::Io`]; a
/// truncated or corrupt one is [`RlhfError::Format`].
pub fn load_tensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(RlhfError::io(path, "no such file"));
    }
    Tensor::read_safetensors(path).map_err(|e| RlhfError::format(path, "safetensors file", e))
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| RlhfError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| RlhfError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of bytes, as lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) {
    // Best effort: some filesystems refuse fsync on a directory; the rename is already durable there.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// The repository root (where `Cargo.toml`, `datasets/` and `reports/` live), for default paths.
/// `RLHF_LAB_ROOT` overrides it (an installed binary run from elsewhere).
pub fn project_root() -> PathBuf {
    std::env::var_os("RLHF_LAB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
