//! Bearer API keys: stored as SHA-256 digests and compared in constant time; never logged.

use axum::http::{HeaderMap, header};
use flux_types::ErrorCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_error::ApiErrorResponse;

/// Who is calling: the digest of the caller's key, or the anonymous caller when the server allows
/// unauthenticated requests. Used to key rate limits and idempotency records. `Debug` shows no
/// key material.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Caller(pub(crate) [u8; 32]);

impl Caller {
    /// The owner of the jobs this caller submits.
    pub(crate) fn owner(self) -> flux_service::Owner {
        flux_service::Owner(self.0)
    }

    /// All-zero: no key hashes to it in practice.
    pub(crate) const ANONYMOUS: Caller = Caller([0; 32]);

    /// The rate-limit bucket of an anonymous caller at `client`: without keys, callers are told
    /// apart by address (the digest keeps it out of the key space).
    pub(crate) fn for_address(client: crate::client_addr::ClientKey) -> Caller {
        Caller(sha256(&client.to_bytes()))
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Caller::ANONYMOUS {
            f.write_str("Caller(anonymous)")
        } else {
            f.write_str("Caller(key)")
        }
    }
}

/// The accepted keys, as digests.
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
    allow_unauthenticated: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.digests.len())
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .finish()
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ApiKeys {
    pub(crate) fn new(keys: &[String], allow_unauthenticated: bool) -> Self {
        ApiKeys {
            digests: keys.iter().map(|key| sha256(key.as_bytes())).collect(),
            allow_unauthenticated,
        }
    }

    /// Checks an `Authorization` header. Digests have a fixed length, and every stored digest is
    /// compared, so the time taken says nothing about which key or how much of it matched.
    ///
    /// Two `Authorization` headers are refused (400 `malformed_request`): which one a proxy or
    /// another server would take differs, so neither is taken.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiErrorResponse> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let authorization = values.next();
        if values.next().is_some() {
            return Err(ApiErrorResponse::with_param(
                ErrorCode::MalformedRequest,
                "Authorization",
                "the request has more than one Authorization header; send exactly one",
            ));
        }
        let Some(value) = authorization else {
            if self.allow_unauthenticated {
                return Ok(Caller::ANONYMOUS);
            }
            return Err(ApiErrorResponse::unauthorized(
                "missing API key: send 'Authorization: Bearer <api key>'",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| {
                let (scheme, token) = text.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiErrorResponse::unauthorized(
                    "malformed Authorization header: expected 'Bearer <api key>'",
                )
            })?;
        let presented = sha256(token.as_bytes());
        let mut found = subtle::Choice::from(0u8);
        for digest in &self.digests {
            found |= digest.ct_eq(&presented);
        }
        if bool::from(found) {
            Ok(Caller(presented))
        } else {
            Err(ApiErrorResponse::unauthorized("unknown API key"))
        }
    }
}
