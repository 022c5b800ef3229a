//! PIDF (RFC 3863) documents: checking what clients publish, and composing what watchers get.
//!
//! A presentity with one publication is shown as published. With several (one per device),
//! their root children are merged under one `<presence>` when their namespace prefixes agree,
//! else the newest wins. Without publications, registration decides: `open` while a contact is
//! registered, `closed` otherwise.

use quick_xml::Reader;
use quick_xml::events::Event;
use std::ops::Range;
use store::Presence;

/// The PIDF namespace.
pub const PIDF_NS: &str = "urn:ietf:params:xml:ns:pidf";
/// The PIDF media type.
pub const PIDF_TYPE: &str = "application/pidf+xml";

/// The parts of a PIDF document that composition needs.
struct Parsed {
    /// `xmlns` and `xmlns:p` attributes of the root, as (attribute name, value).
    namespaces: Vec<(String, String)>,
    /// Byte range of the root element's content.
    inner: Range<usize>,
}

fn parse(body: &[u8]) -> Result<Parsed, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut depth = 0usize;
    let mut root: Option<(Vec<(String, String)>, usize)> = None;
    let mut inner_end = None;
    let mut seen_root = false;
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if depth == 0 {
                    if seen_root {
                        return Err("more than one root element".into());
                    }
                    seen_root = true;
                    let after = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
                    root = Some((check_root(&e)?, after));
                }
                depth += 1;
            }
            Ok(Event::End(_)) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    inner_end = Some(before);
                }
            }
            Ok(Event::Empty(e)) => {
                if depth == 0 {
                    if seen_root {
                        return Err("more than one root element".into());
                    }
                    seen_root = true;
                    root = Some((check_root(&e)?, 0));
                    inner_end = Some(0);
                }
            }
            Ok(Event::Text(t)) if depth == 0 => {
                if !t.chars().all(|c| c.is_ascii_whitespace()) {
                    return Err("text outside the root element".into());
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("not well-formed XML: {e}")),
        }
    }
    if depth != 0 {
        return Err("unclosed element at end of document".into());
    }
    match (root, inner_end) {
        (Some((namespaces, start)), Some(end)) if start <= end => Ok(Parsed {
            namespaces,
            inner: start..end,
        }),
        _ => Err("no root element".into()),
    }
}

fn check_root(e: &quick_xml::events::BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    let name: String = AsRef::<str>::as_ref(&e.name()).to_string();
    let (prefix, local) = match name.split_once(':') {
        Some((p, l)) => (Some(p.to_string()), l.to_string()),
        None => (None, name.clone()),
    };
    if local != "presence" {
        return Err(format!("root element is <{name}>, not <presence>"));
    }
    let mut namespaces = Vec::new();
    let mut entity = false;
    for attr in e.attributes() {
        let attr = attr.map_err(|e| format!("bad attribute: {e}"))?;
        let key: String = AsRef::<str>::as_ref(&attr.key).to_string();
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| format!("bad attribute value: {e}"))?
            .into_owned();
        if key == "xmlns" || key.starts_with("xmlns:") {
            namespaces.push((key, value));
        } else if key == "entity" {
            entity = true;
        }
    }
    let wanted = match &prefix {
        Some(p) => format!("xmlns:{p}"),
        None => "xmlns".to_string(),
    };
    match namespaces.iter().find(|(k, _)| *k == wanted) {
        Some((_, ns)) if ns == PIDF_NS => {}
        Some((_, ns)) => return Err(format!("<presence> is in namespace {ns}, not {PIDF_NS}")),
        None => return Err(format!("<presence> is not in the PIDF namespace {PIDF_NS}")),
    }
    if !entity {
        return Err("<presence> has no entity attribute".into());
    }
    Ok(namespaces)
}

/// Checks a published document: well-formed XML whose root is a PIDF `<presence>` with an
/// `entity`. The error says what is wrong.
pub fn validate(body: &[u8]) -> Result<(), String> {
    parse(body).map(|_| ())
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

fn basic(aor: &str, open: bool) -> String {
    let status = if open { "open" } else { "closed" };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"{PIDF_NS}\" entity=\"{}\">\n  <tuple id=\"tandem-registration\">\n    <status><basic>{status}</basic></status>\n  </tuple>\n</presence>\n",
        escape_attr(aor)
    )
}

