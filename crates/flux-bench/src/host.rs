//! What a result was measured on: host, CPU, git revision, date, runtime versions.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The machine and source tree a benchmark ran on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub cpu_model: String,
    /// Logical CPUs this process may run on.
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    pub kernel: String,
    pub git_revision: String,
    /// Uncommitted changes in the tree when the benchmark ran.
    pub git_dirty: bool,
    /// UTC, RFC 3339.
    pub date: String,
    pub onnxruntime_version: String,
    pub rustc_version: String,
    /// The CPU's fp32 peak, derived from its vector units and clock (absent from older runs).
    #[serde(default)]
    pub cpu_peak: Option<CpuPeak>,
}

/// Peak fp32 throughput of the cores this process may use: cores × FLOP per cycle × clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuPeak {
    pub cores: usize,
    /// fp32 operations per cycle and core (an FMA counts two).
    pub flops_per_cycle: u32,
    pub ghz: f64,
    pub gflops: f64,
    /// How `flops_per_cycle` was derived.
    pub how: String,
}

/// Reads the host facts; a fact that cannot be read is `"unknown"`, never an error.
pub fn collect(repo_root: &Path) -> HostInfo {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .ok()
    };
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    let git = |args: &[&str]| command_output(Command::new("git").current_dir(repo_root).args(args));
    HostInfo {
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(unknown),
        cpu_model: cpu_model(&cpuinfo).unwrap_or_else(unknown),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        memory_bytes: mem_total(&meminfo),
        kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(unknown),
        git_revision: git(&["rev-parse", "HEAD"]).unwrap_or_else(unknown),
        git_dirty: git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()),
        date: rfc3339_utc(SystemTime::now()),
        onnxruntime_version: flux_core::ONNXRUNTIME_VERSION.to_owned(),
        rustc_version: command_output(Command::new("rustc").arg("-V")).unwrap_or_else(unknown),
        cpu_peak: cpu_peak(
            &cpuinfo,
            std::thread::available_parallelism().map_or(1, usize::from),
        ),
    }
}

fn cpuinfo_field<'a>(cpuinfo: &'a str, name: &str) -> Option<&'a str> {
    cpuinfo
        .lines()
        .find(|line| line.split(':').next().is_some_and(|key| key.trim() == name))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim())
}

/// fp32 FLOP per cycle per core from the vendor, family and vector flags, assuming two FMA pipes
/// (every server core of the last decade has two): AVX-512 is 2 × 16 lanes × 2 on Intel and on
/// AMD Zen 5 (family 26), but Zen 4 (family 25) runs it as two 256-bit halves, so 2 × 8 × 2, as
/// AVX2 with FMA everywhere; without FMA, AVX is 2 × 8 (an add and a multiply pipe).
pub fn flops_per_cycle(cpuinfo: &str) -> Option<(u32, String)> {
    let flags: Vec<&str> = cpuinfo_field(cpuinfo, "flags")?
        .split_whitespace()
        .collect();
    let has = |flag: &str| flags.contains(&flag);
    let vendor = cpuinfo_field(cpuinfo, "vendor_id").unwrap_or("unknown");
    let family: u32 = cpuinfo_field(cpuinfo, "cpu family")
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    let amd = vendor == "AuthenticAMD";
    Some(if has("avx512f") && !(amd && family < 26) {
        (
            64,
            format!("{vendor} with AVX-512: 2 FMA pipes × 16 fp32 lanes × 2"),
        )
    } else if has("avx512f") || (has("avx2") && has("fma")) {
        (
            32,
            format!(
                "{vendor} family {family}, AVX2/FMA (AVX-512 in 256-bit halves on AMD before Zen 5): 2 FMA pipes × 8 fp32 lanes × 2"
            ),
        )
    } else if has("avx") {
        (
            16,
            format!("{vendor}, AVX without FMA: an add and a multiply pipe × 8 fp32 lanes"),
        )
    } else {
        (8, format!("{vendor}, SSE: 2 pipes × 4 fp32 lanes"))
    })
}

fn cpu_peak(cpuinfo: &str, cores: usize) -> Option<CpuPeak> {
    let (flops_per_cycle, how) = flops_per_cycle(cpuinfo)?;
    let ghz = cpuinfo_field(cpuinfo, "cpu MHz")?.parse::<f64>().ok()? / 1000.0;
    Some(CpuPeak {
        cores,
        flops_per_cycle,
        ghz,
        gflops: cores as f64 * f64::from(flops_per_cycle) * ghz,
        how: format!("{how}; clock: /proc/cpuinfo's cpu MHz ({ghz:.2} GHz)"),
    })
}

fn unknown() -> String {
    "unknown".to_owned()
}

fn command_output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `2026-11-24T00:30:58Z` for a time after the epoch (whole seconds).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_known_instants() {
        let at = |secs| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_798_072_258), "2026-12-24T00:30:58Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn peak_from_vendor_family_and_flags() {
        let info = |vendor: &str, family: u32, flags: &str| {
            format!(
                "vendor_id\t: {vendor}\ncpu family\t: {family}\ncpu MHz\t\t: 2000.000\nflags\t\t: {flags}\n"
            )
        };
        let per_cycle = |text: &str| flops_per_cycle(text).map(|(n, _)| n);
        assert_eq!(
            per_cycle(&info("GenuineIntel", 6, "fpu avx avx2 fma avx512f")),
            Some(64)
        );
        assert_eq!(
            per_cycle(&info("AuthenticAMD", 25, "avx avx2 fma avx512f")),
            Some(32)
        );
        assert_eq!(
            per_cycle(&info("AuthenticAMD", 26, "avx avx2 fma avx512f")),
            Some(64)
        );
        assert_eq!(
            per_cycle(&info("AuthenticAMD", 23, "avx avx2 fma")),
            Some(32)
        );
        assert_eq!(
            per_cycle(&info("GenuineIntel", 6, "sse sse2 avx")),
            Some(16)
        );
        let peak = cpu_peak(&info("GenuineIntel", 6, "avx2 fma avx512f"), 2).expect("peak");
        assert_eq!(peak.gflops, 256.0);
        assert_eq!(flops_per_cycle("processor : 0\n"), None);
    }

    #[test]
    fn reads_cpu_model_and_memory() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(
            mem_total("MemTotal:       24576000 kB\n"),
            Some(24_576_000 * 1024)
        );
    }
}
