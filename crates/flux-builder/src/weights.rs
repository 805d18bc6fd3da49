//! safetensors checkpoints: header parsing with validation, sharded components, and tensor reads.
//!
//! A safetensors file is `u64 LE header length`, a JSON header, then raw little-endian tensor data;
//! the header's `data_offsets` are relative to the end of the header. Every header is validated on
//! open (a truncated file, offsets that lie, overlapping data, a shape that does not match the byte
//! count...), so that later reads cannot fail on a malformed header and nothing ever panics on a
//! file a user controls. Tensor data is read with plain positioned reads in bounded chunks: memory
//! never depends on the checkpoint's size (the workspace denies `unsafe`, hence no mmap).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{BuilderError, Result};

mod format;
use format::parse_file;
pub use format::{f32_bytes, write_safetensors};

/// A header larger than this is refused (the real FLUX transformer's is about 100 KB).
const MAX_HEADER_BYTES: u64 = 100 << 20;
/// Reads are done in chunks of this many bytes so that conversion needs no second full copy.
const READ_CHUNK: usize = 4 << 20;

/// Element type of a float tensor the builder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// A dtype as written in a header: a float type we read, or another known one (kept so that a file
/// with, say, an int64 `position_ids` buffer still opens; reading that tensor is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Float(DType),
    Other(&'static str, usize),
}

fn parse_dtype(s: &str) -> Option<Stored> {
    Some(match s {
        "F32" => Stored::Float(DType::F32),
        "F16" => Stored::Float(DType::F16),
        "BF16" => Stored::Float(DType::BF16),
        "F64" => Stored::Other("F64", 8),
        "I64" => Stored::Other("I64", 8),
        "U64" => Stored::Other("U64", 8),
        "I32" => Stored::Other("I32", 4),
        "U32" => Stored::Other("U32", 4),
        "I16" => Stored::Other("I16", 2),
        "U16" => Stored::Other("U16", 2),
        "I8" => Stored::Other("I8", 1),
        "U8" => Stored::Other("U8", 1),
        "BOOL" => Stored::Other("BOOL", 1),
        "F8_E4M3" => Stored::Other("F8_E4M3", 1),
        "F8_E5M2" => Stored::Other("F8_E5M2", 1),
        _ => return None,
    })
}

/// Where one tensor's bytes are. `offset` is absolute in `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One safetensors file of a checkpoint, as the cache key sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 of the 8-byte length and the JSON header (not of the data).
    pub header_sha256: [u8; 32],
}

#[derive(Debug, Clone)]
enum Entry {
    File(TensorInfo),
    /// A tensor of another dtype, refused when read.
    Unsupported {
        dtype: &'static str,
        file: PathBuf,
    },
    /// Computed in memory (a LoRA merge, a split); always f32.
    Owned {
        shape: Vec<usize>,
        data: Arc<[f32]>,
    },
}

/// Tensors by name over one or more safetensors files.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    entries: BTreeMap<String, Entry>,
    files: Vec<FileMeta>,
}

