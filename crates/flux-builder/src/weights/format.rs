//! The safetensors file format: header parsing with validation, and a small writer.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{
    DType, Entry, FileMeta, MAX_HEADER_BYTES, Stored, TensorInfo, bad, bad_tensor, parse_dtype,
};
use crate::error::{BuilderError, Result};

pub(super) fn parse_file(path: &Path) -> Result<(FileMeta, Vec<(String, Entry)>)> {
    let mut file = File::open(path).map_err(|e| BuilderError::io(path, e))?;
    let size = file
        .metadata()
        .map_err(|e| BuilderError::io(path, e))?
        .len();
    if size < 8 {
        return Err(bad(
            path,
            format!("{size} bytes, shorter than the 8-byte header length (truncated?)"),
        ));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| BuilderError::io(path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(
            path,
            format!("header length {header_len} is implausible (more than {MAX_HEADER_BYTES})"),
        ));
    }
    if 8 + header_len > size {
        return Err(bad(
            path,
            format!(
                "header of {header_len} bytes does not fit in the {size}-byte file (truncated?)"
            ),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| BuilderError::io(path, e))?;
    let mut hasher = Sha256::new();
    hasher.update(len_bytes);
    hasher.update(&header);
    let meta = FileMeta {
        path: path.to_owned(),
        size,
        header_sha256: hasher.finalize().into(),
    };
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(path, format!("header is not JSON: {e}")))?;
    let object = json
        .as_object()
        .ok_or_else(|| bad(path, "header is not a JSON object"))?;
    let data_start = 8 + header_len;
    let data_len = size - data_start;
    let mut tensors = Vec::with_capacity(object.len());
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(object.len());
    for (name, value) in object {
        if name == "__metadata__" {
            continue;
        }
        let t = value
            .as_object()
            .ok_or_else(|| bad_tensor(path, name, "header entry is not an object"))?;
        let dtype_name = t
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad_tensor(path, name, "no dtype"))?;
        let stored = parse_dtype(dtype_name)
            .ok_or_else(|| bad_tensor(path, name, format!("unknown dtype {dtype_name:?}")))?;
        let shape = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad_tensor(path, name, "no shape array"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad_tensor(path, name, "shape is not a list of sizes"))?;
        let offsets = t
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad_tensor(path, name, "data_offsets is not [begin, end]"))?;
        let (begin, end) = offsets;
        if begin > end || end > data_len {
            return Err(bad_tensor(
                path,
                name,
                format!(
                    "data_offsets [{begin}, {end}] lie outside the {data_len} data bytes (truncated file or a header that lies)"
                ),
            ));
        }
        let elem_size = match stored {
            Stored::Float(d) => d.size(),
            Stored::Other(_, s) => s,
        };
        let expected = shape
            .iter()
            .try_fold(elem_size as u64, |acc, &d| acc.checked_mul(d as u64));
        if expected != Some(end - begin) {
            return Err(bad_tensor(
                path,
                name,
                format!(
                    "shape {shape:?} of {dtype_name} needs {} bytes, data_offsets give {}",
                    expected.map_or("too many".to_owned(), |e| e.to_string()),
                    end - begin
                ),
            ));
        }
        ranges.push((begin, end, name));
        let entry = match stored {
            Stored::Float(dtype) => Entry::File(TensorInfo {
                name: name.clone(),
                dtype,
                shape,
                file: path.to_owned(),
                offset: data_start + begin,
                len: end - begin,
            }),
            Stored::Other(dtype, _) => Entry::Unsupported {
                dtype,
                file: path.to_owned(),
            },
        };
        tensors.push((name.clone(), entry));
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        let ((_, end_a, a), (begin_b, _, b)) = (pair[0], pair[1]);
        if begin_b < end_a {
            return Err(bad_tensor(
                path,
                b,
                format!("its data overlaps tensor {a}'s (a header that lies)"),
            ));
        }
    }
    Ok((meta, tensors))
}

/// Writes a safetensors file (tests, fixtures, and tools). `data` is the little-endian bytes of
/// each tensor; the header is padded to a multiple of 8 bytes as the reference writer does.
pub fn write_safetensors(path: &Path, tensors: &[(&str, DType, &[usize], &[u8])]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            (*name).to_owned(),
            serde_json::json!({
                "dtype": dtype.name(),
                "shape": shape,
                "data_offsets": [offset, offset + data.len()],
            }),
        );
        offset += data.len();
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + text.len() + offset);
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&text);
    for (_, _, _, data) in tensors {
        bytes.extend_from_slice(data);
    }
    std::fs::write(path, bytes).map_err(|e| BuilderError::io(path, e))
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
