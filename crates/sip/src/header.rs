//! Typed views of header values, parsed on demand. Every parser returns `Err(reason)` with a
//! short human reason that a 400 response can carry; none of them panics on any input.

use crate::message::Method;
use crate::uri::Uri;

/// Splits a header value on top-level commas (not inside quotes or angle brackets).
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut in_quotes = false;
    let mut in_angle = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                let item = value[start..i].trim();
                if !item.is_empty() {
                    out.push(item);
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start <= value.len() {
        let item = value[start..].trim();
        if !item.is_empty() {
            out.push(item);
        }
    }
    out
}

/// `;name=value` parameters, in order; names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// Parses `;a=b;c` (the leading `;` optional). Quoted values keep their quotes stripped.
    pub fn parse(text: &str) -> Result<Params, String> {
        let mut out = Vec::new();
        for (i, part) in split_semicolons(text).into_iter().enumerate() {
            let part = part.trim();
            if part.is_empty() {
                // Only the text before the leading `;` may be empty: `;;` and a trailing `;`
                // are extraneous separators (RFC 4475 §3.1.2.1).
                if i == 0 {
                    continue;
                }
                return Err(format!("empty parameter in '{}'", text.trim()));
            }
            match part.split_once('=') {
                Some((name, value)) => {
                    let name = name.trim();
                    if name.is_empty() || !name.bytes().all(is_token_byte) {
                        return Err(format!("bad parameter name in '{part}'"));
                    }
                    out.push((name.to_string(), Some(unquote(value.trim())?)));
                }
                None => {
                    if !part.bytes().all(is_token_byte) {
                        return Err(format!("bad parameter '{part}'"));
                    }
                    out.push((part.to_string(), None));
                }
            }
        }
        Ok(Params(out))
    }

    /// The value of a parameter; `Some("")` for a flag without value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// True when the parameter is present (with or without value).
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Sets (or adds) a parameter.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        if let Some(slot) = self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            slot.1 = value.map(str::to_string);
        } else {
            self.0.push((name.to_string(), value.map(str::to_string)));
        }
    }

    /// Serializes as `;a=b;c` (values that need it are quoted).
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        for (n, v) in &self.0 {
            out.push(';');
            out.push_str(n);
            if let Some(v) = v {
                out.push('=');
                if v.bytes().all(is_token_byte) || v.contains(':') && !v.contains('"') {
                    // host:port and IPv6 references are fine unquoted in Via params.
                    if v.bytes()
                        .all(|b| is_token_byte(b) || b == b':' || b == b'[' || b == b']')
                    {
                        out.push_str(v);
                        continue;
                    }
                }
                out.push('"');
                out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\""));
                out.push('"');
            }
        }
        out
    }
}

fn split_semicolons(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b';' if !in_quotes => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start <= text.len() {
        out.push(&text[start.min(text.len())..]);
    }
    out
}

/// Removes surrounding quotes and backslash escapes; unquoted text is returned as is.
pub fn unquote(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(format!("unterminated quoted string {t}"));
        };
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(e) => out.push(e),
                    None => return Err("dangling escape in quoted string".into()),
                }
            } else {
                out.push(c);
            }
        }
        Ok(out)
    } else {
        Ok(t.to_string())
    }
}

/// RFC 3261 `token` characters.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// One Via header value: `SIP/2.0/UDP host:port;branch=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport, upper-case (`UDP`, `TCP`, `TLS`, ...).
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// Parses one Via value (not a list).
    pub fn parse(value: &str) -> Result<Via, String> {
        let value = value.trim();
        let (proto, rest) =
            split_ws(value).ok_or_else(|| format!("Via '{value}' lacks sent-by"))?;
        let mut parts = proto.split('/').map(str::trim);
        let name = parts.next().unwrap_or("");
        let version = parts.next().unwrap_or("");
        let transport = parts.next().unwrap_or("");
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
            return Err(format!("Via protocol '{proto}' is not SIP/2.0/<transport>"));
        }
        if parts.next().is_some() || !transport.bytes().all(is_token_byte) {
            return Err(format!("Via protocol '{proto}' is malformed"));
        }
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = parse_host_port(sent_by.trim())?;
        let params = Params::parse(params)?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").filter(|b| !b.is_empty())
    }

    /// Serializes the value.
    pub fn to_wire(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => format!(
                "SIP/2.0/{} {}:{}{}",
                self.transport,
                host,
                p,
                self.params.to_wire()
            ),
            None => format!(
                "SIP/2.0/{} {}{}",
                self.transport,
                host,
                self.params.to_wire()
            ),
        }
    }
}