fn bad(path: &Path, message: impl Into<String>) -> BuilderError {
    BuilderError::Safetensors {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn bad_tensor(path: &Path, tensor: &str, message: impl Into<String>) -> BuilderError {
    BuilderError::BadTensor {
        path: path.to_owned(),
        tensor: tensor.to_owned(),
        message: message.into(),
    }
}

impl Checkpoint {
    /// An empty checkpoint (for tensors made in memory only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens one `.safetensors` file and validates its header.
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut ckpt = Self::new();
        ckpt.add_file(path)?;
        Ok(ckpt)
    }

    /// Opens a diffusers/transformers component folder: a `*.safetensors.index.json` with its
    /// shards, else `model.safetensors` or `diffusion_pytorch_model.safetensors`.
    pub fn open_component(dir: &Path) -> Result<Self> {
        const SINGLE: [&str; 2] = ["diffusion_pytorch_model.safetensors", "model.safetensors"];
        for single in SINGLE {
            let index = dir.join(format!("{single}.index.json"));
            if index.is_file() {
                return Self::open_index(&index);
            }
        }
        for single in SINGLE {
            let path = dir.join(single);
            if path.is_file() {
                return Self::open_file(&path);
            }
        }
        Err(bad(
            dir,
            format!(
                "no weights: looked for {}",
                SINGLE
                    .iter()
                    .flat_map(|s| [format!("{s}.index.json"), (*s).to_owned()])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// Opens every shard an index names and checks that each tensor is where the index says.
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| BuilderError::io(index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| BuilderError::Config {
                path: index.to_owned(),
                message: format!("not a JSON index: {e}"),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| BuilderError::Config {
                path: index.to_owned(),
                message: "no \"weight_map\" object".into(),
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        // shard file name -> the tensors the index puts there
        let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| BuilderError::Config {
                path: index.to_owned(),
                message: format!("weight_map entry {tensor} is not a file name"),
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(BuilderError::Config {
                    path: index.to_owned(),
                    message: format!("weight_map entry {tensor} names {file}, outside the folder"),
                });
            }
            shards.entry(file).or_default().push(tensor);
        }
        let mut ckpt = Self::new();
        for (file, tensors) in &shards {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(BuilderError::MissingTensor {
                    tensor: tensors[0].to_owned(),
                    files: format!(
                        "the missing shard {} (named by {} for {} tensors)",
                        path.display(),
                        index.display(),
                        tensors.len()
                    ),
                });
            }
            ckpt.add_file(&path)?;
            for tensor in tensors {
                match ckpt.entries.get(*tensor) {
                    Some(Entry::File(info)) if info.file == path => {}
                    Some(Entry::Unsupported { file, .. }) if *file == path => {}
                    _ => {
                        return Err(BuilderError::MissingTensor {
                            tensor: (*tensor).to_owned(),
                            files: format!(
                                "{} (where {} says it is)",
                                path.display(),
                                index.display()
                            ),
                        });
                    }
                }
            }
        }
        Ok(ckpt)
    }

    /// Adds the tensors of one more file; a name already present is an error.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let (meta, tensors) = parse_file(path)?;
        for (name, entry) in tensors {
            if let Some(previous) = self.entries.get(&name) {
                let other = match previous {
                    Entry::File(info) => info.file.display().to_string(),
                    Entry::Unsupported { file, .. } => file.display().to_string(),
                    Entry::Owned { .. } => "memory".to_owned(),
                };
                return Err(bad_tensor(path, &name, format!("also present in {other}")));
            }
            self.entries.insert(name, entry);
        }
        self.files.push(meta);
        Ok(())
    }

    /// The files this checkpoint reads, with their header digests (for cache keys).
    pub fn files(&self) -> &[FileMeta] {
        &self.files
    }

    fn files_list(&self) -> String {
        if self.files.is_empty() {
            return "an in-memory checkpoint".to_owned();
        }
        self.files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| BuilderError::MissingTensor {
                tensor: name.to_owned(),
                files: self.files_list(),
            })
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Where a tensor is. Tensors held in memory ([`Checkpoint::insert_owned`]) have an empty
    /// `file` and offset 0.
    pub fn info(&self, name: &str) -> Result<TensorInfo> {
        match self.entry(name)? {
            Entry::File(info) => Ok(info.clone()),
            Entry::Unsupported { dtype, file } => Err(bad_tensor(
                file,
                name,
                format!("dtype {dtype} is not a float type the builder reads (F32, F16, BF16)"),
            )),
            Entry::Owned { shape, data } => Ok(TensorInfo {
                name: name.to_owned(),
                dtype: DType::F32,
                shape: shape.clone(),
                file: PathBuf::new(),
                offset: 0,
                len: (data.len() * 4) as u64,
            }),
        }
    }

    /// The shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape)
    }

    /// The data of a tensor held in memory, if it is one.
    pub fn owned(&self, name: &str) -> Option<Arc<[f32]>> {
        match self.entries.get(name) {
            Some(Entry::Owned { data, .. }) => Some(data.clone()),
            _ => None,
        }
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// A tensor as f32 (bf16 and f16 converted exactly).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        if let Some(data) = self.owned(name) {
            return Ok(data.to_vec());
        }
        let info = self.info(name)?;
        let mut out = Vec::with_capacity(info.numel());
        for_each_chunk(&info, |bytes| {
            extend_f32(&mut out, bytes, info.dtype);
            Ok(())
        })?;
        Ok(out)
    }

    /// Checks that a tensor has the shape a config implies.
    pub fn expect_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let info = self.info(name)?;
        if info.shape != expected {
            return Err(BuilderError::ShapeMismatch {
                path: info.file.clone(),
                tensor: name.to_owned(),
                expected: expected.to_vec(),
                got: info.shape,
            });
        }
        Ok(())
    }

    /// Adds or replaces a tensor computed in memory (LoRA merges, BFL splits).
    pub fn insert_owned(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.entries.insert(
            name.to_owned(),
            Entry::Owned {
                shape,
                data: data.into(),
            },
        );
    }

    /// Renames a tensor; the old name must exist.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let mut entry = self
            .entries
            .remove(from)
            .ok_or_else(|| BuilderError::MissingTensor {
                tensor: from.to_owned(),
                files: self.files_list(),
            })?;
        if let Entry::File(info) = &mut entry {
            info.name = to.to_owned();
        }
        self.entries.insert(to.to_owned(), entry);
        Ok(())
    }

    /// Removes a tensor (e.g. a fused one after its parts were inserted as views).
    pub fn remove(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Adds a tensor that is a byte range of a file (a row-range slice of a fused tensor).
    pub fn insert_view(&mut self, name: &str, info: TensorInfo) {
        self.entries.insert(name.to_owned(), Entry::File(info));
    }
}

/// Calls `f` with consecutive chunks (whole elements) of a tensor's bytes.
pub(crate) fn for_each_chunk(
    info: &TensorInfo,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut file = File::open(&info.file).map_err(|e| BuilderError::io(&info.file, e))?;
    file.seek(SeekFrom::Start(info.offset))
        .map_err(|e| BuilderError::io(&info.file, e))?;
    let elem = info.dtype.size();
    let chunk = READ_CHUNK - READ_CHUNK % elem;
    let mut buf = vec![0u8; chunk.min(info.len as usize)];
    let mut left = info.len as usize;
    while left > 0 {
        let n = left.min(chunk);
        file.read_exact(&mut buf[..n]).map_err(|e| {
            bad_tensor(
                &info.file,
                &info.name,
                format!("cannot read its data (file changed or truncated?): {e}"),
            )
        })?;
        f(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Appends little-endian elements of `dtype` as f32.
pub(crate) fn extend_f32(out: &mut Vec<f32>, bytes: &[u8], dtype: DType) {
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        DType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        DType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

#[cfg(test)]
mod tests;