/// The document a watcher is sent for a presentity's state.
pub fn compose(presence: &Presence) -> Vec<u8> {
    let pubs: Vec<&store::Publication> = presence
        .publications
        .iter()
        .filter(|p| p.content_type == PIDF_TYPE)
        .collect();
    match pubs.as_slice() {
        [] => basic(&presence.aor, presence.registered_contacts > 0).into_bytes(),
        [one] => one.body.clone(),
        many => merge(&presence.aor, many)
            .unwrap_or_else(|| many.last().map(|p| p.body.clone()).unwrap_or_default()),
    }
}

fn merge(aor: &str, pubs: &[&store::Publication]) -> Option<Vec<u8>> {
    let mut namespaces: Vec<(String, String)> = Vec::new();
    let mut parts = Vec::new();
    for p in pubs {
        let parsed = parse(&p.body).ok()?;
        for (k, v) in parsed.namespaces {
            match namespaces.iter().find(|(k2, _)| *k2 == k) {
                Some((_, v2)) if *v2 != v => return None,
                Some(_) => {}
                None => namespaces.push((k, v)),
            }
        }
        parts.push(p.body.get(parsed.inner)?.to_vec());
    }
    // The merged root uses the default namespace, so a prefixed PIDF root can't merge.
    if !namespaces.iter().any(|(k, v)| k == "xmlns" && v == PIDF_NS) {
        return None;
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence");
    for (k, v) in &namespaces {
        out.push_str(&format!(" {k}=\"{}\"", escape_attr(v)));
    }
    out.push_str(&format!(" entity=\"{}\">", escape_attr(aor)));
    let mut bytes = out.into_bytes();
    for part in parts {
        bytes.extend_from_slice(&part);
    }
    bytes.extend_from_slice(b"</presence>\n");
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com">
  <tuple id="a1"><status><basic>open</basic></status><note>at desk</note></tuple>
</presence>"#;

    fn publication(body: &str, t: u64) -> store::Publication {
        store::Publication {
            etag: format!("e{t}"),
            body: body.as_bytes().to_vec(),
            content_type: PIDF_TYPE.into(),
            expires_ms: 1_000_000,
            updated_ms: t,
        }
    }

    #[test]
    fn accepts_pidf_and_rejects_everything_else() {
        assert_eq!(validate(DOC.as_bytes()), Ok(()));
        let prefixed =
            r#"<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" entity="pres:bob@example.com"/>"#;
        assert_eq!(validate(prefixed.as_bytes()), Ok(()));
        for (bad, why) in [
            (
                "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"x\"><tuple></presence>",
                "well-formed",
            ),
            ("<presence xmlns=\"urn:other\" entity=\"x\"/>", "namespace"),
            (
                "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"/>",
                "entity",
            ),
            (
                "<status xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"x\"/>",
                "not <presence>",
            ),
            ("", "no root"),
            ("hello", "text outside"),
            (
                "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"x\"></presence><x/>",
                "more than one root",
            ),
        ] {
            let err = validate(bad.as_bytes()).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn without_publications_registration_decides() {
        let mut p = Presence {
            aor: "sip:bob@example.com".into(),
            publications: vec![],
            registered_contacts: 0,
        };
        let closed = String::from_utf8(compose(&p)).unwrap_or_default();
        assert!(closed.contains("<basic>closed</basic>"));
        assert_eq!(validate(closed.as_bytes()), Ok(()));
        p.registered_contacts = 2;
        assert!(
            String::from_utf8(compose(&p))
                .unwrap_or_default()
                .contains("<basic>open</basic>")
        );
    }

    #[test]
    fn several_publications_merge_their_tuples() {
        let other = DOC.replace("a1", "b2").replace("at desk", "on phone");
        let p = Presence {
            aor: "sip:bob@example.com".into(),
            publications: vec![publication(DOC, 1), publication(&other, 2)],
            registered_contacts: 1,
        };
        let merged = String::from_utf8(compose(&p)).unwrap_or_default();
        assert!(
            merged.contains("id=\"a1\"") && merged.contains("id=\"b2\""),
            "{merged}"
        );
        assert_eq!(validate(merged.as_bytes()), Ok(()));
    }

    #[test]
    fn conflicting_prefixes_fall_back_to_the_newest() {
        let a = DOC.replace("<presence xmlns=", "<presence xmlns:r=\"urn:a\" xmlns=");
        let b = DOC
            .replace("<presence xmlns=", "<presence xmlns:r=\"urn:b\" xmlns=")
            .replace("a1", "newest");
        let p = Presence {
            aor: "sip:bob@example.com".into(),
            publications: vec![publication(&a, 1), publication(&b, 2)],
            registered_contacts: 0,
        };
        assert_eq!(compose(&p), b.as_bytes());
    }
}