fn split_ws(value: &str) -> Option<(&str, &str)> {
    // The protocol part may contain spaces around '/' (RFC 4475 "lots of whitespace");
    // the sent-by starts after the transport token.
    let bytes = value.as_bytes();
    let mut slashes = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' {
            slashes += 1;
        }
        if slashes == 2 {
            // Skip whitespace, then the transport token.
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            while i < bytes.len() && is_token_byte(bytes[i]) {
                i += 1;
            }
            let proto = &value[..i];
            let rest = value[i..].trim_start();
            if rest.is_empty() {
                return None;
            }
            return Some((proto, rest));
        }
        i += 1;
    }
    None
}

/// Parses `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn parse_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty host".into());
    }
    if let Some(rest) = text.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err(format!("unterminated IPv6 reference '{text}'"));
        };
        let host = &rest[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("bad IPv6 address '{host}'"));
        }
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => return Err(format!("junk after IPv6 reference '{text}'")),
        };
        return Ok((host.to_string(), port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (text, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(format!("bad host '{host}'"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port '{text}'"));
    }
    text.parse::<u16>()
        .map_err(|_| format!("port '{text}' out of range"))
}

/// A `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    /// Header parameters (after the URI; e.g. `tag`, `expires`, `q`).
    pub params: Params,
}

impl NameAddr {
    /// Parses one value.
    pub fn parse(value: &str) -> Result<NameAddr, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty address".into());
        }
        let (display, uri_text, rest) = if let Some(lt) = find_unquoted(value, b'<') {
            let display = value[..lt].trim();
            let display = if display.is_empty() {
                None
            } else if display.starts_with('"') {
                Some(unquote(display)?)
            } else if display
                .bytes()
                .all(|b| is_token_byte(b) || b == b' ' || b == b'\t')
            {
                // An unquoted display name is `token *(LWS token)`.
                Some(display.to_string())
            } else {
                return Err(format!("display name '{display}' is not quoted"));
            };
            let after = &value[lt + 1..];
            let Some(gt) = after.find('>') else {
                return Err(format!("missing '>' in '{value}'"));
            };
            let uri_text = &after[..gt];
            if uri_text.trim() != uri_text {
                return Err(format!("whitespace inside '<{uri_text}>'"));
            }
            (display, uri_text, &after[gt + 1..])
        } else {
            // addr-spec: parameters after ';' belong to the header, not the URI; a URI with a
            // comma or headers must be enclosed in '<>' (RFC 3261 §20.10).
            let (uri_text, rest) = match value.find(';') {
                Some(i) => (&value[..i], &value[i..]),
                None => (value, ""),
            };
            if uri_text.contains(['?', ',']) {
                return Err(format!("'{uri_text}' must be enclosed in '<>'"));
            }
            (None, uri_text, rest)
        };
        let uri = Uri::parse(uri_text.trim())?;
        let rest = rest.trim();
        if !rest.is_empty() && !rest.starts_with(';') {
            return Err(format!("junk after address '{rest}'"));
        }
        Ok(NameAddr {
            display,
            uri,
            params: Params::parse(rest)?,
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").filter(|t| !t.is_empty())
    }

    /// Serializes with angle brackets.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        if let Some(d) = &self.display {
            out.push('"');
            out.push_str(&d.replace('\\', "\\\\").replace('"', "\\\""));
            out.push_str("\" ");
        }
        out.push('<');
        out.push_str(&self.uri.to_string());
        out.push('>');
        out.push_str(&self.params.to_wire());
        out
    }
}

fn find_unquoted(value: &str, needle: u8) -> Option<usize> {
    let bytes = value.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b if b == needle && !in_quotes => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A Contact header item: either `*` or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    Star,
    Addr(Box<NameAddr>),
}

