//! GGUF reader (llama.cpp's model file format): header, typed metadata, tensor directory, and
//! dequantisation of the tensor data to f32 `tch` tensors; plus the GPT-2-style BPE tokenizer that a
//! GGUF file carries in its metadata ([`tokenizer`]).
//!
//! Layout, following the specification `docs/gguf.md` of ggml (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>),
//! versions 2 and 3, little-endian (big-endian v3 files are rejected with a clear error):
//!
//! ```text
//! u32 magic "GGUF" | u32 version | u64 tensor_count | u64 metadata_kv_count
//! metadata_kv_count × { string key | u32 value_type | value }
//! tensor_count × { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//! zero padding to `general.alignment` (default 32)
//! tensor data: each tensor at data_offset + offset (offsets are multiples of the alignment)
//! ```
//!
//! A `string` is `u64 len | len bytes of UTF-8`; an array value is `u32 element_type | u64 n | n values`
//! (arrays of arrays allowed). Dimensions are listed **fastest-varying first** (ggml's `ne[0]` is the
//! row length), so a `[ne0, ne1]` tensor is the row-major `(ne1, ne0)` matrix: [`TensorInfo::shape`]
//! reverses them.
//!
//! Quantised blocks follow `ggml-common.h` (`block_q4_0`, `block_q4_1`, `block_q5_0`, `block_q5_1`,
//! `block_q8_0`) and are decoded exactly like `dequantize_row_q4_0/q4_1/q5_0/q5_1/q8_0` in
//! `ggml/src/ggml-quants.c`. The SmolLM2-135M-Instruct Q4_1 file holds F32 (norms), Q4_1 (all linear
//! layers) and Q8_0 (`token_embd.weight`); K-quants and i-quants are reported as unsupported
//! ([`RlhfError::Format`] naming the tensor).

