//! The two prompt tokenizers, producing exactly the ids transformers gives diffusers' FLUX
//! pipeline: CLIP (`tokenizer/`) padded to 77 and T5 (`tokenizer_2/`) padded to the text length,
//! both truncated with their end-of-sequence token kept.
//!
//! The FLUX.1-dev repository ships CLIP as `vocab.json` + `merges.txt` only; the pipeline built
//! here from those files is the one transformers' `CLIPTokenizer` builds (NFC, whitespace runs to
//! one space, lowercase; CLIP's split regex then byte-level; BPE with a `</w>` word suffix;
//! `<|startoftext|> … <|endoftext|>`).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, NormalizerWrapper, PaddingDirection, PaddingParams, PaddingStrategy,
    PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::error::{FluxError, Result};

/// CLIP's context length: every FLUX CLIP graph takes exactly 77 ids.
pub const CLIP_LENGTH: usize = 77;

const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";

/// A tokenizer that turns a prompt into exactly `length` ids.
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    length: usize,
    pad_id: u32,
}

impl PromptTokenizer {
    /// The CLIP tokenizer of a model folder's `tokenizer/` directory: `tokenizer.json` when there
    /// is one, else `vocab.json` + `merges.txt`. The pad token comes from `tokenizer_config.json`
    /// or `special_tokens_map.json` (FLUX.1 pads with `<|endoftext|>`).
    pub fn clip(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let mut tokenizer = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|error| tokenizer_error(&json, error))?
        } else {
            build_clip_from_bpe_files(dir)?
        };
        let pad_token = configured_token(dir, "pad_token")?.unwrap_or_else(|| CLIP_EOS.to_owned());
        let pad_id = token_id(&tokenizer, &pad_token, dir)?;
        configure_fixed_length(&mut tokenizer, CLIP_LENGTH, pad_id, &pad_token, dir)?;
        Ok(Self {
            tokenizer,
            length: CLIP_LENGTH,
            pad_id,
        })
    }

    /// The T5 tokenizer of a model folder's `tokenizer_2/` directory (`tokenizer.json`), producing
    /// `length` ids: the graph's text length.
    pub fn t5(dir: &Path, length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if !json.is_file() {
            return Err(FluxError::Tokenizer(format!("missing {}", json.display())));
        }
        let mut tokenizer =
            Tokenizer::from_file(&json).map_err(|error| tokenizer_error(&json, error))?;
        let pad_token = configured_token(dir, "pad_token")?.unwrap_or_else(|| "<pad>".to_owned());
        let pad_id = token_id(&tokenizer, &pad_token, dir)?;
        configure_fixed_length(&mut tokenizer, length, pad_id, &pad_token, dir)?;
        Ok(Self {
            tokenizer,
            length,
            pad_id,
        })
    }

    /// The ids of `prompt`: special tokens added, truncated (end-of-sequence kept) and padded to
    /// exactly [`Self::length`].
    pub fn encode(&self, prompt: &str) -> Result<Vec<i64>> {
        let encoding = self.tokenizer.encode(prompt, true).map_err(|error| {
            FluxError::Tokenizer(format!("cannot tokenize the prompt: {error}"))
        })?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
        if ids.len() != self.length {
            return Err(FluxError::Tokenizer(format!(
                "tokenizer produced {} ids, expected exactly {}",
                ids.len(),
                self.length
            )));
        }
        Ok(ids)
    }

    /// Number of ids [`Self::encode`] returns.
    pub fn length(&self) -> usize {
        self.length
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

fn tokenizer_error(path: &Path, error: impl std::fmt::Display) -> FluxError {
    FluxError::Tokenizer(format!("{}: {error}", path.display()))
}

fn build_clip_from_bpe_files(dir: &Path) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    for file in [&vocab, &merges] {
        if !file.is_file() {
            return Err(FluxError::Tokenizer(format!(
                "missing {} (CLIP needs tokenizer.json, or vocab.json + merges.txt)",
                file.display()
            )));
        }
    }
    let unk_token = configured_token(dir, "unk_token")?.unwrap_or_else(|| CLIP_EOS.to_owned());
    let bpe = BPE::from_file(&path_str(&vocab)?, &path_str(&merges)?)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_owned())
        .unk_token(unk_token)
        .build()
        .map_err(|error| tokenizer_error(&vocab, error))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let whitespace = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".to_owned()),
        " ",
    )
    .map_err(|error| tokenizer_error(dir, error))?;
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        NormalizerWrapper::NFC(NFC),
        NormalizerWrapper::Replace(whitespace),
        NormalizerWrapper::Lowercase(Lowercase),
    ])));

    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_REGEX.to_owned()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|error| tokenizer_error(dir, error))?;
    // transformers' ByteLevel(add_prefix_space=False) keeps its defaults trim_offsets and use_regex.
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ])));

    let bos = configured_token(dir, "bos_token")?.unwrap_or_else(|| CLIP_BOS.to_owned());
    let eos = configured_token(dir, "eos_token")?.unwrap_or_else(|| CLIP_EOS.to_owned());
    tokenizer.add_special_tokens(&[
        AddedToken::from(bos.clone(), true).normalized(true),
        AddedToken::from(eos.clone(), true).normalized(true),
    ]);
    let bos_id = token_id(&tokenizer, &bos, dir)?;
    let eos_id = token_id(&tokenizer, &eos, dir)?;
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((eos, eos_id), (bos, bos_id))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    Ok(tokenizer)
}