/// Parses every Contact value of a message.
pub fn parse_contacts<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Contact>, String> {
    let mut out = Vec::new();
    for v in values {
        if v.trim() == "*" {
            out.push(Contact::Star);
        } else {
            out.push(Contact::Addr(Box::new(NameAddr::parse(v)?)));
        }
    }
    Ok(out)
}

/// The CSeq header: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    /// Parses `123 REGISTER`; the number must be below 2^31 (RFC 3261 §8.1.1.5).
    pub fn parse(value: &str) -> Result<CSeq, String> {
        let mut parts = value.split_whitespace();
        let (Some(num), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("CSeq '{value}' is not '<number> <method>'"));
        };
        if !num.bytes().all(|b| b.is_ascii_digit()) || num.len() > 10 {
            return Err(format!("CSeq number '{num}' is not a number"));
        }
        let seq: u64 = num
            .parse()
            .map_err(|_| format!("CSeq number '{num}' is not a number"))?;
        if seq >= 1 << 31 {
            return Err(format!("CSeq number {seq} is not below 2**31"));
        }
        if !method.bytes().all(is_token_byte) {
            return Err(format!("CSeq method '{method}' is not a token"));
        }
        Ok(CSeq {
            seq: seq as u32,
            method: Method::from_token(method),
        })
    }
}

/// Parses a delta-seconds value (Expires, Min-Expires, the `expires` param). Values too large
/// for 32 bits are clamped, as RFC 3261 §25.1 asks.
pub fn parse_delta_seconds(value: &str) -> Result<u32, String> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{v}' is not a number of seconds"));
    }
    Ok(v.parse::<u64>()
        .map(|n| n.min(u32::MAX as u64) as u32)
        .unwrap_or(u32::MAX))
}

/// The Event header: `presence;id=x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub package: String,
    pub params: Params,
}

impl Event {
    /// Parses one Event value.
    pub fn parse(value: &str) -> Result<Event, String> {
        let (pkg, params) = match value.find(';') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        };
        let pkg = pkg.trim();
        if pkg.is_empty() || !pkg.bytes().all(is_token_byte) {
            return Err(format!("Event '{value}' is not a token"));
        }
        Ok(Event {
            package: pkg.to_ascii_lowercase(),
            params: Params::parse(params)?,
        })
    }
}

/// Parameters of a `Digest` Authorization / WWW-Authenticate value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestParams(pub Vec<(String, String)>);

impl DigestParams {
    /// Parses `Digest a="b", c=d`. Returns an error for another scheme.
    pub fn parse(value: &str) -> Result<DigestParams, String> {
        let value = value.trim();
        let (scheme, rest) = value.split_at(value.find(char::is_whitespace).unwrap_or(value.len()));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(format!("authentication scheme '{scheme}' is not Digest"));
        }
        let mut out = Vec::new();
        for item in split_list(rest) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(format!("digest parameter '{item}' has no value"));
            };
            let k = k.trim();
            if k.is_empty() || !k.bytes().all(is_token_byte) {
                return Err(format!("bad digest parameter name '{k}'"));
            }
            out.push((k.to_ascii_lowercase(), unquote(v)?));
        }
        Ok(DigestParams(out))
    }

    /// A parameter's value (names are lower-cased).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `Subscription-State: active;expires=60` / `terminated;reason=timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub state: String,
    pub params: Params,
}

