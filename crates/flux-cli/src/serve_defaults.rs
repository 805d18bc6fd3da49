//! `flux serve`'s defaults, written the way its flags take them, each read from
//! `ServerConfig::default()`: the library's defaults are the one source, and the help shows them.

use std::net::SocketAddr;
use std::time::Duration;

use flux_remote::ServerConfig;

fn config() -> ServerConfig {
    ServerConfig::default()
}

pub(crate) fn listen() -> SocketAddr {
    config().listen
}

pub(crate) fn rate_limit() -> String {
    config()
        .rate_limit
        .map_or_else(|| "off".to_owned(), |limit| limit.to_string())
}

pub(crate) fn queue_depth() -> usize {
    config().queue_depth
}

pub(crate) fn files_quota() -> String {
    config()
        .files_quota
        .map_or_else(|| "off".to_owned(), byte_size)
}

pub(crate) fn retention() -> String {
    duration(config().retention)
}

pub(crate) fn request_timeout() -> String {
    duration(config().request_timeout)
}

pub(crate) fn read_timeout() -> String {
    duration(config().read_timeout)
}

pub(crate) fn drain_timeout() -> String {
    duration(config().drain_timeout)
}

/// A whole number of the largest unit that divides it exactly (`24h`, `10m`, `90s`; days from a
/// week on).
fn duration(value: Duration) -> String {
    let seconds = value.as_secs();
    match seconds {
        0 => "0s".to_owned(),
        // Days only from a week on: a day reads better as 24h.
        s if s >= 7 * 86_400 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A whole number of the largest binary unit that divides it exactly (`10GiB`, `512MiB`).
fn byte_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    UNITS
        .iter()
        .find(|(_, size)| bytes != 0 && bytes.is_multiple_of(*size))
        .map_or_else(
            || bytes.to_string(),
            |(unit, size)| format!("{}{unit}", bytes / size),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_the_largest_that_divide_exactly() {
        assert_eq!(duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(duration(Duration::from_secs(600)), "10m");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(byte_size(10 << 30), "10GiB");
        assert_eq!(byte_size(1536), "1536");
        assert_eq!(byte_size(512 << 20), "512MiB");
    }
}