use crate::error::{Result, RlhfError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

const WHAT: &str = "GGUF file";
/// `"GGUF"` read as a little-endian u32.
const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent (gguf.md: `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value (gguf.md `gguf_metadata_value_type`; the numbers are the on-disk type tags).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements of one type (tag kept so that an empty array round-trips).
    Array(u32, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The on-disk type tag (0 = UINT8 … 12 = FLOAT64).
    pub fn type_tag(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(..) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// Any integer type as i128 (so u64 and i64 both fit); `None` for non-integers.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// F32 or F64 as f64; `None` otherwise.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader knows by name (`enum ggml_type` in `ggml.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    BF16,
    /// Any other tag (K-quants, i-quants, integer types …): listed, but not dequantised.
    Other(u32),
}

impl GgmlType {
    /// From the on-disk tag.
    pub fn from_tag(tag: u32) -> Self {
        match tag {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            t => GgmlType::Other(t),
        }
    }

    /// The on-disk tag.
    pub fn tag(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
            GgmlType::Other(t) => t,
        }
    }

    /// `(elements per block, bytes per block)` of every type whose size this reader knows (ggml
    /// `type_traits[].blck_size / type_size`), decodable or not, so that truncation is detected for all
    /// of them. `None` for i-quants and unknown tags.
    pub fn storage_layout(self) -> Option<(u64, u64)> {
        if let Some(l) = self.block_layout() {
            return Some(l);
        }
        let GgmlType::Other(tag) = self else {
            return None;
        };
        Some(match tag {
            9 => (32, 36),     // Q8_1
            10 => (256, 84),   // Q2_K
            11 => (256, 110),  // Q3_K
            12 => (256, 144),  // Q4_K
            13 => (256, 176),  // Q5_K
            14 => (256, 210),  // Q6_K
            15 => (256, 292),  // Q8_K
            24 => (1, 1),      // I8
            25 => (1, 2),      // I16
            26 => (1, 4),      // I32
            27 | 28 => (1, 8), // I64, F64
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)` of the types [`dequantize`] decodes; `None` otherwise.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 2 + 16),
            GgmlType::Q4_1 => (32, 2 + 2 + 16),
            GgmlType::Q5_0 => (32, 2 + 4 + 16),
            GgmlType::Q5_1 => (32, 2 + 2 + 4 + 16),
            GgmlType::Q8_0 => (32, 2 + 32),
            GgmlType::Other(_) => return None,
        })
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as stored: fastest-varying first (ggml `ne`).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the tensor data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dims).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape: the GGUF dims reversed (`[ne0, ne1]` → `(ne1, ne0)`).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    /// Bytes of the data, for a type of known block size whose row length is a multiple of it.
    fn n_bytes(&self) -> Option<u64> {
        let (blk, size) = self.ggml_type.storage_layout()?;
        let row = *self.dims.first().unwrap_or(&1);
        if row % blk != 0 {
            return None;
        }
        self.n_elements()
            .checked_div(blk)
            .and_then(|n| n.checked_mul(size))
    }
}

/// A parsed GGUF file, its bytes kept in memory (the SmolLM2 file is ~100 MB).
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute byte offset of the tensor data section.
    pub data_offset: u64,
    bytes: Vec<u8>,
}

/// Little-endian cursor over the file bytes; every read is bounds-checked into a Format error.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl std::fmt::Display) -> RlhfError {
        RlhfError::format(self.path, WHAT, format!("{what} (at byte {})", self.pos))
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!("truncated: {what} needs {n} bytes, {left} left")));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|e| self.err(format!("{what}: invalid UTF-8: {e}")))
    }

    /// Smallest encoded size of one value of type `tag` (to bound array lengths before allocating).
    fn min_size(tag: u32) -> u64 {
        match tag {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,
            9 => 12,
            _ => 8,
        }
    }

    fn value(&mut self, tag: u32, key: &str, depth: u32) -> Result<MetaValue> {
        Ok(match tag {
            0 => MetaValue::U8(u8::from_le_bytes(self.arr(key)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.arr(key)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.arr(key)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => match self.arr::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("metadata {key:?}: bool byte {b} is not 0 or 1"))),
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth > 8 {
                    return Err(self.err(format!("metadata {key:?}: arrays nested too deeply")));
                }
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                let left = (self.bytes.len() - self.pos) as u64;
                if n.saturating_mul(Self::min_size(elem)) > left {
                    return Err(self.err(format!(
                        "truncated: metadata {key:?} claims {n} array elements, only {left} bytes left"
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(elem, v)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.arr(key)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr(key)?)),
            t => return Err(self.err(format!("metadata {key:?}: unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Reads and parses `path`. A missing/unreadable file is [`RlhfError::Io`]; anything malformed
    /// (wrong magic, unsupported version, truncation, tensor data out of bounds) is [`RlhfError::Format`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| RlhfError::io(path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// Parses GGUF `bytes`; `path` only names the source in errors.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.as_ref();
        let mut c = Cursor {
            path,
            bytes: &bytes,
            pos: 0,
        };
        let magic = c.arr::<4>("magic")?;
        if &magic != MAGIC {
            return Err(c.err(format!("wrong magic {magic:02x?}, expected \"GGUF\"")));
        }
        let version = c.u32("version")?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(c.err("big-endian GGUF is not supported"));
        }
        if version != 2 && version != 3 {
            return Err(c.err(format!(
                "unsupported version {version} (only GGUF v2 and v3 are read)"
            )));
        }
        let n_tensors = c.u64("tensor_count")?;
        let n_kv = c.u64("metadata_kv_count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let tag = c.u32("metadata value type")?;
            let v = c.value(tag, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(c.err(format!("duplicate metadata key {key:?}")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if *a > 0 && a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(c.err(format!(
                    "general.alignment must be a u32 power of two, got {v:?}"
                )))
            }
        };
        // Each tensor info takes at least 8 + 4 + 4 + 8 bytes: bound the count before allocating.
        let left = (bytes.len() - c.pos) as u64;
        if n_tensors.saturating_mul(24) > left {
            return Err(c.err(format!(
                "truncated: {n_tensors} tensors announced, only {left} bytes left"
            )));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor n_dims")?;
            if n_dims > 8 {
                return Err(c.err(format!("tensor {name:?}: {n_dims} dimensions (at most 8)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dims")?);
            }
            let ggml_type = GgmlType::from_tag(c.u32("tensor type")?);
            let offset = c.u64("tensor offset")?;
            if offset % alignment != 0 {
                return Err(c.err(format!(
                    "tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            if let Some(n) = t.n_bytes() {
                let end = data_offset
                    .checked_add(t.offset)
                    .and_then(|s| s.checked_add(n));
                if end.is_none_or(|e| e > file_len) {
                    return Err(RlhfError::format(
                        path,
                        WHAT,
                        format!(
                            "truncated: tensor {:?} ({n} bytes at offset {}) runs past the end of the file ({file_len} bytes)",
                            t.name,
                            data_offset + t.offset
                        ),
                    ));
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            bytes,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta_err(&self, key: &str, reason: impl std::fmt::Display) -> RlhfError {
        RlhfError::format(&self.path, WHAT, format!("metadata {key:?}: {reason}"))
    }

    /// A metadata value, or a Format error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&MetaValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| self.meta_err(key, "missing"))
    }

    /// An integer metadata value (any integer type) that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.get(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| {
                self.meta_err(key, format!("expected a non-negative integer, got {v:?}"))
            })
    }

    /// A float metadata value (F32 or F64).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        v.as_float()
            .ok_or_else(|| self.meta_err(key, format!("expected a float, got {v:?}")))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key)?;
        v.as_str()
            .ok_or_else(|| self.meta_err(key, "expected a string"))
    }

    /// The elements of an array metadata value.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        match self.get(key)? {
            MetaValue::Array(_, v) => Ok(v),
            _ => Err(self.meta_err(key, "expected an array")),
        }
    }

    /// The directory entry of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| RlhfError::format(&self.path, WHAT, format!("tensor {name:?} missing")))
    }

    /// Tensor `name` dequantised to f32, row-major shape [`TensorInfo::shape`], on `device`.
    pub fn tensor(&self, name: &str, device: Device) -> Result<Tensor> {
        let info = self.tensor_info(name)?;
        let fmt_err = |reason: String| {
            RlhfError::format(&self.path, WHAT, format!("tensor {name:?}: {reason}"))
        };
        let n_bytes = match (info.ggml_type.block_layout(), info.n_bytes()) {
            (None, _) => {
                return Err(fmt_err(format!(
                    "unsupported ggml type {:?} (this reader decodes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)",
                    info.ggml_type
                )))
            }
            (Some((blk, _)), None) => {
                return Err(fmt_err(format!(
                    "row length {:?} is not a multiple of the block size {blk}",
                    info.dims.first()
                )))
            }
            (_, Some(n)) => n,
        };
        // Bounds were checked when the file was parsed.
        let start = (self.data_offset + info.offset) as usize;
        let raw = &self.bytes[start..start + n_bytes as usize];
        let values = dequantize(info.ggml_type, raw, info.n_elements() as usize)
            .map_err(|e| fmt_err(e.to_string()))?;
        Ok(Tensor::from_slice(&values)
            .f_view(info.shape().as_slice())?
            .to_device(device))
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Decodes `n` values of type `ty` from `raw` (exactly the bytes of those values), as
/// `dequantize_row_*` of `ggml-quants.c` (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0), `ggml_fp16_to_fp32` (F16) and
/// `ggml_bf16_to_fp32` (BF16). Within a 32-value block the low nibbles give values `0..16` and the high
/// nibbles values `16..32`. [`RlhfError::Invalid`] on an unsupported type or a size mismatch.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Result<Vec<f32>> {
    let (blk, size) = ty
        .block_layout()
        .ok_or_else(|| RlhfError::invalid("ty", format!("unsupported ggml type {ty:?}")))?;
    let (blk, size) = (blk as usize, size as usize);
    if n % blk != 0 || raw.len() != n / blk * size {
        return Err(RlhfError::invalid(
            "raw",
            format!(
                "{n} values of {ty:?} need {} bytes in blocks of {blk}, got {}",
                n / blk * size,
                raw.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(f16)),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        // block_q4_0 { half d; u8 qs[16] }: y = (q − 8)·d.
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(size) {
                let d = f16(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        // block_q4_1 { half d; half m; u8 qs[16] }: y = q·d + m.
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(size) {
                let (d, m) = (f16(&b[0..2]), f16(&b[2..4]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        // block_q5_0 { half d; u8 qh[4]; u8 qs[16] }: 5th bit j of value j from qh; y = (q − 16)·d.
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let has_m = ty == GgmlType::Q5_1;
            let o = if has_m { 4 } else { 2 };
            for b in raw.chunks_exact(size) {
                let d = f16(&b[0..2]);
                let m = if has_m { f16(&b[2..4]) } else { 0.0 };
                let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                let qs = &b[o + 4..o + 20];
                let shift = if has_m { 0 } else { 16 };
                let val = |j: usize, hi: bool| {
                    let (nib, bit) = if hi {
                        (qs[j] >> 4, (qh >> (j + 12)) & 0x10)
                    } else {
                        (qs[j] & 0x0F, ((qh >> j) << 4) & 0x10)
                    };
                    ((nib as u32 | bit) as i32 - shift) as f32 * d + m
                };
                out.extend((0..16).map(|j| val(j, false)));
                out.extend((0..16).map(|j| val(j, true)));
            }
        }
        // block_q8_0 { half d; i8 qs[32] }: y = q·d.
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(size) {
                let d = f16(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Other(_) => unreachable!("block_layout is None for Other"),
    }
    Ok(out)
}

/// A tensor to write with [`write_gguf`]: raw (already encoded) data of `ggml_type`.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    /// GGUF order (fastest-varying first).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: Vec<u8>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.extend(x.to_le_bytes()),
        MetaValue::I8(x) => out.extend(x.to_le_bytes()),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(tag, items) => {
            out.extend(tag.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// Serialises a GGUF v3 file (little-endian) with `metadata` and `tensors`, aligned to
/// `general.alignment` if given (else 32). A minimal writer for test fixtures; array elements must all
/// have the array's declared type (not checked).
pub fn write_gguf(metadata: &[(String, MetaValue)], tensors: &[RawTensor]) -> Vec<u8> {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_int())
        .map_or(DEFAULT_ALIGNMENT, |a| a as u64);
    let pad = |n: u64| n.div_ceil(alignment) * alignment;
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend(v.type_tag().to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ggml_type.tag().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = pad(offset + t.data.len() as u64);
    }
    let data_offset = pad(out.len() as u64);
    out.resize(data_offset as usize, 0);
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize((data_offset + off) as usize, 0);
        out.extend(&t.data);
    }
    out
}

/// Id of the token named `name` in `tokens`, or a Format error.
fn token_id(file: &GgufFile, tokens: &[String], name: &str) -> Result<u32> {
    tokens
        .iter()
        .position(|t| t == name)
        .map(|i| i as u32)
        .ok_or_else(|| file.meta_err("tokenizer.ggml.tokens", format!("no token {name:?}")))
}

/// The tokenizer stored in the GGUF metadata, rebuilt as a `tokenizers` BPE and wrapped in
/// [`crate::model::tokenizer::Tokenizer`].
///
/// Supports `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with `tokenizer.ggml.pre` in
/// {`smollm`, `gpt2`, `default`}. For `smollm`, llama.cpp's `llama-vocab.cpp` (the
/// `LLAMA_VOCAB_PRE_TYPE_SMOLLM` case, shared with StarCoder) splits every digit on its own (`\p{N}`)
/// and then applies the GPT-2 regex; that is exactly HF SmolLM2's `tokenizer.json`: a `Sequence` of
/// `Digits(individual_digits = true)` and `ByteLevel(add_prefix_space = false, use_regex = true)`, with
/// a `ByteLevel` decoder. Vocabulary = `tokenizer.ggml.tokens` (id = index), merges =
/// `tokenizer.ggml.merges` (`"a b"`, rank = index). Tokens of `token_type` 3 (CONTROL) and 4
/// (USER_DEFINED) are added tokens (special for type 3), so `<|im_start|>` encodes as one id.
///
/// EOS = `tokenizer.ggml.eos_token_id` (`<|im_end|>` for SmolLM2-Instruct). Its
/// `tokenizer.ggml.padding_token_id` equals EOS, which our wrapper forbids (generation stops at EOS, and
/// the reward is read at the last real token); PAD is then the first other special token among
/// `<|endoftext|>` (id 0 in SmolLM2, the pre-training document separator, never produced by the chat
/// template) and the unknown token. Padded positions are masked out of attention, so their id never
/// influences the model; only a distinct id is needed.
pub fn tokenizer(file: &GgufFile) -> Result<crate::model::tokenizer::Tokenizer> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, PreTokenizerWrapper};

    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(file.meta_err(
            "tokenizer.ggml.model",
            format!("{model:?} is not supported (only \"gpt2\" byte-level BPE)"),
        ));
    }
    let pre = file
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let digits = match pre {
        "smollm" | "starcoder" | "refact" => true,
        "gpt2" | "default" => false,
        other => {
            return Err(file.meta_err(
                "tokenizer.ggml.pre",
                format!(
                    "pre-tokenizer {other:?} is not supported (smollm, starcoder, gpt2, default)"
                ),
            ))
        }
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        file.get_array(key)?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| file.meta_err(key, "expected an array of strings"))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges_raw = strings("tokenizer.ggml.merges")?;
    let types: Vec<i128> = match file.metadata.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(_, v)) => v
            .iter()
            .map(|x| {
                x.as_int()
                    .ok_or_else(|| file.meta_err("tokenizer.ggml.token_type", "expected integers"))
            })
            .collect::<Result<_>>()?,
        _ => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(file.meta_err(
            "tokenizer.ggml.token_type",
            format!("{} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), i as u32).is_some() {
            return Err(file.meta_err("tokenizer.ggml.tokens", format!("duplicate token {t:?}")));
        }
    }
    let mut merges = Vec::with_capacity(merges_raw.len());
    for m in &merges_raw {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            file.meta_err(
                "tokenizer.ggml.merges",
                format!("merge {m:?} is not \"a b\""),
            )
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| file.meta_err("tokenizer.ggml.merges", e))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = if digits {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    inner.with_pre_tokenizer(Some(pre_tok));
    inner.with_decoder(Some(ByteLevel::new(false, true, true)));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| ty == 3)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| ty == 4)
        .map(|(t, _)| AddedToken::from(t.clone(), false))
        .collect();
    inner.add_special_tokens(&special);
    inner.add_tokens(&user);

    let name_of = |key: &str| -> Result<Option<String>> {
        match file.metadata.get(key) {
            None => Ok(None),
            Some(_) => {
                let id = file.get_u64(key)? as usize;
                tokens.get(id).cloned().map(Some).ok_or_else(|| {
                    file.meta_err(key, format!("id {id} ≥ vocabulary size {}", tokens.len()))
                })
            }
        }
    };
    let eos = name_of("tokenizer.ggml.eos_token_id")?
        .ok_or_else(|| file.meta_err("tokenizer.ggml.eos_token_id", "missing"))?;
    let pad = match name_of("tokenizer.ggml.padding_token_id")? {
        Some(p) if p != eos => p,
        _ => {
            let candidates = [
                Some("<|endoftext|>".to_string()),
                name_of("tokenizer.ggml.unknown_token_id")?,
            ];
            candidates
                .into_iter()
                .flatten()
                .find(|c| *c != eos && token_id(file, &tokens, c).is_ok())
                .ok_or_else(|| {
                    file.meta_err(
                        "tokenizer.ggml.padding_token_id",
                        "equals EOS and no other special token can serve as PAD",
                    )
                })?
        }
    };
    crate::model::tokenizer::Tokenizer::from_hf(inner, &eos, &pad)
}