impl SubscriptionState {
    /// Parses the value.
    pub fn parse(value: &str) -> Result<SubscriptionState, String> {
        let (s, params) = match value.find(';') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        };
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(is_token_byte) {
            return Err(format!("Subscription-State '{value}' is malformed"));
        }
        Ok(SubscriptionState {
            state: s.to_ascii_lowercase(),
            params: Params::parse(params)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_outside_quotes_and_brackets() {
        let items = split_list(r#""Smith, J" <sip:a@b;x=1,2>;q=0.5, <sip:c@d>"#);
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[1], "<sip:c@d>");
    }

    #[test]
    fn via_with_rport_and_ipv6() {
        let v = Via::parse("SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKabc;rport").unwrap();
        assert_eq!(v.host, "2001:db8::9:1");
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.branch(), Some("z9hG4bKabc"));
        assert!(v.params.has("rport"));
        let back = Via::parse(&v.to_wire()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn via_with_spaces_around_slashes() {
        let v = Via::parse("SIP / 2.0 / UDP  host.example.com ; branch = z9hG4bK1").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "host.example.com");
        assert_eq!(v.branch(), Some("z9hG4bK1"));
    }

    #[test]
    fn bad_via_is_an_error() {
        assert!(Via::parse("SIP/3.0/UDP a").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP a:99999").is_err());
        assert!(Via::parse("SIP/2.0/UDP a b").is_err());
    }

    #[test]
    fn addr_spec_params_belong_to_the_header() {
        let na = NameAddr::parse("sip:alice@example.com;tag=88").unwrap();
        assert_eq!(na.tag(), Some("88"));
        assert!(na.uri.params.0.is_empty());
        let na = NameAddr::parse("\"Alice \\\"A\\\"\" <sip:alice@example.com;transport=tcp>;tag=9")
            .unwrap();
        assert_eq!(na.display.as_deref(), Some("Alice \"A\""));
        assert_eq!(na.uri.params.get("transport"), Some("tcp"));
        assert_eq!(na.tag(), Some("9"));
    }

    #[test]
    fn cseq_limits() {
        assert_eq!(CSeq::parse("2147483647 REGISTER").unwrap().seq, 2147483647);
        assert!(CSeq::parse("2147483648 REGISTER").is_err());
        assert!(CSeq::parse("-1 REGISTER").is_err());
        assert!(CSeq::parse("1").is_err());
        assert!(CSeq::parse("1 REGISTER extra").is_err());
    }

    #[test]
    fn expires_clamps_huge_values() {
        assert_eq!(parse_delta_seconds("3600").unwrap(), 3600);
        assert_eq!(
            parse_delta_seconds("99999999999999999999").unwrap(),
            u32::MAX
        );
        assert!(parse_delta_seconds("-1").is_err());
        assert!(parse_delta_seconds("").is_err());
    }

    #[test]
    fn digest_params() {
        let d = DigestParams::parse(
            r#"Digest username="bob", realm="example.com", nonce="n,1", uri="sip:example.com", response="ab", qop=auth, nc=00000001"#,
        )
        .unwrap();
        assert_eq!(d.get("username"), Some("bob"));
        assert_eq!(d.get("nonce"), Some("n,1"));
        assert_eq!(d.get("qop"), Some("auth"));
        assert!(DigestParams::parse("Basic abc").is_err());
    }

    #[test]
    fn empty_parameters_are_errors() {
        // RFC 4475 §3.1.2.1: "SIP/2.0/UDP 192.0.2.15;;,;,," and "<sip:joe@example.org>;;;;".
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(NameAddr::parse("\"Joe\" <sip:joe@example.org>;;;;").is_err());
        assert!(NameAddr::parse("<sip:joe@example.org>;tag=1;").is_err());
        assert!(Uri::parse("sip:joe@example.org;;lr").is_err());
        // The separator before the first parameter is not an empty parameter.
        assert_eq!(Params::parse(" ; tag = 1").unwrap().get("tag"), Some("1"));
        assert!(Params::parse("").unwrap().0.is_empty());
    }

    #[test]
    fn unquoted_display_names_are_tokens() {
        // RFC 4475 §3.1.2.15.
        assert!(NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(NameAddr::parse("Mr. J. (User) <sip:j@example.com>").is_err());
        let na = NameAddr::parse("token1~` token2'+_ <sip:a@example.com>").unwrap();
        assert_eq!(na.display.as_deref(), Some("token1~` token2'+_"));
    }

    #[test]
    fn whitespace_inside_angle_brackets_is_an_error() {
        // RFC 4475 §3.1.2.14.
        assert!(NameAddr::parse("\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(NameAddr::parse("\"Watson, Thomas\" <sip:t.watson@example.org>").is_ok());
    }

    #[test]
    fn addr_spec_with_headers_or_a_comma_needs_angle_brackets() {
        // RFC 4475 §3.1.2.13 / §3.3.14.
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(NameAddr::parse("sip:a,b@example.com").is_err());
        let na = NameAddr::parse("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>").unwrap();
        assert_eq!(
            na.uri.headers.as_deref(),
            Some("Route=%3Csip:sip.example.com%3E")
        );
    }
}
