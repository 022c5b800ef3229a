//! Digest authentication (RFC 3261 §22, RFC 7616, RFC 8760 for SHA-256).
//!
//! The server side never sees a password: it stores HA1 = H(user:realm:password) per algorithm.
//! Nonces carry their sequence number and issue time, authenticated by an HMAC under a key that
//! is random per process; a bounded window of recently issued nonces records the highest nonce
//! count seen, so a nonce cannot be replayed and old nonces become stale. Everything here is
//! pure: time comes in as a monotonic millisecond count.

use crate::header::DigestParams;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use subtle::ConstantTimeEq;

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// Parses the `algorithm` parameter (absent means MD5).
    pub fn parse(text: Option<&str>) -> Option<Algorithm> {
        match text {
            None => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("MD5") => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("SHA-256") => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Hex digest of `data`.
    pub fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// HA1 = H(username:realm:password).
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&format!("{username}:{realm}:{password}"))
}

/// The credentials of an Authorization / Proxy-Authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    /// `Some("auth")` when the client used qop.
    pub qop: Option<String>,
    pub cnonce: Option<String>,
    /// Nonce count, parsed from 8 hex digits.
    pub nc: Option<u32>,
}

impl Credentials {
    /// Parses a header value; the error names what is missing or malformed.
    pub fn parse(value: &str) -> Result<Credentials, String> {
        let p = DigestParams::parse(value)?;
        let need = |k: &str| {
            p.get(k)
                .map(str::to_string)
                .ok_or_else(|| format!("digest credentials lack '{k}'"))
        };
        let algorithm = Algorithm::parse(p.get("algorithm")).ok_or_else(|| {
            format!(
                "unsupported digest algorithm '{}'",
                p.get("algorithm").unwrap_or("")
            )
        })?;
        let qop = p.get("qop").map(str::to_string);
        let (cnonce, nc) = match qop.as_deref() {
            None => (None, None),
            Some("auth") => {
                let nc_text = need("nc")?;
                if nc_text.len() != 8 {
                    return Err(format!("nonce count '{nc_text}' is not 8 hex digits"));
                }
                let nc = u32::from_str_radix(&nc_text, 16)
                    .map_err(|_| format!("nonce count '{nc_text}' is not hex"))?;
                (Some(need("cnonce")?), Some(nc))
            }
            Some(other) => return Err(format!("unsupported qop '{other}'")),
        };
        let response = need("response")?;
        let expected_len = match algorithm {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        };
        if response.len() != expected_len || !response.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("digest response is not {expected_len} hex digits"));
        }
        Ok(Credentials {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: response.to_ascii_lowercase(),
            algorithm,
            qop,
            cnonce,
            nc,
        })
    }

    /// True when the response matches the stored HA1 for this method (constant-time compare).
    pub fn verify(&self, method: &str, ha1: &str) -> bool {
        let expected = response(
            self.algorithm,
            ha1,
            &self.nonce,
            self.nc,
            self.cnonce.as_deref(),
            self.qop.as_deref(),
            method,
            &self.uri,
        );
        expected.as_bytes().ct_eq(self.response.as_bytes()).into()
    }
}

