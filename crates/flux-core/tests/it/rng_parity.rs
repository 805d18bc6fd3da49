//! Bit-exact parity of `flux_core::rng::randn` with PyTorch's CPU generator, against the raw
//! `torch.randn` references in `fixtures/reference/randn/` (made by `tools/tiny-flux/generate.py`).

use crate::common;

use anyhow::{Context, Result, bail, ensure};
use ndarray::ArrayD;
use ndarray_npy::read_npy;

/// Index and value of the first element whose bits differ, if any.
fn first_bit_mismatch(ours: &ArrayD<f32>, torch: &ArrayD<f32>) -> Option<(usize, f32, f32)> {
    ours.iter()
        .zip(torch.iter())
        .enumerate()
        .find(|(_, (a, b))| a.to_bits() != b.to_bits())
        .map(|(index, (a, b))| (index, *a, *b))
}

#[test]
fn randn_is_bit_identical_to_torch_for_every_fixture() -> Result<()> {
    let index = common::randn_index()?;
    ensure!(
        !index.entries.is_empty(),
        "the randn index lists no entries"
    );
    let mut failures = Vec::new();
    for entry in &index.entries {
        let torch: ArrayD<f32> = read_npy(common::randn_dir().join(&entry.file))
            .with_context(|| format!("reading {}", entry.file))?;
        ensure!(
            torch.shape() == entry.shape.as_slice(),
            "{}: stored shape {:?} differs from the index's {:?}",
            entry.file,
            torch.shape(),
            entry.shape
        );
        let ours = flux_core::rng::randn(entry.seed, &entry.shape)?;
        ensure!(
            ours.shape() == torch.shape(),
            "{}: shape {:?}",
            entry.file,
            ours.shape()
        );
        if let Some((at, mine, theirs)) = first_bit_mismatch(&ours, &torch) {
            failures.push(format!(
                "seed {} shape {:?}: first mismatch at flat index {at}: ours {mine:e} ({:#010x}), \
                 torch {theirs:e} ({:#010x})",
                entry.seed,
                entry.shape,
                mine.to_bits(),
                theirs.to_bits()
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} fixtures differ:\n{}",
            failures.len(),
            index.entries.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

#[test]
fn the_fixtures_cover_both_kernels_and_the_seed_extremes() -> Result<()> {
    // Guards the parity test against a shrunken fixture set that would no longer exercise the
    // short-tensor path, the tail redraw, and the full 32-bit seed range.
    let index = common::randn_index()?;
    let numel = |entry: &common::RandnEntry| entry.shape.iter().product::<usize>();
    ensure!(
        index.entries.iter().any(|e| numel(e) < 16),
        "no entry below 16 elements"
    );
    ensure!(
        index
            .entries
            .iter()
            .any(|e| numel(e) >= 16 && numel(e) % 16 == 0),
        "no whole-block entry"
    );
    ensure!(
        index
            .entries
            .iter()
            .any(|e| numel(e) > 16 && numel(e) % 16 != 0),
        "no tail-redraw entry"
    );
    ensure!(index.entries.iter().any(|e| e.seed == 0), "seed 0 missing");
    ensure!(
        index.entries.iter().any(|e| e.seed == u64::from(u32::MAX)),
        "seed 2^32-1 missing"
    );
    Ok(())
}
