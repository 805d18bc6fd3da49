//! Token ids identical to transformers' for prompts the reference cases do not cover: whitespace
//! runs, blank-ish and very long prompts, unicode normalisation, control characters, literal
//! special tokens. The expected ids were written by `tests/data/tokenizer_edge_cases/make_expected.py`
//! (transformers' `CLIPTokenizer` and `T5TokenizerFast` on the tiny dev model's tokenizers, padded
//! and truncated as diffusers' FLUX pipeline asks: 77 CLIP ids, 32 T5 ids).

use crate::common;

use flux_core::tokenizer::PromptTokenizer;

#[derive(serde::Deserialize)]
struct Expected {
    prompt: String,
    clip: Vec<i64>,
    t5: Vec<i64>,
}

#[test]
fn edge_case_prompts_tokenize_like_transformers() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tokenizer_edge_cases/expected.json");
    let cases: Vec<Expected> = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    assert!(cases.len() >= 20, "the edge-case file lost its cases");
    let model = common::dev_model();
    let clip = PromptTokenizer::clip(&model.join("tokenizer"))?;
    let t5 = PromptTokenizer::t5(&model.join("tokenizer_2"), 32)?;
    let mut mismatches = Vec::new();
    for case in &cases {
        let clip_ids = clip.encode(&case.prompt)?;
        if clip_ids != case.clip {
            mismatches.push(format!(
                "CLIP {:?}:\n  ours {clip_ids:?}\n  transformers {:?}",
                case.prompt, case.clip
            ));
        }
        let t5_ids = t5.encode(&case.prompt)?;
        if t5_ids != case.t5 {
            mismatches.push(format!(
                "T5 {:?}:\n  ours {t5_ids:?}\n  transformers {:?}",
                case.prompt, case.t5
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    Ok(())
}