/// The request-digest (RFC 7616 §3.4.1).
#[allow(clippy::too_many_arguments)]
pub fn response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    nc: Option<u32>,
    cnonce: Option<&str>,
    qop: Option<&str>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = algorithm.hash(&format!("{method}:{uri}"));
    match (qop, nc, cnonce) {
        (Some(qop), Some(nc), Some(cnonce)) => {
            algorithm.hash(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}"))
        }
        _ => algorithm.hash(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Issued by us, not expired: the slot to consume once the response verifies.
    Fresh(NonceSlot),
    /// Issued by us but expired or out of the window: challenge again with `stale=true`.
    Stale,
    /// Not a nonce of ours.
    Invalid,
}

/// A handle on an issued nonce's replay record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceSlot(u64);

/// Issues and checks nonces. Memory is bounded by `capacity` nonces (4 bytes each plus the
/// issue time); a nonce pushed out of the window is stale, never accepted again.
pub struct Nonces {
    key: [u8; 32],
    realm: String,
    ttl_ms: u64,
    capacity: usize,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    /// Per issued nonce: (issue time, highest nonce count accepted; 0 = never used).
    slots: VecDeque<(u64, u32)>,
}

const NONCE_BYTES: usize = 8 + 8 + 16;

impl Nonces {
    /// A nonce issuer for `realm`. `key` must be random and secret (per process is fine: after
    /// a restart old nonces are simply stale).
    pub fn new(key: [u8; 32], realm: &str, ttl_ms: u64, capacity: usize) -> Nonces {
        Nonces {
            key,
            realm: realm.to_string(),
            ttl_ms,
            capacity: capacity.max(1),
            first_seq: 0,
            slots: VecDeque::new(),
        }
    }

    fn mac(&self, seq: u64, issued_ms: u64) -> [u8; 16] {
        let mut out = [0u8; 16];
        if let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) {
            mac.update(&seq.to_be_bytes());
            mac.update(&issued_ms.to_be_bytes());
            mac.update(self.realm.as_bytes());
            let full = mac.finalize().into_bytes();
            out.copy_from_slice(&full[..16]);
        }
        out
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(issued, _)) = self.slots.front() {
            if issued + self.ttl_ms <= now_ms || self.slots.len() > self.capacity {
                self.slots.pop_front();
                self.first_seq += 1;
            } else {
                break;
            }
        }
    }

    /// Issues a new nonce.
    pub fn issue(&mut self, now_ms: u64) -> String {
        self.expire(now_ms);
        let seq = self.first_seq + self.slots.len() as u64;
        self.slots.push_back((now_ms, 0));
        if self.slots.len() > self.capacity {
            self.slots.pop_front();
            self.first_seq += 1;
        }
        let mut raw = [0u8; NONCE_BYTES];
        raw[..8].copy_from_slice(&seq.to_be_bytes());
        raw[8..16].copy_from_slice(&now_ms.to_be_bytes());
        raw[16..].copy_from_slice(&self.mac(seq, now_ms));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a nonce presented by a client.
    pub fn check(&mut self, nonce: &str, now_ms: u64) -> NonceState {
        self.expire(now_ms);
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
            return NonceState::Invalid;
        };
        if raw.len() != NONCE_BYTES {
            return NonceState::Invalid;
        }
        let mut seq_b = [0u8; 8];
        seq_b.copy_from_slice(&raw[..8]);
        let mut at_b = [0u8; 8];
        at_b.copy_from_slice(&raw[8..16]);
        let seq = u64::from_be_bytes(seq_b);
        let issued = u64::from_be_bytes(at_b);
        let mac_ok: bool = self.mac(seq, issued).ct_eq(&raw[16..]).into();
        if !mac_ok {
            return NonceState::Invalid;
        }
        if seq < self.first_seq
            || seq >= self.first_seq + self.slots.len() as u64
            || issued + self.ttl_ms <= now_ms
        {
            return NonceState::Stale;
        }
        NonceState::Fresh(NonceSlot(seq))
    }

    /// Records a use of a nonce whose response verified. Returns false for a replay: a nonce
    /// count not above the last one accepted (without qop, a nonce is good for one use).
    pub fn consume(&mut self, slot: NonceSlot, nc: Option<u32>) -> bool {
        let Some(idx) = slot.0.checked_sub(self.first_seq) else {
            return false;
        };
        let Some(entry) = self.slots.get_mut(idx as usize) else {
            return false;
        };
        let nc = nc.unwrap_or(1);
        if nc == 0 || nc <= entry.1 {
            return false;
        }
        entry.1 = nc;
        true
    }

    /// Nonces currently tracked.
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }
}

/// A challenge header value: `Digest realm="..", nonce="..", algorithm=.., qop="auth"`.
pub fn challenge(realm: &str, nonce: &str, algorithm: Algorithm, stale: bool) -> String {
    let stale = if stale { ", stale=true" } else { "" };
    format!(
        "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
        algorithm.as_str()
    )
}

