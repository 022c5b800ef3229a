//! SIP URIs (RFC 3261 §19.1): `sip:user@host:port;params?headers`.

use crate::header::{Params, parse_host_port};
use std::fmt;

/// A parsed URI. Schemes other than `sip`/`sips` are kept opaque (`host` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Lower-case scheme (`sip`, `sips`, `tel`, ...).
    pub scheme: String,
    /// The user part, with %-escapes decoded.
    pub user: Option<String>,
    /// The password part (deprecated, kept for round trips).
    pub password: Option<String>,
    /// Lower-case host (IPv6 without brackets).
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
    /// The `?headers` part, as on the wire, without the `?`.
    pub headers: Option<String>,
    /// For non-SIP schemes: everything after `scheme:`.
    pub opaque: Option<String>,
}

impl Uri {
    /// Parses a URI.
    pub fn parse(text: &str) -> Result<Uri, String> {
        let text = text.trim();
        let Some(colon) = text.find(':') else {
            return Err(format!("URI '{text}' has no scheme"));
        };
        let scheme = &text[..colon];
        if scheme.is_empty()
            || !scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic())
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(format!("URI '{text}' has a bad scheme"));
        }
        let scheme = scheme.to_ascii_lowercase();
        let rest = &text[colon + 1..];
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "URI '{text}' contains whitespace or control characters"
            ));
        }
        if scheme != "sip" && scheme != "sips" {
            if rest.is_empty() {
                return Err(format!("URI '{text}' is empty after the scheme"));
            }
            return Ok(Uri {
                scheme,
                user: None,
                password: None,
                host: String::new(),
                port: None,
                params: Params::default(),
                headers: None,
                opaque: Some(rest.to_string()),
            });
        }
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            Some(ui) => {
                let (u, p) = match ui.find(':') {
                    Some(i) => (&ui[..i], Some(&ui[i + 1..])),
                    None => (ui, None),
                };
                if u.is_empty() {
                    return Err(format!("URI '{text}' has an empty user part"));
                }
                (Some(unescape(u)?), p.map(unescape).transpose()?)
            }
            None => (None, None),
        };
        let (hostport, headers) = match hostpart.find('?') {
            Some(i) => (&hostpart[..i], Some(hostpart[i + 1..].to_string())),
            None => (hostpart, None),
        };
        let (hostport, params) = match hostport.find(';') {
            Some(i) => (&hostport[..i], &hostport[i..]),
            None => (hostport, ""),
        };
        let (host, port) = parse_host_port(hostport).map_err(|e| format!("URI '{text}': {e}"))?;
        let params = Params::parse(params).map_err(|e| format!("URI '{text}': {e}"))?;
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
            opaque: None,
        })
    }

    /// The address-of-record form `sip:user@host` (no port, params or headers), used as the key
    /// of a user's state.
    pub fn aor(&self) -> String {
        match &self.user {
            Some(u) => format!("{}:{}@{}", self.scheme_for_aor(), escape_user(u), self.host),
            None => format!("{}:{}", self.scheme_for_aor(), self.host),
        }
    }

    fn scheme_for_aor(&self) -> &str {
        // sips and sip name the same resource for registration purposes.
        if self.scheme == "sips" {
            "sip"
        } else {
            &self.scheme
        }
    }

    /// True for `sip:` and `sips:`.
    pub fn is_sip(&self) -> bool {
        self.opaque.is_none()
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(op) = &self.opaque {
            return write!(f, "{}:{}", self.scheme, op);
        }
        write!(f, "{}:", self.scheme)?;
        if let Some(u) = &self.user {
            f.write_str(&escape_user(u))?;
            if let Some(p) = &self.password {
                write!(f, ":{}", escape_user(p))?;
            }
            f.write_str("@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.params.to_wire())?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

fn unescape(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits (from_str_radix alone would also take "+1").
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("bad escape in '{text}'"))?;
            let (Some(hi), Some(lo)) = (hex_value(hex[0]), hex_value(hex[1])) else {
                return Err(format!("bad escape in '{text}'"));
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("user part of '{text}' is not UTF-8"))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn escape_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_'
                    | b'.'
                    | b'!'
                    | b'~'
                    | b'*'
                    | b'\''
                    | b'('
                    | b')'
                    | b'&'
                    | b'='
                    | b'+'
                    | b'$'
                    | b','
                    | b';'
                    | b'?'
                    | b'/'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sip_uri() {
        let u =
            Uri::parse("sips:alice:secret@Atlanta.COM:5061;transport=tcp;lr?subject=hi").unwrap();
        assert_eq!(u.scheme, "sips");
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.host, "atlanta.com");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.params.get("transport"), Some("tcp"));
        assert!(u.params.has("lr"));
        assert_eq!(u.headers.as_deref(), Some("subject=hi"));
        assert_eq!(u.aor(), "sip:alice@atlanta.com");
    }

    #[test]
    fn escaped_user_compares_equal() {
        let a = Uri::parse("sip:%61lice@atlanta.com").unwrap();
        let b = Uri::parse("sip:alice@ATLANTA.com").unwrap();
        assert_eq!(a.aor(), b.aor());
    }

    #[test]
    fn malformed_uris_are_errors() {
        for bad in [
            "alice@example.com",
            "sip:",
            "sip:@host",
            "sip:a@ho st",
            "sip:a@host:70000",
            "sip:a@[::1",
            "sip:a@host%",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn other_schemes_are_opaque() {
        let u = Uri::parse("tel:+1-201-555-0123").unwrap();
        assert!(!u.is_sip());
        assert_eq!(u.to_string(), "tel:+1-201-555-0123");
    }

    #[test]
    fn ipv6_round_trip() {
        let u = Uri::parse("sip:[2001:db8::10]:5070").unwrap();
        assert_eq!(u.host, "2001:db8::10");
        assert_eq!(u.to_string(), "sip:[2001:db8::10]:5070");
    }

    #[test]
    fn escapes_need_two_hex_digits() {
        // u8::from_str_radix would take "+1" as 1.
        for bad in [
            "sip:%+1@host",
            "sip:%-1@host",
            "sip:%4@host",
            "sip:%4g@host",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad} should not parse");
        }
        assert_eq!(
            Uri::parse("sip:%4a%4B@host").unwrap().user.as_deref(),
            Some("JK")
        );
    }
}
