//! The client's address, for the limits that key on it: the TCP peer, or behind a trusted proxy
//! the last `X-Forwarded-For` entry (the one that proxy appended, which a client cannot forge).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::Request;

/// Where a request came from, as the limits key it: IPv4 addresses whole, IPv6 by their /64
/// (one host is usually given a whole /64, so single addresses would cost an attacker nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(IpAddr);

impl ClientKey {
    /// Requests with no known address (in-process tests) share one key.
    pub(crate) const UNKNOWN: ClientKey = ClientKey(IpAddr::V6(Ipv6Addr::UNSPECIFIED));

    pub(crate) fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    ClientKey(IpAddr::V6(Ipv6Addr::from(segments)))
                }
            },
        }
    }

    /// Bytes that name this key (for hashing it into a rate-limit bucket key).
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        format!("address:{}", self.0).into_bytes()
    }
}

/// The client address of `request`.
pub(crate) fn client_key<B>(request: &Request<B>, trust_forwarded_for: bool) -> ClientKey {
    if trust_forwarded_for
        && let Some(ip) = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| parse_forwarded_ip(last.trim()))
    {
        return ClientKey::new(ip);
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(ClientKey::UNKNOWN, |ConnectInfo(peer)| {
            ClientKey::new(peer.ip())
        })
}

/// `203.0.113.7`, `2001:db8::1`, and the forms with a port (`203.0.113.7:4711`,
/// `[2001:db8::1]:4711`).
fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_used_only_when_trusted_and_its_last_entry_counts() {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 80))));
        request.headers_mut().insert(
            "x-forwarded-for",
            "1.2.3.4, 198.51.100.9:5000".parse().unwrap(),
        );
        let peer = ClientKey::new("10.0.0.1".parse().unwrap());
        assert_eq!(client_key(&request, false), peer);
        assert_eq!(
            client_key(&request, true),
            ClientKey::new("198.51.100.9".parse().unwrap())
        );
        request
            .headers_mut()
            .insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_key(&request, true), peer);
        assert_eq!(
            ClientKey::new("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            ClientKey::new("2001:db8:1:2:ffff::1".parse().unwrap())
        );
    }
}