/// Client side: the Authorization value answering `challenge` (for test clients and tools).
pub fn authorization(
    challenge: &str,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> Result<String, String> {
    let p = DigestParams::parse(challenge)?;
    let realm = p.get("realm").ok_or("challenge lacks realm")?;
    let nonce = p.get("nonce").ok_or("challenge lacks nonce")?;
    let algorithm = Algorithm::parse(p.get("algorithm")).ok_or("unsupported algorithm")?;
    let qop = p
        .get("qop")
        .map(|q| q.split(',').any(|x| x.trim() == "auth"));
    let ha1 = ha1(algorithm, username, realm, password);
    let opaque = p
        .get("opaque")
        .map(|o| format!(", opaque=\"{o}\""))
        .unwrap_or_default();
    if qop == Some(true) {
        let resp = response(
            algorithm,
            &ha1,
            nonce,
            Some(nc),
            Some(cnonce),
            Some("auth"),
            method,
            uri,
        );
        Ok(format!(
            "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}, qop=auth, nc={nc:08x}, cnonce=\"{cnonce}\"{opaque}",
            algorithm.as_str()
        ))
    } else {
        let resp = response(algorithm, &ha1, nonce, None, None, None, method, uri);
        Ok(format!(
            "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}{opaque}",
            algorithm.as_str()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_md5_example() {
        // RFC 2617 §3.5 (HTTP, but the same computation).
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = response(
            Algorithm::Md5,
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(1),
            Some("0a4f113b"),
            Some("auth"),
            "GET",
            "/dir/index.html",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_sha256_example() {
        // RFC 7616 §3.9.1.
        let ha1 = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let r = response(
            Algorithm::Sha256,
            &ha1,
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            Some(1),
            Some("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"),
            Some("auth"),
            "GET",
            "/dir/index.html",
        );
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    fn flow(alg: Algorithm) -> (Nonces, Credentials, String) {
        let mut n = Nonces::new([7; 32], "example.com", 30_000, 100);
        let nonce = n.issue(1_000);
        let ch = challenge("example.com", &nonce, alg, false);
        let auth = authorization(
            &ch,
            "alice",
            "s3cret",
            "REGISTER",
            "sip:example.com",
            "abc",
            1,
        )
        .unwrap();
        let creds = Credentials::parse(&auth).unwrap();
        (n, creds, ha1(alg, "alice", "example.com", "s3cret"))
    }

    #[test]
    fn a_correct_answer_verifies_once_and_a_replay_does_not() {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let (mut n, creds, ha1) = flow(alg);
            assert!(creds.verify("REGISTER", &ha1));
            let NonceState::Fresh(slot) = n.check(&creds.nonce, 2_000) else {
                panic!("fresh")
            };
            assert!(n.consume(slot, creds.nc));
            let NonceState::Fresh(slot) = n.check(&creds.nonce, 2_000) else {
                panic!("fresh")
            };
            assert!(
                !n.consume(slot, creds.nc),
                "same nonce count twice is a replay"
            );
            assert!(n.consume(slot, Some(2)), "the next count is fine");
        }
    }

    #[test]
    fn wrong_password_or_method_fails() {
        let (_, creds, _) = flow(Algorithm::Sha256);
        assert!(!creds.verify(
            "REGISTER",
            &ha1(Algorithm::Sha256, "alice", "example.com", "wrong")
        ));
        let (_, creds, ha1) = flow(Algorithm::Sha256);
        assert!(!creds.verify("MESSAGE", &ha1));
    }

    #[test]
    fn nonces_expire_and_forgeries_are_invalid() {
        let (mut n, creds, _) = flow(Algorithm::Md5);
        assert_eq!(n.check(&creds.nonce, 31_000), NonceState::Stale);
        let mut other = Nonces::new([9; 32], "example.com", 30_000, 100);
        let foreign = other.issue(1_000);
        assert_eq!(n.check(&foreign, 1_500), NonceState::Invalid);
        assert_eq!(n.check("not base64 !", 1_500), NonceState::Invalid);
    }

    #[test]
    fn window_is_bounded_and_evicted_nonces_are_stale() {
        let mut n = Nonces::new([1; 32], "r", 1_000_000, 3);
        let first = n.issue(0);
        for t in 1..10 {
            n.issue(t);
        }
        assert_eq!(n.tracked(), 3);
        assert_eq!(n.check(&first, 20), NonceState::Stale);
    }

    #[test]
    fn malformed_credentials_are_errors() {
        assert!(Credentials::parse("Digest username=\"a\"").is_err());
        assert!(
            Credentials::parse(
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"zz\""
            )
            .is_err()
        );
        let base = "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"0123456789abcdef0123456789abcdef\"";
        assert!(Credentials::parse(base).is_ok());
        assert!(
            Credentials::parse(&format!("{base}, qop=auth")).is_err(),
            "qop needs nc and cnonce"
        );
        assert!(Credentials::parse(&format!("{base}, algorithm=SHA-512")).is_err());
    }
}
