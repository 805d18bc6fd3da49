//! Resident memory of this process, read from `/proc/self/status` (Linux): current RSS and its
//! high-water mark. Each measured configuration runs in its own child process, so the high-water
//! mark is that configuration's peak.

use anyhow::{Context, Result, bail};

/// Resident set sizes of one process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStatus {
    /// `VmRSS`: resident now.
    pub rss_bytes: u64,
    /// `VmHWM`: the most that was ever resident.
    pub peak_rss_bytes: u64,
}

/// This process's memory now.
pub fn own_memory() -> Result<MemoryStatus> {
    let text = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (memory figures need Linux's procfs)")?;
    parse_status(&text)
}

/// Reads `VmRSS` and `VmHWM` (kB) out of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Result<MemoryStatus> {
    let field = |name: &str| -> Result<u64> {
        let Some(line) = text.lines().find(|line| line.starts_with(name)) else {
            bail!("no {name} line in /proc/self/status");
        };
        let mut parts = line[name.len()..].split_whitespace();
        let (Some(value), Some("kB"), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!("unexpected {name} line: {line:?}");
        };
        let kib: u64 = value
            .parse()
            .with_context(|| format!("bad number in {line:?}"))?;
        Ok(kib * 1024)
    };
    Ok(MemoryStatus {
        rss_bytes: field("VmRSS:")?,
        peak_rss_bytes: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss_and_high_water_mark() -> Result<()> {
        let text = "Name:\txtask\nVmPeak:\t  900 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t3\n";
        let status = parse_status(text)?;
        assert_eq!(
            status,
            MemoryStatus {
                rss_bytes: 1024 * 1024,
                peak_rss_bytes: 2048 * 1024
            }
        );
        Ok(())
    }

    #[test]
    fn refuses_missing_or_malformed_fields() {
        assert!(parse_status("VmRSS:\t1 kB\n").is_err());
        assert!(parse_status("VmRSS:\t1 MB\nVmHWM:\t1 kB\n").is_err());
        assert!(parse_status("VmRSS:\tx kB\nVmHWM:\t1 kB\n").is_err());
    }

    #[test]
    fn own_memory_grows_with_a_touched_allocation() -> Result<()> {
        let before = own_memory()?;
        let block = vec![1u8; 64 << 20];
        let after = own_memory()?;
        assert!(block.iter().step_by(4096).all(|&b| b == 1));
        // 64 MiB touched: resident memory must rise by most of it (the allocator may reuse a little).
        assert!(
            after.rss_bytes >= before.rss_bytes + (48 << 20),
            "{before:?} -> {after:?}"
        );
        assert!(after.peak_rss_bytes >= after.rss_bytes);
        Ok(())
    }
}