fn configure_fixed_length(
    tokenizer: &mut Tokenizer,
    length: usize,
    pad_id: u32,
    pad_token: &str,
    dir: &Path,
) -> Result<()> {
    // tokenizers counts the special tokens the post-processor adds against max_length, so the
    // end-of-sequence token survives truncation, as with transformers' truncation=True.
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|error| tokenizer_error(dir, error))?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(length),
        direction: PaddingDirection::Right,
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token: pad_token.to_owned(),
    }));
    Ok(())
}

fn token_id(tokenizer: &Tokenizer, token: &str, dir: &Path) -> Result<u32> {
    tokenizer.token_to_id(token).ok_or_else(|| {
        FluxError::Tokenizer(format!(
            "{}: token {token:?} is not in the vocabulary",
            dir.display()
        ))
    })
}

/// A special token named in `tokenizer_config.json` or `special_tokens_map.json` (either the
/// plain string form or the `{"content": …}` object form).
fn configured_token(dir: &Path, key: &str) -> Result<Option<String>> {
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| FluxError::Io {
            path: path.clone(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| FluxError::Config {
                path: path.clone(),
                message: error.to_string(),
            })?;
        let token = match config.get(key) {
            Some(serde_json::Value::String(token)) => Some(token.clone()),
            Some(serde_json::Value::Object(object)) => object
                .get("content")
                .and_then(|content| content.as_str())
                .map(str::to_owned),
            _ => None,
        };
        if token.is_some() {
            return Ok(token);
        }
    }
    Ok(None)
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| FluxError::Tokenizer(format!("path is not UTF-8: {}", path.display())))
}

/// The files a tokenizer directory must hold, for the model-folder check.
pub(crate) fn missing_clip_files(dir: &Path) -> Vec<PathBuf> {
    if dir.join("tokenizer.json").is_file() {
        return Vec::new();
    }
    ["vocab.json", "merges.txt"]
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| !path.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tiny_clip(dir: &Path) -> anyhow::Result<()> {
        // A byte-level vocabulary just big enough for "a cat": bytes, one merge, two specials.
        let vocab = serde_json::json!({
            "a": 0, "c": 1, "t": 2, "a</w>": 3, "t</w>": 4, "ca": 5, "cat</w>": 6,
            "<|startoftext|>": 7, "<|endoftext|>": 8
        });
        std::fs::write(dir.join("vocab.json"), vocab.to_string())?;
        std::fs::write(dir.join("merges.txt"), "#version: 0.2\nc a\nca t</w>\n")?;
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"pad_token": "<|endoftext|>"}"#,
        )?;
        Ok(())
    }

    #[test]
    fn clip_from_bpe_files_adds_specials_pads_and_keeps_eos_when_truncating() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        write_tiny_clip(dir.path())?;
        let tokenizer = PromptTokenizer::clip(dir.path())?;
        let ids = tokenizer.encode("A   CAT")?;
        assert_eq!(ids.len(), CLIP_LENGTH);
        assert_eq!(&ids[..4], &[7, 3, 6, 8]);
        assert!(
            ids[4..].iter().all(|&id| id == 8),
            "padding must be the configured pad token"
        );

        let long = "a ".repeat(200);
        let ids = tokenizer.encode(&long)?;
        assert_eq!(ids.len(), CLIP_LENGTH);
        assert_eq!(ids[0], 7);
        assert_eq!(ids[CLIP_LENGTH - 1], 8, "eos survives truncation");
        assert!(ids[1..CLIP_LENGTH - 1].iter().all(|&id| id == 3));
        Ok(())
    }

    #[test]
    fn clip_without_files_is_a_clear_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let error = PromptTokenizer::clip(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("vocab.json"), "{error}");
        assert_eq!(missing_clip_files(dir.path()).len(), 2);
        Ok(())
    }
}
