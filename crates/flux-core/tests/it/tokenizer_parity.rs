//! Token ids identical to the ones transformers gave diffusers for every reference case.

use crate::common;

use flux_core::tokenizer::PromptTokenizer;
use ndarray::Ix1;

#[test]
fn clip_and_t5_ids_match_the_references_exactly() -> anyhow::Result<()> {
    for case in common::cases()? {
        let clip = PromptTokenizer::clip(&case.model_dir().join("tokenizer"))?;
        let t5 = PromptTokenizer::t5(
            &case.model_dir().join("tokenizer_2"),
            case.max_sequence_length,
        )?;
        let expected_clip = case.npy::<i64, Ix1>("clip_ids")?;
        let expected_t5 = case.npy::<i64, Ix1>("t5_ids")?;
        assert_eq!(
            clip.encode(&case.prompt)?,
            expected_clip.to_vec(),
            "CLIP ids of {}",
            case.name
        );
        assert_eq!(
            t5.encode(&case.prompt)?,
            expected_t5.to_vec(),
            "T5 ids of {}",
            case.name
        );
    }
    Ok(())
}