/// The default system prompt of SmolLM2-Instruct's chat template (`tokenizer.chat_template` in the GGUF
/// file: used when the conversation has no system message).
pub const SMOLLM2_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// A one-turn ChatML prompt as SmolLM2-Instruct's `tokenizer.chat_template` renders it with
/// `add_generation_prompt = true`: the default system message, the user message, and the opened
/// assistant turn.
pub fn smollm2_chat_prompt(user: &str) -> String {
    format!(
        "<|im_start|>system\n{SMOLLM2_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_1_block_is_nibble_times_d_plus_m() {
        // d = 0.5, m = −1; byte j holds low nibble j % 16 and high nibble 15 − j % 16.
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.5 - 1.0, "low nibble {j}");
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.5 - 1.0, "high nibble {j}");
        }
    }

    #[test]
    fn q4_0_q8_0_and_q5_blocks() {
        let mut b = Vec::new();
        b.extend(h(2.0));
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], -16.0);
        assert_eq!(y[15], 14.0);
        assert_eq!(y[16 + 8], 0.0);

        let mut b = Vec::new();
        b.extend(h(0.25));
        b.extend((0..32i8).map(|j| (j - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(
            y,
            (0..32).map(|j| (j - 16) as f32 * 0.25).collect::<Vec<_>>()
        );

        // Q5_0: all nibbles 0xF; qh sets the 5th bit of values 0 and 16 only → 31−16 = 15 and 15−16.
        let mut b = Vec::new();
        b.extend(h(1.0));
        b.extend((1u32 | (1 << 16)).to_le_bytes());
        b.extend([0xFFu8; 16]);
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!((y[0], y[1], y[16], y[17]), (15.0, -1.0, 15.0, -1.0));
        // Q5_1 same bits, d = 1, m = 0.5: 31.5 / 15.5.
        let mut b = Vec::new();
        b.extend(h(1.0));
        b.extend(h(0.5));
        b.extend((1u32 | (1 << 16)).to_le_bytes());
        b.extend([0xFFu8; 16]);
        let y = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        assert_eq!((y[0], y[1], y[16], y[17]), (31.5, 15.5, 31.5, 15.5));
    }

    #[test]
    fn dequantize_f16_bf16_f32() {
        let mut b = Vec::new();
        b.extend(h(1.5));
        b.extend(h(-0.25));
        assert_eq!(dequantize(GgmlType::F16, &b, 2).unwrap(), [1.5, -0.25]);
        let b: Vec<u8> = [1.0f32, -2.0]
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &b, 2).unwrap(), [1.0, -2.0]);
        let b: Vec<u8> = [3.25f32].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &b, 1).unwrap(), [3.25]);
    }

    #[test]
    fn dequantize_rejects_wrong_sizes_and_types() {
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 19], 32).is_err());
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 20], 31).is_err());
        assert!(dequantize(GgmlType::Other(12), &[0u8; 144], 256).is_err());
    }

    fn tiny() -> Vec<u8> {
        let w: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut q = Vec::new();
        q.extend(h(1.0));
        q.extend(h(0.0));
        q.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        write_gguf(
            &[
                (
                    "general.architecture".into(),
                    MetaValue::String("llama".into()),
                ),
                ("general.alignment".into(), MetaValue::U32(64)),
                ("x.u8".into(), MetaValue::U8(7)),
                ("x.i64".into(), MetaValue::I64(-3)),
                ("x.f64".into(), MetaValue::F64(0.5)),
                ("x.bool".into(), MetaValue::Bool(true)),
                (
                    "x.nested".into(),
                    MetaValue::Array(
                        9,
                        vec![MetaValue::Array(
                            4,
                            vec![MetaValue::U32(1), MetaValue::U32(2)],
                        )],
                    ),
                ),
            ],
            &[
                RawTensor {
                    name: "w".into(),
                    dims: vec![3, 2],
                    ggml_type: GgmlType::F32,
                    data: w.iter().flat_map(|x| x.to_le_bytes()).collect(),
                },
                RawTensor {
                    name: "q".into(),
                    dims: vec![32],
                    ggml_type: GgmlType::Q4_1,
                    data: q,
                },
                RawTensor {
                    name: "k".into(),
                    dims: vec![256],
                    ggml_type: GgmlType::Other(12),
                    data: vec![0; 144],
                },
            ],
        )
    }

    #[test]
    fn reads_a_file_it_wrote() {
        let f = GgufFile::from_bytes("tiny.gguf", tiny()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, 64);
        assert_eq!(f.data_offset % 64, 0);
        assert_eq!(f.get_u64("x.u8").unwrap(), 7);
        assert_eq!(f.get("x.i64").unwrap(), &MetaValue::I64(-3));
        assert!(f.get_u64("x.i64").is_err());
        assert_eq!(f.get_f64("x.f64").unwrap(), 0.5);
        assert_eq!(f.get("x.bool").unwrap(), &MetaValue::Bool(true));
        assert_eq!(f.get_array("x.nested").unwrap().len(), 1);
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        let w = f.tensor("w", Device::Cpu).unwrap();
        assert_eq!(w.size(), [2, 3]);
        assert_eq!(
            Vec::<f32>::try_from(w.flatten(0, -1)).unwrap(),
            [0., 1., 2., 3., 4., 5.]
        );
        assert_eq!(f.tensors[1].offset % 64, 0);
        let q = Vec::<f32>::try_from(f.tensor("q", Device::Cpu).unwrap()).unwrap();
        assert_eq!(q[..16], [1.0; 16]);
        assert_eq!(q[16..], [2.0; 16]);
        let e = f.tensor("k", Device::Cpu).unwrap_err();
        assert!(
            matches!(e, RlhfError::Format { .. }) && e.to_string().contains("\"k\""),
            "{e}"
        );
        assert!(f
            .tensor("nope", Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("nope"));
        assert!(f.get("nope").is_err());
    }

    #[test]
    fn corrupt_files_are_format_errors() {
        let good = tiny();
        for cut in [0, 3, 10, 30, good.len() / 2, good.len() - 1] {
            let e = GgufFile::from_bytes("t.gguf", good[..cut].to_vec()).unwrap_err();
            assert!(matches!(e, RlhfError::Format { .. }), "cut {cut}: {e}");
        }
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(GgufFile::from_bytes("t.gguf", bad)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut bad = good.clone();
        bad[4] = 1;
        assert!(GgufFile::from_bytes("t.gguf", bad)
            .unwrap_err()
            .to_string()
            .contains("version"));
        // A huge array length must not allocate: it is bounded by the bytes left.
        let mut bad = write_gguf(&[("a".into(), MetaValue::Array(4, vec![]))], &[]);
        // magic 4 + version 4 + counts 16 + key (8 + 1) + value type 4 + element type 4 = 41.
        bad[41..49].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::from_bytes("t.gguf", bad).is_err());
        assert!(matches!(
            GgufFile::open("/definitely/not/here.gguf").unwrap_err(),
            RlhfError::Io { .. }
        ));
    }

    #[test]
    fn chat_prompt_is_chatml() {
        let p = smollm2_chat_prompt("Hi");
        assert!(p.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
        assert!(p.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }
}
