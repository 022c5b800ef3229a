//! RFC 4475, "Session Initiation Protocol (SIP) Torture Test Messages", as byte-exact fixtures.
//!
//! Every message of RFC 4475 §3 is here, with its section and title. The bytes are those of the
//! RFC's bit-exact archive (its `<allOneLine>` and `<hex>` markup already resolved): CRLF line
//! ends, the long lines of §3.1.1.7 joined, the control characters of §3.1.1.2 and the binary
//! body of §3.1.1.11 as escapes. Each test asserts the class of answer a registrar / presence
//! server must give, following the discussion in the RFC:
//!
//! * §3.1.1 (valid): `parse_message` succeeds and, for requests, `validate_request` accepts it
//!   and the serialization parses back to the same request.
//! * §3.1.2 (invalid): `parse_message` fails (`partial: None` means drop the datagram; a status
//!   with a partial request means answer it), or `validate_request` answers 400/416/505. Where
//!   the RFC lets an element be liberal and that is the better choice here, the test says so.
//! * §3.2–§3.4 (transaction and application semantics): the message parses; what the
//!   application must do is asserted through the typed views it will use.
//!
//! The last tests feed every fixture through the stream decoder split at every offset, so that
//! no input panics and framing does not depend on how the bytes arrive.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use sip::header::{self, CSeq, Contact, DigestParams, NameAddr, Via};
use sip::transaction::TxKey;
use sip::{
    Limits, Message, Method, ParseError, Request, Response, StreamDecoder, StreamItem, Uri,
    parse_message, validate_request,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    parse_message(bytes, &Limits::default())
}

/// Headers other than Content-Length (which serialization rewrites from the body).
fn headers_without_length(req: &Request) -> Vec<(String, String)> {
    req.headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("Content-Length"))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The serialization of `req` parses back to the same request.
fn assert_round_trips(req: &Request) {
    let wire = req.to_bytes();
    let again = match parse(&wire) {
        Ok(Message::Request(r)) => r,
        other => panic!(
            "serialization of {} did not parse back: {other:?}",
            req.method
        ),
    };
    assert_eq!(again.method, req.method);
    assert_eq!(again.uri, req.uri);
    assert_eq!(headers_without_length(&again), headers_without_length(req));
    assert_eq!(again.body, req.body);
    assert_eq!(validate_request(&again), Ok(()));
}

/// A request that must be accepted: it parses, validates and round-trips.
fn valid_request(bytes: &[u8]) -> Request {
    let req = match parse(bytes) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    };
    assert_eq!(validate_request(&req), Ok(()), "{} {}", req.method, req.uri);
    assert_round_trips(&req);
    req
}

/// A response that must parse, and whose serialization parses back to it.
fn valid_response(bytes: &[u8]) -> Response {
    let resp = match parse(bytes) {
        Ok(Message::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    };
    match parse(&resp.to_bytes()) {
        Ok(Message::Response(again)) => {
            assert_eq!(again.status, resp.status);
            assert_eq!(again.reason, resp.reason);
            assert_eq!(again.body, resp.body);
        }
        other => panic!("serialization did not parse back: {other:?}"),
    }
    resp
}

/// A request the parser refuses but that can still be answered with `status`: the partial
/// request keeps the headers a response copies.
fn answered_by_parser(bytes: &[u8], status: u16, reason: &str) -> Request {
    let err = match parse(bytes) {
        Err(e) => e,
        Ok(m) => panic!("expected a parse error, got {m:?}"),
    };
    assert_eq!(err.status, status, "{}", err.reason);
    assert!(
        err.reason.contains(reason),
        "reason '{}' lacks '{reason}'",
        err.reason
    );
    let partial = err
        .partial
        .unwrap_or_else(|| panic!("no partial request for {}", err.reason));
    let resp = partial.response(status, Some("t1"));
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        assert!(
            resp.headers.get(name).is_some(),
            "the {status} cannot copy {name}"
        );
    }
    *partial
}

/// Bytes the parser cannot even read as a request: drop them silently.
fn dropped_by_parser(bytes: &[u8]) {
    match parse(bytes) {
        Err(e) => assert!(e.partial.is_none(), "{e}: should be dropped, not answered"),
        Ok(m) => panic!("expected the message to be dropped, got {m:?}"),
    }
}

/// A request that parses but fails validation with `status`.
fn rejected_by_validation(bytes: &[u8], status: u16, reason: &str) -> Request {
    let req = match parse(bytes) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    };
    let rej = match validate_request(&req) {
        Err(rej) => rej,
        Ok(()) => panic!("{} {} should be rejected", req.method, req.uri),
    };
    assert_eq!(rej.status, status, "{}", rej.reason);
    assert!(
        rej.reason.contains(reason),
        "reason '{}' lacks '{reason}'",
        rej.reason
    );
    req
}

fn name_addr(req: &Request, name: &str) -> NameAddr {
    let value = req.headers.get(name).unwrap_or_else(|| panic!("no {name}"));
    NameAddr::parse(value).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn vias(headers: &sip::Headers) -> Vec<Via> {
    headers
        .get_all("Via")
        .into_iter()
        .map(|v| Via::parse(v).unwrap_or_else(|e| panic!("Via '{v}': {e}")))
        .collect()
}

fn contacts(req: &Request) -> Vec<NameAddr> {
    header::parse_contacts(req.headers.get_all("Contact"))
        .unwrap_or_else(|e| panic!("Contact: {e}"))
        .into_iter()
        .map(|c| match c {
            Contact::Addr(a) => *a,
            Contact::Star => panic!("unexpected Contact: *"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures, in the order of RFC 4475 §3
// ---------------------------------------------------------------------------------------------

/// RFC 4475 §3.1.1.1, "A Short Tortuous INVITE" (`wsinv.dat`).
const WSINV: &[u8] = concat!(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n",
    "TO :\r\n",
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n",
    "from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n",
    "  ;\r\n",
    "  tag = 98asjd8\r\n",
    "MaX-fOrWaRdS: 0068\r\n",
    "Call-ID: wsinv.ndaksdj@192.0.2.1\r\n",
    "Content-Length   : 150\r\n",
    "cseq: 0009\r\n",
    "  INVITE\r\n",
    "Via  : SIP  /   2.0\r\n",
    " /UDP\r\n",
    "    192.0.2.2;branch=390skdjuw\r\n",
    "s :\r\n",
    "NewFangledHeader:   newfangled value\r\n",
    " continued newfangled value\r\n",
    "UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n",
    "Content-Type: application/sdp\r\n",
    "Route:\r\n",
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n",
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n",
    "  branch  =   z9hG4bK9ikj8  ,\r\n",
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n",
    " z9hG4bK30239\r\n",
    "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n",
    "      newvalue ;\r\n",
    "  secondparam ; q = 0.33\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.3\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.4\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.2, "Wide Range of Valid Characters" (`intmeth.dat`).
///
/// The RFC's `<hex>` markup resolved: quoted-pairs of BEL (07), NUL (00) and DEL (7F) in the To
/// display name, and a UTF-8 extension header value that starts with a byte-order mark.
const INTMETH: &[u8] = concat!(
    "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n",
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n",
    "To: \"BEL:\\\x07 NUL:\\\0 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\r\n",
    "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"работающий\";tag=_token~1'+`*%!-.\r\n",
    "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\n",
    "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n",
    "Max-Forwards: 255\r\n",
    "extensionHeader-!.%*+_`'~:\u{feff}大停電\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.3, "Valid Use of the % Escaping Mechanism" (`esc01.dat`).
const ESC01: &[u8] = concat!(
    "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\r\n",
    "To: sip:%75se%72@example.com\r\n",
    "From: <sip:I%20have%20spaces@example.net>;tag=938\r\n",
    "Max-Forwards: 87\r\n",
    "i: esc01.239409asdfakjkn23onasd0-3234\r\n",
    "CSeq: 234234 INVITE\r\n",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\r\n",
    "C: application/sdp\r\n",
    "Contact:\r\n",
    "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\r\n",
    "Content-Length: 150\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.1\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.4, "Escaped Nulls in URIs" (`escnull.dat`).
const ESCNULL: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "To: sip:null-%00-null@example.com\r\n",
    "From: sip:null-%00-null@example.com;tag=839923423\r\n",
    "Max-Forwards: 70\r\n",
    "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\r\n",
    "CSeq: 14398234 REGISTER\r\n",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\n",
    "Contact: <sip:%00@host5.example.com>\r\n",
    "Contact: <sip:%00%00@host5.example.com>\r\n",
    "L:0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.5, "Use of % When It Is Not an Escape" (`esc02.dat`).
const ESC02: &[u8] = concat!(
    "RE%47IST%45R sip:registrar.example.com SIP/2.0\r\n",
    "To: \"%Z%45\" <sip:resource@example.com>\r\n",
    "From: \"%Z%45\" <sip:resource@example.com>;tag=f232jadfj23\r\n",
    "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\r\n",
    "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\r\n",
    "CSeq: 29344 RE%47IST%45R\r\n",
    "Max-Forwards: 70\r\n",
    "Contact: <sip:alias1@host1.example.com>\r\n",
    "C%6Fntact: <sip:alias2@host2.example.com>\r\n",
    "Contact: <sip:alias3@host3.example.com>\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.6, "Message with No LWS between Display Name and <" (`lwsdisp.dat`).
const LWSDISP: &[u8] = concat!(
    "OPTIONS sip:user@example.com SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: caller<sip:caller@example.com>;tag=323\r\n",
    "Max-Forwards: 70\r\n",
    "Call-ID: lwsdisp.1234abcd@funky.example.com\r\n",
    "CSeq: 60 OPTIONS\r\n",
    "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.7, "Long Values in Header Fields" (`longreq.dat`).
///
/// The RFC prints the longest header lines in `<allOneLine>` blocks; here each is the one line
/// it stands for.
const LONGREQ: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "To: \"I have a user name of extremeextremeextremeextremeextremeextremeextremeextremeextremeextreme proportion\"<sip:user@example.com:6000;unknownparam1=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongvalue;longparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename=shortvalue;verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongParameterNameWithNoValue>\r\n",
    "F: sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@example.net;tag=12982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982424;unknownheaderparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename=unknowheaderparamvaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevalue;unknownValuelessparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamname\r\n",
    "Call-ID: longreq.onereallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallylongcallid\r\n",
    "CSeq: 3882340 INVITE\r\n",
    "Unknown-LongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLong-Name: unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-value; unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-parameter-name = unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-parameter-value\r\n",
    "Via: SIP/2.0/TCP sip33.example.com\r\n",
    "v: SIP/2.0/TCP sip32.example.com\r\n",
    "V: SIP/2.0/TCP sip31.example.com\r\n",
    "Via: SIP/2.0/TCP sip30.example.com\r\n",
    "ViA: SIP/2.0/TCP sip29.example.com\r\n",
    "VIa: SIP/2.0/TCP sip28.example.com\r\n",
    "VIA: SIP/2.0/TCP sip27.example.com\r\n",
    "via: SIP/2.0/TCP sip26.example.com\r\n",
    "viA: SIP/2.0/TCP sip25.example.com\r\n",
    "vIa: SIP/2.0/TCP sip24.example.com\r\n",
    "vIA: SIP/2.0/TCP sip23.example.com\r\n",
    "V :  SIP/2.0/TCP sip22.example.com\r\n",
    "v :  SIP/2.0/TCP sip21.example.com\r\n",
    "V  : SIP/2.0/TCP sip20.example.com\r\n",
    "v  : SIP/2.0/TCP sip19.example.com\r\n",
    "Via : SIP/2.0/TCP sip18.example.com\r\n",
    "Via  : SIP/2.0/TCP sip17.example.com\r\n",
    "Via: SIP/2.0/TCP sip16.example.com\r\n",
    "Via: SIP/2.0/TCP sip15.example.com\r\n",
    "Via: SIP/2.0/TCP sip14.example.com\r\n",
    "Via: SIP/2.0/TCP sip13.example.com\r\n",
    "Via: SIP/2.0/TCP sip12.example.com\r\n",
    "Via: SIP/2.0/TCP sip11.example.com\r\n",
    "Via: SIP/2.0/TCP sip10.example.com\r\n",
    "Via: SIP/2.0/TCP sip9.example.com\r\n",
    "Via: SIP/2.0/TCP sip8.example.com\r\n",
    "Via: SIP/2.0/TCP sip7.example.com\r\n",
    "Via: SIP/2.0/TCP sip6.example.com\r\n",
    "Via: SIP/2.0/TCP sip5.example.com\r\n",
    "Via: SIP/2.0/TCP sip4.example.com\r\n",
    "Via: SIP/2.0/TCP sip3.example.com\r\n",
    "Via: SIP/2.0/TCP sip2.example.com\r\n",
    "Via: SIP/2.0/TCP sip1.example.com\r\n",
    "Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongbranchvalue\r\n",
    "Max-Forwards: 70\r\n",
    "Contact: <sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@host5.example.net>\r\n",
    "Content-Type: application/sdp\r\n",
    "l: 150\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.1\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.8, "Extra Trailing Octets in a UDP Datagram" (`dblreq.dat`).
const DBLREQ: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:j.user@example.com;tag=43251j3j324\r\n",
    "Max-Forwards: 8\r\n",
    "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\r\n",
    "Contact: sip:j.user@host.example.com\r\n",
    "CSeq: 8 REGISTER\r\n",
    "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
    "\r\n",
    "INVITE sip:joe@example.com SIP/2.0\r\n",
    "t: sip:joe@example.com\r\n",
    "From: sip:caller@example.net;tag=141334\r\n",
    "Max-Forwards: 8\r\n",
    "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\r\n",
    "CSeq: 8 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 150\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.15\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.15\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m =video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.9, "Semicolon-Separated Parameters in URI User Part" (`semiuri.dat`).
const SEMIURI: &[u8] = concat!(
    "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\r\n",
    "To: sip:j_user@example.com\r\n",
    "From: sip:caller@example.org;tag=33242\r\n",
    "Max-Forwards: 3\r\n",
    "Call-ID: semiuri.0ha0isndaksdj\r\n",
    "CSeq: 8 OPTIONS\r\n",
    "Accept: application/sdp, application/pkcs7-mime,\r\n",
    "        multipart/mixed, multipart/signed,\r\n",
    "        message/sip, message/sipfrag\r\n",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.10, "Varied and Unknown Transport Types" (`transports.dat`).
const TRANSPORTS: &[u8] = concat!(
    "OPTIONS sip:user@example.com SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: <sip:caller@example.com>;tag=323\r\n",
    "Max-Forwards: 70\r\n",
    "Call-ID:  transports.kijh4akdnaqjkwendsasfdj\r\n",
    "Accept: application/sdp\r\n",
    "CSeq: 60 OPTIONS\r\n",
    "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\r\n",
    "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\r\n",
    "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\r\n",
    "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\r\n",
    "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.11, "Multipart MIME Message" (`mpart01.dat`).
///
/// A byte string, as the body is binary (the RFC's `<hex>` part): a `\` at the end of a source
/// line continues the literal, and the indentation after it is not part of the message.
const MPART01: &[u8] = b"MESSAGE sip:kumiko@example.org SIP/2.0\r\n\
    Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport\r\n\
    Max-Forwards: 70\r\n\
    Route: <sip:127.0.0.1:5080>\r\n\
    Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+8\
    13gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhk\
    MWYUA=\r\n\
    Contact: <sip:fluffy@127.0.0.1:5070>\r\n\
    To: <sip:kumiko@example.org>\r\n\
    From: <sip:fluffy@example.com>;tag=2fb0dcc9\r\n\
    Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..\r\n\
    CSeq: 1 MESSAGE\r\n\
    Content-Transfer-Encoding: binary\r\n\
    Content-Type: multipart/mixed;boundary=7a9cbec02ceef655\r\n\
    Date: Sat, 15 Oct 2005 04:44:56 GMT\r\n\
    User-Agent: SIPimp.org/0.2.5 (curses)\r\n\
    Content-Length: 553\r\n\
    \r\n\
    --7a9cbec02ceef655\r\n\
    Content-Type: text/plain\r\n\
    Content-Transfer-Encoding: binary\r\n\
    \r\n\
    Hello\r\n\
    --7a9cbec02ceef655\r\n\
    Content-Type: application/octet-stream\r\n\
    Content-Transfer-Encoding: binary\r\n\
    \r\n\
    0\x82\x01R\x06\t*\x86H\x86\xf7\r\x01\x07\x02\xa0\x82\x01C0\x82\x01?\x02\x01\x011\t0\x07\x06\
    \x05+\x0e\x03\x02\x1a0\x0b\x06\t*\x86H\x86\xf7\r\x01\x07\x011\x82\x01 0\x82\x01\x1c\x02\x01\
    \x010|0p1\x0b0\t\x06\x03U\x04\x06\x13\x02US1\x130\x11\x06\x03U\x04\x08\x13\nCalifornia1\x11\
    0\x0f\x06\x03U\x04\x07\x13\x08San Jose1\x0e0\x0c\x06\x03U\x04\n\x13\x05sipit1)0'\x06\x03\
    U\x04\x0b\x13 Sipit Test Certificate Authority\x02\x08\x01\x95\0q\x023\x01\x130\x07\x06\x05\
    +\x0e\x03\x02\x1a0\r\x06\t*\x86H\x86\xf7\r\x01\x01\x01\x05\0\x04\x81\x80\x8e\xf4f\xf9H\xf0\
    R-\xd2\xe5\x97\x8e\x9d\x95\xaa\xe9\xf2\xfe\x15\xa0fYqb\x92\xe8\xda*\xa8\xd85\nh\xce\xff\xae\
    <\xbd+\xff\x16u\xdd\xd5d\x8eY=\xd6G(\xf2b \xf7\xe9At\x9e3\r\x9a\x15\xed\xab\xdb\x93\xd1\x0c\
    B\x10.{r\x89\xd2\x9c\xc0\xc9\xae.\xfb\xc7\xc0\xcf\xf9\x17/;\x02~O\xc0'\xe1Tm\xe4\xb6\xaa\
    :\xbb>f\xcc\xcb]\xd6\xc6K\x83\x83\x14\x9c\xb8\xe6\xff\x18-\x94O\xe5{e\xbc\x99\xd0\x05\r\n\
    --7a9cbec02ceef655--\r\n";

/// RFC 4475 §3.1.1.12, "Unusual Reason Phrase" (`unreason.dat`).
const UNREASON: &[u8] = concat!(
    "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое\r\n",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\r\n",
    "Call-ID: unreason.1234ksdfak3j2erwedfsASdf\r\n",
    "CSeq: 35 INVITE\r\n",
    "From: sip:user@example.com;tag=11141343\r\n",
    "To: sip:user@example.edu;tag=2229\r\n",
    "Content-Length: 154\r\n",
    "Content-Type: application/sdp\r\n",
    "Contact: <sip:user@host198.example.com>\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.198\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.198\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.1.13, "Empty Reason Phrase" (`noreason.dat`).
const NOREASON: &[u8] = concat!(
    "SIP/2.0 100 \r\n",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n",
    "Call-ID: noreason.asndj203insdf99223ndf\r\n",
    "CSeq: 35 INVITE\r\n",
    "From: <sip:user@example.com>;tag=39ansfi3\r\n",
    "To: <sip:user@example.edu>;tag=902jndnke3\r\n",
    "Content-Length: 0\r\n",
    "Contact: <sip:user@host105.example.com>\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.1, "Extraneous Header Field Separators" (`badinv01.dat`).
const BADINV01: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:caller@example.net;tag=134161461246\r\n",
    "Max-Forwards: 7\r\n",
    "Call-ID: badinv01.0ha0isndaksdjasdf3234nas\r\n",
    "CSeq: 8 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n",
    "Contact: \"Joe\" <sip:joe@example.org>;;;;\r\n",
    "Content-Length: 152\r\n",
    "Content-Type: application/sdp\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.15\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.15\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.2, "Content Length Larger Than Message" (`clerr.dat`).
const CLERR: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "Max-Forwards: 80\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:caller@example.net;tag=93942939o2\r\n",
    "Contact: <sip:caller@hungry.example.net>\r\n",
    "Call-ID: clerr.0ha0isndaksdjweiafasdk3\r\n",
    "CSeq: 8 INVITE\r\n",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 9999\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.155\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.155\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.3, "Negative Content-Length" (`ncl.dat`).
const NCL: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "Max-Forwards: 254\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:caller@example.net;tag=32394234\r\n",
    "Call-ID: ncl.0ha0isndaksdj2193423r542w35\r\n",
    "CSeq: 0 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\r\n",
    "Contact: <sip:caller@example53.example.net>\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: -999\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.53\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.53\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.4, "Request Scalar Fields with Overlarge Values" (`scalar02.dat`).
const SCALAR02: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\r\n",
    "To: <sip:user@example.com>\r\n",
    "From: <sip:user@example.com>;tag=239232jh3\r\n",
    "CSeq: 36893488147419103232 REGISTER\r\n",
    "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\r\n",
    "Max-Forwards: 300\r\n",
    "Expires: 10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\r\n",
    "Contact: <sip:user@host129.example.com>\r\n",
    "  ;expires=280297596632815\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.5, "Response Scalar Fields with Overlarge Values" (`scalarlg.dat`).
const SCALARLG: &[u8] = concat!(
    "SIP/2.0 503 Service Unavailable\r\n",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129\r\n",
    "To: <sip:user@example.com>\r\n",
    "From: <sip:other@example.net>;tag=2easdjfejw\r\n",
    "CSeq: 9292394834772304023312 OPTIONS\r\n",
    "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r\r\n",
    "Retry-After: 949302838503028349304023988\r\n",
    "Warning: 1812 overture \"In Progress\"\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.6, "Unterminated Quoted String in Display Name" (`quotbal.dat`).
const QUOTBAL: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "To: \"Mr. J. User <sip:j.user@example.com>\r\n",
    "From: sip:caller@example.net;tag=93334\r\n",
    "Max-Forwards: 10\r\n",
    "Call-ID: quotbal.aksdj\r\n",
    "Contact: <sip:caller@host59.example.net>\r\n",
    "CSeq: 8 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 152\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.15\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.15\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.7, "<> Enclosing Request-URI" (`ltgtruri.dat`).
const LTGTRURI: &[u8] = concat!(
    "INVITE <sip:user@example.com> SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.net;tag=39291\r\n",
    "Max-Forwards: 23\r\n",
    "Call-ID: ltgtruri.1@192.0.2.5\r\n",
    "CSeq: 1 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.5\r\n",
    "Contact: <sip:caller@host5.example.net>\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 159\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.5\r\n",
    "t=3149328700 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.8, "Malformed SIP Request-URI (embedded LWS)" (`lwsruri.dat`).
const LWSRURI: &[u8] = concat!(
    "INVITE sip:user@example.com; lr SIP/2.0\r\n",
    "To: sip:user@example.com;tag=3xfe-9921883-z9f\r\n",
    "From: sip:caller@example.net;tag=231413434\r\n",
    "Max-Forwards: 5\r\n",
    "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423\r\n",
    "CSeq: 2130706432 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395\r\n",
    "Contact: <sip:caller@host1.example.net>\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 159\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.1\r\n",
    "t=3149328700 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.9, "Multiple SP Separating Request-Line Elements" (`lwsstart.dat`).
const LWSSTART: &[u8] = concat!(
    "INVITE  sip:user@example.com  SIP/2.0\r\n",
    "Max-Forwards: 8\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.net;tag=8814\r\n",
    "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com\r\n",
    "CSeq: 1893884 INVITE\r\n",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923\r\n",
    "Contact: <sip:caller@host1.example.net>\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 150\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.1\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.10, "SP Characters at End of Request-Line" (`trws.dat`).
const TRWS: &[u8] = concat!(
    "OPTIONS sip:remote-target@example.com SIP/2.0  \r\n",
    "Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093\r\n",
    "To: <sip:remote-target@example.com>\r\n",
    "From: <sip:local-resource@example.com>;tag=329429089\r\n",
    "Call-ID: trws.oicu34958239neffasdhr2345r\r\n",
    "Accept: application/sdp\r\n",
    "CSeq: 238923 OPTIONS\r\n",
    "Max-Forwards: 70\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.11, "Escaped Headers in SIP Request-URI" (`escruri.dat`).
const ESCRURI: &[u8] = concat!(
    "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.net;tag=341518\r\n",
    "Max-Forwards: 7\r\n",
    "Contact: <sip:caller@host39923.example.net>\r\n",
    "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5\r\n",
    "CSeq: 149209342 INVITE\r\n",
    "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 150\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.1\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.12, "Invalid Time Zone in Date Header Field" (`baddate.dat`).
const BADDATE: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.net;tag=2234923\r\n",
    "Max-Forwards: 70\r\n",
    "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234\r\n",
    "CSeq: 1392934 INVITE\r\n",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\r\n",
    "Date: Fri, 01 Jan 2010 16:00:00 EST\r\n",
    "Contact: <sip:caller@host5.example.net>\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 150\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.5\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.13, "Failure to Enclose name-addr URI in <>" (`regbadct.dat`).
const REGBADCT: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:user@example.com;tag=998332\r\n",
    "Max-Forwards: 70\r\n",
    "Call-ID: regbadct.k345asrl3fdbv@10.0.0.1\r\n",
    "CSeq: 1 REGISTER\r\n",
    "Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw\r\n",
    "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.14, "Spaces within addr-spec" (`badaspec.dat`).
const BADASPEC: &[u8] = concat!(
    "OPTIONS sip:user@example.org SIP/2.0\r\n",
    "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234\r\n",
    "Max-Forwards: 70\r\n",
    "From: \"Bell, Alexander\" <sip:a.g.bell@example.com>;tag=433423\r\n",
    "To: \"Watson, Thomas\" < sip:t.watson@example.org >\r\n",
    "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3\r\n",
    "Accept: application/sdp\r\n",
    "CSeq: 3923239 OPTIONS\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.15, "Non-token Characters in Display Name" (`baddn.dat`).
///
/// As in the RFC's archive, the message ends after `l: 0` CRLF, without the empty line.
const BADDN: &[u8] = concat!(
    "OPTIONS sip:t.watson@example.org SIP/2.0\r\n",
    "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw\r\n",
    "Max-Forwards:      70\r\n",
    "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43\r\n",
    "To:      Watson, Thomas <sip:t.watson@example.org>\r\n",
    "Call-ID: baddn.31415@c.example.com\r\n",
    "Accept: application/sdp\r\n",
    "CSeq:    3923239 OPTIONS\r\n",
    "l: 0\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.16, "Unknown Protocol Version" (`badvers.dat`).
const BADVERS: &[u8] = concat!(
    "OPTIONS sip:t.watson@example.org SIP/7.0\r\n",
    "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\n",
    "Max-Forwards:     70\r\n",
    "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\r\n",
    "To:      T. Watson <sip:t.watson@example.org>\r\n",
    "Call-ID: badvers.31417@c.example.com\r\n",
    "CSeq:    1 OPTIONS\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.17, "Start Line and CSeq Method Mismatch" (`mismatch01.dat`).
const MISMATCH01: &[u8] = concat!(
    "OPTIONS sip:user@example.com SIP/2.0\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:caller@example.net;tag=34525\r\n",
    "Max-Forwards: 6\r\n",
    "Call-ID: mismatch01.dj0234sxdfl3\r\n",
    "CSeq: 8 INVITE\r\n",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.18, "Unknown Method with CSeq Method Mismatch" (`mismatch02.dat`).
const MISMATCH02: &[u8] = concat!(
    "NEWMETHOD sip:user@example.com SIP/2.0\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:caller@example.net;tag=34525\r\n",
    "Max-Forwards: 6\r\n",
    "Call-ID: mismatch02.dj0234sxdfl3\r\n",
    "CSeq: 8 INVITE\r\n",
    "Contact: <sip:caller@host.example.net>\r\n",
    "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw\r\n",
    "Content-Type: application/sdp\r\n",
    "l: 138\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n",
    "c=IN IP4 192.0.2.1\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.1.2.19, "Overlarge Response Code" (`bigcode.dat`).
const BIGCODE: &[u8] = concat!(
    "SIP/2.0 4294967301 better not break the receiver\r\n",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n",
    "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i\r\n",
    "CSeq: 353494 INVITE\r\n",
    "From: <sip:user@example.com>;tag=39ansfi3\r\n",
    "To: <sip:user@example.edu>;tag=902jndnke3\r\n",
    "Content-Length: 0\r\n",
    "Contact: <sip:user@host105.example.com>\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.2.1, "Missing Transaction Identifier" (`badbranch.dat`).
const BADBRANCH: &[u8] = concat!(
    "OPTIONS sip:user@example.com SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.org;tag=33242\r\n",
    "Max-Forwards: 3\r\n",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\r\n",
    "Accept: application/sdp\r\n",
    "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\r\n",
    "CSeq: 8 OPTIONS\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.1, "Missing Required Header Fields" (`insuf.dat`).
const INSUF: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "CSeq: 193942 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n",
    "Content-Type: application/sdp\r\n",
    "l: 152\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.95\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.95\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.2, "Request-URI with Unknown Scheme" (`unkscm.dat`).
const UNKSCM: &[u8] = concat!(
    "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.net;tag=384\r\n",
    "Max-Forwards: 3\r\n",
    "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34\r\n",
    "CSeq: 3923423 OPTIONS\r\n",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.3, "Request-URI with Known but Atypical Scheme" (`novelsc.dat`).
const NOVELSC: &[u8] = concat!(
    "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.net;tag=384\r\n",
    "Max-Forwards: 3\r\n",
    "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34\r\n",
    "CSeq: 3923423 OPTIONS\r\n",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.4, "Unknown URI Schemes in Header Fields" (`unksm2.dat`).
const UNKSM2: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "To: isbn:2983792873\r\n",
    "From: <http://www.example.com>;tag=3234233\r\n",
    "Call-ID: unksm2.daksdj@hyphenated-host.example.com\r\n",
    "CSeq: 234902 REGISTER\r\n",
    "Max-Forwards: 70\r\n",
    "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw\r\n",
    "Contact: <name:John_Smith>\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.5, "Proxy-Require and Require" (`bext01.dat`).
const BEXT01: &[u8] = concat!(
    "OPTIONS sip:user@example.com SIP/2.0\r\n",
    "To: sip:j_user@example.com\r\n",
    "From: sip:caller@example.net;tag=242etr\r\n",
    "Max-Forwards: 6\r\n",
    "Call-ID: bext01.0ha0isndaksdj\r\n",
    "Require: nothingSupportsThis, nothingSupportsThisEither\r\n",
    "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n",
    "CSeq: 8 OPTIONS\r\n",
    "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.6, "Unknown Content-Type" (`invut.dat`).
const INVUT: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "Contact: <sip:caller@host5.example.net>\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:caller@example.net;tag=8392034\r\n",
    "Max-Forwards: 70\r\n",
    "Call-ID: invut.0ha0isndaksdjadsfij34n23d\r\n",
    "CSeq: 235448 INVITE\r\n",
    "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw\r\n",
    "Content-Type: application/unknownformat\r\n",
    "Content-Length: 40\r\n",
    "\r\n",
    "<audio>\r\n",
    " <pcmu port=\"443\"/>\r\n",
    "</audio>\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.7, "Unknown Authorization Scheme" (`regaut01.dat`).
const REGAUT01: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "To: sip:j.user@example.com\r\n",
    "From: sip:j.user@example.com;tag=87321hj23128\r\n",
    "Max-Forwards: 8\r\n",
    "Call-ID: regaut01.0ha0isndaksdj\r\n",
    "CSeq: 9338 REGISTER\r\n",
    "Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw\r\n",
    "Authorization: NoOneKnowsThisScheme opaque-data=here\r\n",
    "Content-Length:0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.8, "Multiple Values in Single Value Required Fields" (`multi01.dat`).
const MULTI01: &[u8] = concat!(
    "INVITE sip:user@company.com SIP/2.0\r\n",
    "Contact: <sip:caller@host25.example.net>\r\n",
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\r\n",
    "Max-Forwards: 70\r\n",
    "CSeq: 5 INVITE\r\n",
    "Call-ID: multi01.98asdh@192.0.2.1\r\n",
    "CSeq: 59 INVITE\r\n",
    "Call-ID: multi01.98asdh@192.0.2.2\r\n",
    "From: sip:caller@example.com;tag=3413415\r\n",
    "To: sip:user@example.com\r\n",
    "To: sip:other@example.net\r\n",
    "From: sip:caller@example.net;tag=2923420123\r\n",
    "Content-Type: application/sdp\r\n",
    "l: 154\r\n",
    "Contact: <sip:caller@host36.example.net>\r\n",
    "Max-Forwards: 5\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.25\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.25\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.9, "Multiple Content-Length Values" (`mcl01.dat`).
const MCL01: &[u8] = concat!(
    "OPTIONS sip:user@example.com SIP/2.0\r\n",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:other@example.net;tag=3923942\r\n",
    "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf\r\n",
    "CSeq: 15932 OPTIONS\r\n",
    "Content-Length: 13\r\n",
    "Max-Forwards: 60\r\n",
    "Content-Length: 5\r\n",
    "Content-Type: text/plain\r\n",
    "\r\n",
    "There's no way to know how many octets are supposed to be here.\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.10, "200 OK Response with Broadcast Via Header Field Value" (`bcast.dat`).
const BCAST: &[u8] = concat!(
    "SIP/2.0 200 OK\r\n",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\r\n",
    "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23\r\n",
    "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf\r\n",
    "CSeq: 35 INVITE\r\n",
    "From: sip:user@example.com;tag=11141343\r\n",
    "To: sip:user@example.edu;tag=2229\r\n",
    "Content-Length: 154\r\n",
    "Content-Type: application/sdp\r\n",
    "Contact: <sip:user@host28.example.com>\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.198\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.198\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.11, "Max-Forwards of Zero" (`zeromf.dat`).
const ZEROMF: &[u8] = concat!(
    "OPTIONS sip:user@example.com SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:caller@example.net;tag=3ghsd41\r\n",
    "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas\r\n",
    "CSeq: 39234321 OPTIONS\r\n",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i\r\n",
    "Max-Forwards: 0\r\n",
    "Content-Length: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.12, "REGISTER with a Contact Header Parameter" (`cparam01.dat`).
const CPARAM01: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\r\n",
    "Max-Forwards: 70\r\n",
    "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe\r\n",
    "To: sip:watson@example.com\r\n",
    "Call-ID: cparam01.70710@saturn.example.com\r\n",
    "CSeq: 2 REGISTER\r\n",
    "Contact: sip:+19725552222@gw1.example.net;unknownparam\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.13, "REGISTER with a url-parameter" (`cparam02.dat`).
const CPARAM02: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\r\n",
    "Max-Forwards: 70\r\n",
    "From: sip:watson@example.com;tag=838293\r\n",
    "To: sip:watson@example.com\r\n",
    "Call-ID: cparam02.70710@saturn.example.com\r\n",
    "CSeq: 3 REGISTER\r\n",
    "Contact: <sip:+19725552222@gw1.example.net;unknownparam>\r\n",
    "l: 0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.14, "REGISTER with a URL Escaped Header" (`regescrt.dat`).
const REGESCRT: &[u8] = concat!(
    "REGISTER sip:example.com SIP/2.0\r\n",
    "To: sip:user@example.com\r\n",
    "From: sip:user@example.com;tag=8\r\n",
    "Max-Forwards: 70\r\n",
    "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1\r\n",
    "CSeq: 14398234 REGISTER\r\n",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\n",
    "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>\r\n",
    "L:0\r\n",
    "\r\n",
)
.as_bytes();

/// RFC 4475 §3.3.15, "Unacceptable Accept Offering" (`sdp01.dat`).
const SDP01: &[u8] = concat!(
    "INVITE sip:user@example.com SIP/2.0\r\n",
    "To: sip:j_user@example.com\r\n",
    "Contact: <sip:caller@host15.example.net>\r\n",
    "From: sip:caller@example.net;tag=234\r\n",
    "Max-Forwards: 5\r\n",
    "Call-ID: sdp01.ndaksdj9342dasdd\r\n",
    "Accept: text/nobodyKnowsThis\r\n",
    "CSeq: 8 INVITE\r\n",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw\r\n",
    "Content-Length: 150\r\n",
    "Content-Type: application/sdp\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.5\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0 12\r\n",
    "m=video 3227 RTP/AVP 31\r\n",
    "a=rtpmap:31 LPC\r\n",
)
.as_bytes();

/// RFC 4475 §3.4.1, "INVITE with RFC 2543 Syntax" (`inv2543.dat`).
const INV2543: &[u8] = concat!(
    "INVITE sip:UserB@example.com SIP/2.0\r\n",
    "Via: SIP/2.0/UDP iftgw.example.com\r\n",
    "From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n",
    "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\r\n",
    "To: sip:+16505552222@ss1.example.net;user=phone\r\n",
    "Call-ID: inv2543.1717@ift.client.example.com\r\n",
    "CSeq: 56 INVITE\r\n",
    "Content-Type: application/sdp\r\n",
    "\r\n",
    "v=0\r\n",
    "o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n",
    "s=-\r\n",
    "c=IN IP4 192.0.2.5\r\n",
    "t=0 0\r\n",
    "m=audio 49217 RTP/AVP 0\r\n",
)
.as_bytes();

// ---------------------------------------------------------------------------------------------
// §3.1.1 Valid messages: parse, validate, round-trip
// ---------------------------------------------------------------------------------------------

/// §3.1.1.1: folding everywhere, LWS around every separator, compact and long names mixed,
/// odd case, an empty Subject, leading zeros in Max-Forwards and CSeq.
#[test]
fn s3_1_1_1_short_tortuous_invite_is_well_formed() {
    let r = valid_request(WSINV);
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri, "sip:vivekg@chair-dnrc.example.com;unknownparam");
    assert!(
        Uri::parse(&r.uri)
            .expect("Request-URI")
            .params
            .has("unknownparam")
    );

    let to = name_addr(&r, "To");
    assert_eq!(to.uri.aor(), "sip:vivekg@chair-dnrc.example.com");
    assert_eq!(to.tag(), Some("1918181833n"));
    let from = name_addr(&r, "From");
    assert_eq!(from.display.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.tag(), Some("98asjd8"));

    assert_eq!(r.headers.get("Max-Forwards"), Some("0068"));
    let cseq = CSeq::parse(r.headers.get("CSeq").expect("CSeq")).expect("CSeq parses");
    assert_eq!((cseq.seq, cseq.method), (9, Method::Invite));

    let v = vias(&r.headers);
    let got: Vec<(&str, &str, Option<&str>)> = v
        .iter()
        .map(|v| (v.transport.as_str(), v.host.as_str(), v.branch()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("UDP", "192.0.2.2", Some("390skdjuw")),
            ("TCP", "spindle.example.com", Some("z9hG4bK9ikj8")),
            ("UDP", "192.168.255.111", Some("z9hG4bK30239")),
        ]
    );

    assert_eq!(r.headers.get("Subject"), Some(""));
    assert_eq!(
        r.headers.get("NewFangledHeader"),
        Some("newfangled value continued newfangled value")
    );
    // Unknown header: kept as an opaque value, never parsed as params.
    assert_eq!(
        r.headers.get("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;")
    );

    let route = name_addr(&r, "Route");
    assert!(route.uri.params.has("lr"));
    assert_eq!(route.uri.params.get("unknownwith"), Some("value"));
    assert_eq!(route.uri.params.get("unknown-no-value"), Some(""));

    let c = contacts(&r);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].display.as_deref(), Some("Quoted string \"\""));
    assert_eq!(c[0].params.get("newparam"), Some("newvalue"));
    assert!(c[0].params.has("secondparam"));
    assert_eq!(c[0].params.get("q"), Some("0.33"));

    assert_eq!(r.headers.get("Content-Type"), Some("application/sdp"));
    assert_eq!(r.body.len(), 150);
}

/// §3.1.1.2: every token character in method, branch and header name; quoted-pairs of BEL,
/// NUL and DEL in a display name; UTF-8 in a parameter and an extension header.
#[test]
fn s3_1_1_2_wide_range_of_valid_characters() {
    let r = valid_request(INTMETH);
    let method = "!interesting-Method0123456789_*+`.%indeed'~";
    assert_eq!(r.method, Method::Other(method.into()));
    let uri = Uri::parse(&r.uri).expect("Request-URI");
    assert_eq!(
        uri.user.as_deref(),
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        uri.password.as_deref(),
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(uri.host, "example.com");

    assert_eq!(vias(&r.headers)[0].branch(), Some("z9hG4bK-.!%66*_+`'~"));
    assert_eq!(
        name_addr(&r, "To").display.as_deref(),
        Some("BEL:\x07 NUL:\0 DEL:\x7f")
    );
    let from = name_addr(&r, "From");
    assert_eq!(
        from.display.as_deref(),
        Some("token1~` token2'+_ token3*%!.-")
    );
    assert_eq!(from.params.get("fromParam''~+*_!.-%"), Some("работающий"));
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(
        r.headers.get("Call-ID"),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    let cseq = CSeq::parse(r.headers.get("CSeq").expect("CSeq")).expect("CSeq parses");
    assert_eq!(cseq.method, Method::Other(method.into()));
    assert_eq!(
        r.headers.get("extensionHeader-!.%*+_`'~"),
        Some("\u{feff}大停電")
    );
}

/// §3.1.1.3: % HEX HEX escapes in SIP URI user parts are decoded (and only there).
#[test]
fn s3_1_1_3_valid_use_of_percent_escaping() {
    let r = valid_request(ESC01);
    let uri = Uri::parse(&r.uri).expect("Request-URI");
    assert_eq!(uri.user.as_deref(), Some("sips:user@example.com"));
    assert_eq!(uri.host, "example.net");
    assert_eq!(name_addr(&r, "To").uri.user.as_deref(), Some("user"));
    assert_eq!(name_addr(&r, "To").uri.aor(), "sip:user@example.com");
    assert_eq!(
        name_addr(&r, "From").uri.user.as_deref(),
        Some("I have spaces")
    );
    let c = contacts(&r);
    assert_eq!(c[0].uri.user.as_deref(), Some("caller"));
    assert_eq!(
        r.headers.get("Call-ID"),
        Some("esc01.239409asdfakjkn23onasd0-3234")
    );
    assert_eq!(r.headers.get("Content-Type"), Some("application/sdp"));
}

/// §3.1.1.4: escaped NULs must not shorten a user name; the two contacts are distinct.
#[test]
fn s3_1_1_4_escaped_nulls_in_uris() {
    let r = valid_request(ESCNULL);
    assert_eq!(r.method, Method::Register);
    let to = name_addr(&r, "To");
    assert_eq!(to.uri.user.as_deref(), Some("null-\0-null"));
    assert_eq!(to.uri.aor(), "sip:null-%00-null@example.com");
    assert_eq!(name_addr(&r, "From").uri.aor(), to.uri.aor());
    let c = contacts(&r);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].uri.user.as_deref(), Some("\0"));
    assert_eq!(c[1].uri.user.as_deref(), Some("\0\0"));
    assert_ne!(c[0].uri.aor(), c[1].uri.aor());
    assert_eq!(r.headers.get("Content-Length"), Some("0"));
}

/// §3.1.1.5: % is not an escape in a method, a display name or a header name.
#[test]
fn s3_1_1_5_percent_that_is_not_an_escape() {
    let r = valid_request(ESC02);
    assert_eq!(r.method, Method::Other("RE%47IST%45R".into()));
    assert_ne!(r.method, Method::Register);
    assert_eq!(name_addr(&r, "To").display.as_deref(), Some("%Z%45"));
    assert_eq!(name_addr(&r, "From").display.as_deref(), Some("%Z%45"));
    assert_eq!(vias(&r.headers)[0].branch(), Some("z9hG4bK209%fzsnel234"));
    // Two Contact values, not three: the third is a "C%6Fntact" header.
    assert_eq!(contacts(&r).len(), 2);
    assert_eq!(
        r.headers.get("C%6Fntact"),
        Some("<sip:alias2@host2.example.com>")
    );
}

/// §3.1.1.6: no LWS between a display-name token and '<' (accepted, per the RFC).
#[test]
fn s3_1_1_6_no_lws_between_display_name_and_angle_bracket() {
    let r = valid_request(LWSDISP);
    let from = name_addr(&r, "From");
    assert_eq!(from.display.as_deref(), Some("caller"));
    assert_eq!(from.tag(), Some("323"));
}

/// §3.1.1.7: long display name, parameters, tag and Call-ID; 34 Via values spelled seven ways.
#[test]
fn s3_1_1_7_long_values_in_header_fields() {
    let r = valid_request(LONGREQ);
    let to = name_addr(&r, "To");
    let display = to.display.expect("display name");
    assert!(
        display.starts_with("I have a user name of extremeextreme"),
        "{display}"
    );
    assert!(display.ends_with(" proportion"), "{display}");
    assert_eq!(to.uri.port, Some(6000));
    assert!(
        to.uri
            .params
            .get("unknownparam1")
            .is_some_and(|v| v.len() > 80)
    );
    assert!(
        to.uri.params.has(
            "verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongParameterNameWithNoValue"
        )
    );
    let from = name_addr(&r, "From");
    assert_eq!(from.tag().map(str::len), Some(155));
    assert!(
        r.headers
            .get("Call-ID")
            .is_some_and(|c| c.ends_with("reallylongcallid"))
    );
    let v = vias(&r.headers);
    assert_eq!(v.len(), 34);
    assert_eq!(v[0].host, "sip33.example.com");
    assert_eq!(v[33].host, "host.example.com");
    assert_eq!(v[33].params.get("received"), Some("192.0.2.5"));
    assert_eq!(r.body.len(), 150);
}

/// §3.1.1.8: octets after the body of a datagram are noise, even when they look like an INVITE.
#[test]
fn s3_1_1_8_extra_trailing_octets_in_a_udp_datagram() {
    let r = valid_request(DBLREQ);
    assert_eq!(r.method, Method::Register);
    assert_eq!(
        r.headers.get("Call-ID"),
        Some("dblreq.0ha0isndaksdj99sdfafnl3lk233412")
    );
    assert!(r.body.is_empty());
    assert!(!String::from_utf8_lossy(&r.to_bytes()).contains("INVITE"));
}

/// §3.1.1.9: a ';' in the user part of the Request-URI, with an escaped '@'.
#[test]
fn s3_1_1_9_semicolon_separated_parameters_in_uri_user_part() {
    let r = valid_request(SEMIURI);
    let uri = Uri::parse(&r.uri).expect("Request-URI");
    assert_eq!(uri.user.as_deref(), Some("user;par=u@example.net"));
    assert_eq!(uri.host, "example.com");
    assert_eq!(r.headers.get_all("Accept").len(), 6);
}

/// §3.1.1.10: known and unknown transports in Via.
#[test]
fn s3_1_1_10_varied_and_unknown_transport_types() {
    let r = valid_request(TRANSPORTS);
    let t: Vec<String> = vias(&r.headers).into_iter().map(|v| v.transport).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    assert_eq!(
        r.headers.get("Call-ID"),
        Some("transports.kijh4akdnaqjkwendsasfdj")
    );
}

/// §3.1.1.11: a MESSAGE whose multipart body holds binary data with NULs: framed by
/// Content-Length, kept byte for byte.
#[test]
fn s3_1_1_11_multipart_mime_message() {
    let r = valid_request(MPART01);
    assert_eq!(r.method, Method::Message);
    assert_eq!(r.body.len(), 553);
    assert!(r.body.contains(&0));
    assert!(r.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
    assert_eq!(
        r.headers.get("Content-Type"),
        Some("multipart/mixed;boundary=7a9cbec02ceef655")
    );
}

/// §3.1.1.12: a reason phrase with reserved characters and UTF-8.
#[test]
fn s3_1_1_12_unusual_reason_phrase() {
    let resp = valid_response(UNREASON);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.reason,
        "= 2**3 * 5**2 но сто девяносто девять - простое"
    );
    assert_eq!(resp.body.len(), 154);
}

/// §3.1.1.13: an empty reason phrase (the SP after the code is there).
#[test]
fn s3_1_1_13_empty_reason_phrase() {
    let resp = valid_response(NOREASON);
    assert_eq!(resp.status, 100);
    assert_eq!(resp.reason, "");
}

// ---------------------------------------------------------------------------------------------
// §3.1.2 Invalid messages: dropped, or answered with the status the RFC asks for
// ---------------------------------------------------------------------------------------------

/// §3.1.2.1: ";;,;,," in Via and ";;;;" in Contact: "should respond with a 400".
#[test]
fn s3_1_2_1_extraneous_header_field_separators_get_400() {
    rejected_by_validation(BADINV01, 400, "Via");
    // The Contact alone is also refused.
    let fixed_via = String::from_utf8_lossy(BADINV01).replace(";;,;,,", ";branch=z9hG4bKbadinv01");
    rejected_by_validation(fixed_via.as_bytes(), 400, "Contact");
}

/// §3.1.2.2: Content-Length beyond the datagram: 400 over UDP; on a stream, wait for more.
#[test]
fn s3_1_2_2_content_length_larger_than_message() {
    let partial = answered_by_parser(CLERR, 400, "Content-Length 9999");
    assert_eq!(
        partial.headers.get("Call-ID"),
        Some("clerr.0ha0isndaksdjweiafasdk3")
    );
    let mut d = StreamDecoder::new(Limits::default());
    d.extend(CLERR);
    assert_eq!(d.next_item(), Ok(None));
}

/// §3.1.2.3: negative (or non-numeric) Content-Length: an error answer over UDP; over TCP the
/// framing is lost and the connection must be closed.
#[test]
fn s3_1_2_3_negative_content_length() {
    answered_by_parser(NCL, 400, "Content-Length '-999'");
    let five = String::from_utf8_lossy(NCL).replace("Content-Length: -999", "Content-Length: five");
    answered_by_parser(five.as_bytes(), 400, "Content-Length 'five'");
    for bytes in [NCL, five.as_bytes()] {
        let mut d = StreamDecoder::new(Limits::default());
        d.extend(bytes);
        assert!(d.next_item().is_err(), "the stream must be closed");
    }
}

/// §3.1.2.4: CSeq, Max-Forwards, Expires and a Contact expires out of range: "400 due to the
/// CSeq error".
#[test]
fn s3_1_2_4_request_scalar_fields_with_overlarge_values() {
    let r = rejected_by_validation(SCALAR02, 400, "CSeq");
    // Max-Forwards alone would be refused too; Expires alone is clamped, not refused.
    let with_cseq =
        String::from_utf8_lossy(SCALAR02).replace("36893488147419103232 REGISTER", "36 REGISTER");
    rejected_by_validation(with_cseq.as_bytes(), 400, "Max-Forwards");
    assert_eq!(
        header::parse_delta_seconds(r.headers.get("Expires").expect("Expires")),
        Ok(u32::MAX)
    );
}

/// §3.1.2.5: a response with overlarge CSeq, Retry-After and warn-code: "simply discard it".
/// It parses, but matches no transaction, so it is dropped.
#[test]
fn s3_1_2_5_response_scalar_fields_with_overlarge_values_are_discarded() {
    let resp = valid_response(SCALARLG);
    assert_eq!(resp.status, 503);
    assert!(CSeq::parse(resp.headers.get("CSeq").expect("CSeq")).is_err());
    assert_eq!(TxKey::for_response(&resp), None);
}

/// §3.1.2.6: unterminated quoted string in the To display name: 400.
#[test]
fn s3_1_2_6_unterminated_quoted_string_in_display_name() {
    rejected_by_validation(QUOTBAL, 400, "To");
}

/// §3.1.2.7: "<sip:user@example.com>" as Request-URI: 400.
#[test]
fn s3_1_2_7_angle_brackets_enclosing_request_uri() {
    rejected_by_validation(LTGTRURI, 400, "Request-URI");
}

/// §3.1.2.8: LWS inside the Request-URI: 400.
#[test]
fn s3_1_2_8_malformed_request_uri_with_embedded_lws() {
    let partial = answered_by_parser(LWSRURI, 400, "whitespace");
    assert_eq!(partial.method, Method::Invite);
}

/// §3.1.2.9: several SP between the elements of the request line: rejecting is acceptable.
#[test]
fn s3_1_2_9_multiple_sp_separating_request_line_elements() {
    answered_by_parser(LWSSTART, 400, "whitespace");
}

/// §3.1.2.10: SP after the SIP-Version: rejecting is acceptable.
#[test]
fn s3_1_2_10_sp_characters_at_end_of_request_line() {
    answered_by_parser(TRWS, 400, "whitespace");
}

/// §3.1.2.11: escaped headers in the Request-URI: "acceptable to reject with a 400".
#[test]
fn s3_1_2_11_escaped_headers_in_sip_request_uri() {
    rejected_by_validation(ESCRURI, 400, "headers");
}

/// §3.1.2.12: a non-GMT Date. The RFC asks not to reject unless the Date matters to the
/// element; a registrar does not read it, so the request is accepted.
#[test]
fn s3_1_2_12_invalid_time_zone_in_date_is_tolerated() {
    let r = valid_request(BADDATE);
    assert_eq!(r.headers.get("Date"), Some("Fri, 01 Jan 2010 16:00:00 EST"));
}

/// §3.1.2.13: a Contact URI with headers that is not in '<>': 400 (a registrar must not guess
/// where the URI ends).
#[test]
fn s3_1_2_13_failure_to_enclose_name_addr_uri_in_angle_brackets() {
    rejected_by_validation(REGBADCT, 400, "Contact");
}

/// §3.1.2.14: spaces inside '<>' around the addr-spec of To: "reasonable to reject with 400".
#[test]
fn s3_1_2_14_spaces_within_addr_spec() {
    rejected_by_validation(BADASPEC, 400, "To");
}

/// §3.1.2.15: unquoted display names with non-token characters ("Bell, Alexander"): 400.
///
/// The RFC's archive ends this message after `l: 0` without the empty line that ends the
/// header section, so the datagram is refused for that first; with the empty line added, the
/// display names are refused.
#[test]
fn s3_1_2_15_non_token_characters_in_display_name() {
    answered_by_parser(BADDN, 400, "not terminated");
    let terminated = [BADDN, b"\r\n"].concat();
    rejected_by_validation(&terminated, 400, "From");
    let only_to = String::from_utf8_lossy(&terminated)
        .replace("Bell, Alexander <sip", "\"Bell, Alexander\" <sip");
    rejected_by_validation(only_to.as_bytes(), 400, "To");
}

/// §3.1.2.16: SIP/7.0: answered with 505, which needs the request's headers.
#[test]
fn s3_1_2_16_unknown_protocol_version() {
    let partial = answered_by_parser(BADVERS, 505, "7.0");
    assert_eq!(partial.method, Method::Options);
    assert_eq!(
        partial.headers.get("Call-ID"),
        Some("badvers.31417@c.example.com")
    );
}

/// §3.1.2.17: OPTIONS with "CSeq: 8 INVITE": 400.
#[test]
fn s3_1_2_17_start_line_and_cseq_method_mismatch() {
    rejected_by_validation(MISMATCH01, 400, "CSeq method");
}

/// §3.1.2.18: unknown method with a mismatching CSeq: 501 is preferred, 400 acceptable;
/// validation runs before method dispatch, so this is a 400.
#[test]
fn s3_1_2_18_unknown_method_with_cseq_method_mismatch() {
    let r = rejected_by_validation(MISMATCH02, 400, "CSeq method");
    assert_eq!(r.method, Method::Other("NEWMETHOD".into()));
}

/// §3.1.2.19: response code 4294967301: drop it.
#[test]
fn s3_1_2_19_overlarge_response_code_is_dropped() {
    dropped_by_parser(BIGCODE);
}

// ---------------------------------------------------------------------------------------------
// §3.2 Transaction layer semantics
// ---------------------------------------------------------------------------------------------

/// §3.2.1: a branch that is only the magic cookie: the request is accepted and matched by the
/// RFC 2543 rules, not as an RFC 3261 transaction named "z9hG4bK".
#[test]
fn s3_2_1_missing_transaction_identifier() {
    let r = valid_request(BADBRANCH);
    assert_eq!(vias(&r.headers)[0].branch(), Some("z9hG4bK"));
    let key = TxKey::for_request(&r).expect("a key");
    let mut other = r.clone();
    other.headers.set("Call-ID", "badbranch.another-call");
    let other_key = TxKey::for_request(&other).expect("a key");
    assert_ne!(
        key, other_key,
        "two requests with a bare cookie are not one transaction"
    );
}

// ---------------------------------------------------------------------------------------------
// §3.3 Application-layer semantics
// ---------------------------------------------------------------------------------------------

/// §3.3.1: no Call-ID, From, To or Max-Forwards: 400.
#[test]
fn s3_3_1_missing_required_header_fields() {
    rejected_by_validation(INSUF, 400, "missing");
}

/// §3.3.2: Request-URI with an unknown scheme: 416.
#[test]
fn s3_3_2_request_uri_with_unknown_scheme() {
    rejected_by_validation(UNKSCM, 416, "nobodyknowsthisscheme");
}

/// §3.3.3: Request-URI with a known but unsupported scheme (soap.beep): 416.
#[test]
fn s3_3_3_request_uri_with_known_but_atypical_scheme() {
    rejected_by_validation(NOVELSC, 416, "soap.beep");
}

/// §3.3.4: non-SIP URIs in To, From and Contact parse; a registrar refuses the REGISTER with
/// 400 because its To is not a SIP or SIPS address-of-record.
#[test]
fn s3_3_4_unknown_uri_schemes_in_header_fields() {
    let r = valid_request(UNKSM2);
    assert_eq!(r.method, Method::Register);
    let to = name_addr(&r, "To");
    assert_eq!(to.uri.scheme, "isbn");
    assert!(!to.uri.is_sip(), "the registrar must answer 400");
    assert_eq!(name_addr(&r, "From").uri.scheme, "http");
    assert_eq!(contacts(&r)[0].uri.to_string(), "name:John_Smith");
}

/// §3.3.5: Require and Proxy-Require with unknown extensions parse (the UAS answers 420).
#[test]
fn s3_3_5_proxy_require_and_require() {
    let r = valid_request(BEXT01);
    assert_eq!(
        r.headers.get_all("Require"),
        ["nothingSupportsThis", "nothingSupportsThisEither"]
    );
    assert_eq!(r.headers.get_all("Proxy-Require").len(), 2);
}

/// §3.3.6: unknown Content-Type parses (the UAS answers 415).
#[test]
fn s3_3_6_unknown_content_type() {
    let r = valid_request(INVUT);
    assert_eq!(
        r.headers.get("Content-Type"),
        Some("application/unknownformat")
    );
    assert_eq!(r.body.len(), 40);
}

/// §3.3.7: an Authorization with an unknown scheme parses; it is not Digest, so the registrar
/// challenges (401) as if there were no credentials.
#[test]
fn s3_3_7_unknown_authorization_scheme() {
    let r = valid_request(REGAUT01);
    assert_eq!(r.method, Method::Register);
    assert!(DigestParams::parse(r.headers.get("Authorization").expect("Authorization")).is_err());
}

/// §3.3.8: two CSeq, Call-ID, To, From and Max-Forwards: 400.
#[test]
fn s3_3_8_multiple_values_in_single_value_required_fields() {
    rejected_by_validation(MULTI01, 400, "more than one");
}

/// §3.3.9: two different Content-Length values: 400 (and a closed connection on a stream).
#[test]
fn s3_3_9_multiple_content_length_values() {
    answered_by_parser(MCL01, 400, "conflicting Content-Length");
}

/// §3.3.10: a 200 with a broadcast address in the second Via parses.
#[test]
fn s3_3_10_200_ok_with_broadcast_via() {
    let resp = valid_response(BCAST);
    assert_eq!(resp.status, 200);
    let v = vias(&resp.headers);
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].host, "255.255.255.255");
}

/// §3.3.11: Max-Forwards 0 on an OPTIONS addressed to us: answered normally.
#[test]
fn s3_3_11_max_forwards_of_zero() {
    let r = valid_request(ZEROMF);
    assert_eq!(r.headers.get("Max-Forwards"), Some("0"));
}

/// §3.3.12: Contact in addr-spec form: ";unknownparam" is a Contact header parameter.
#[test]
fn s3_3_12_register_with_a_contact_header_parameter() {
    let r = valid_request(CPARAM01);
    let c = contacts(&r);
    assert!(c[0].params.has("unknownparam"));
    assert!(c[0].uri.params.0.is_empty());
    assert_eq!(c[0].uri.user.as_deref(), Some("+19725552222"));
}

/// §3.3.13: Contact in name-addr form: ";unknownparam" is a URI parameter.
#[test]
fn s3_3_13_register_with_a_url_parameter() {
    let r = valid_request(CPARAM02);
    let c = contacts(&r);
    assert!(c[0].uri.params.has("unknownparam"));
    assert!(c[0].params.0.is_empty());
}

/// §3.3.14: a Contact URI with an escaped header, properly in '<>': registrars accept it.
#[test]
fn s3_3_14_register_with_a_url_escaped_header() {
    let r = valid_request(REGESCRT);
    let c = contacts(&r);
    assert_eq!(
        c[0].uri.headers.as_deref(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
}

/// §3.3.15: an Accept the body does not satisfy parses (the UAS answers 415).
#[test]
fn s3_3_15_unacceptable_accept_offering() {
    let r = valid_request(SDP01);
    assert_eq!(r.headers.get("Accept"), Some("text/nobodyKnowsThis"));
}

// ---------------------------------------------------------------------------------------------
// §3.4 Backward compatibility
// ---------------------------------------------------------------------------------------------

/// §3.4.1: RFC 2543 syntax: no branch, no Max-Forwards, no Content-Length (the body runs to
/// the end of the datagram). Accepted, and matched by the RFC 2543 transaction rules.
#[test]
fn s3_4_1_invite_with_rfc_2543_syntax() {
    let r = valid_request(INV2543);
    assert_eq!(r.headers.get("Content-Length"), None);
    assert_eq!(r.body.len(), 105);
    assert_eq!(vias(&r.headers)[0].branch(), None);
    assert!(TxKey::for_request(&r).is_some());
    let to = name_addr(&r, "To");
    assert_eq!(to.params.get("user"), Some("phone"));
}

// ---------------------------------------------------------------------------------------------
// Every fixture
// ---------------------------------------------------------------------------------------------

const ALL: &[(&str, &[u8])] = &[
    ("3.1.1.1", WSINV),
    ("3.1.1.2", INTMETH),
    ("3.1.1.3", ESC01),
    ("3.1.1.4", ESCNULL),
    ("3.1.1.5", ESC02),
    ("3.1.1.6", LWSDISP),
    ("3.1.1.7", LONGREQ),
    ("3.1.1.8", DBLREQ),
    ("3.1.1.9", SEMIURI),
    ("3.1.1.10", TRANSPORTS),
    ("3.1.1.11", MPART01),
    ("3.1.1.12", UNREASON),
    ("3.1.1.13", NOREASON),
    ("3.1.2.1", BADINV01),
    ("3.1.2.2", CLERR),
    ("3.1.2.3", NCL),
    ("3.1.2.4", SCALAR02),
    ("3.1.2.5", SCALARLG),
    ("3.1.2.6", QUOTBAL),
    ("3.1.2.7", LTGTRURI),
    ("3.1.2.8", LWSRURI),
    ("3.1.2.9", LWSSTART),
    ("3.1.2.10", TRWS),
    ("3.1.2.11", ESCRURI),
    ("3.1.2.12", BADDATE),
    ("3.1.2.13", REGBADCT),
    ("3.1.2.14", BADASPEC),
    ("3.1.2.15", BADDN),
    ("3.1.2.16", BADVERS),
    ("3.1.2.17", MISMATCH01),
    ("3.1.2.18", MISMATCH02),
    ("3.1.2.19", BIGCODE),
    ("3.2.1", BADBRANCH),
    ("3.3.1", INSUF),
    ("3.3.2", UNKSCM),
    ("3.3.3", NOVELSC),
    ("3.3.4", UNKSM2),
    ("3.3.5", BEXT01),
    ("3.3.6", INVUT),
    ("3.3.7", REGAUT01),
    ("3.3.8", MULTI01),
    ("3.3.9", MCL01),
    ("3.3.10", BCAST),
    ("3.3.11", ZEROMF),
    ("3.3.12", CPARAM01),
    ("3.3.13", CPARAM02),
    ("3.3.14", REGESCRT),
    ("3.3.15", SDP01),
    ("3.4.1", INV2543),
];

/// Every line of every fixture ends in CRLF (the archive's bytes, not a transcription).
#[test]
fn fixtures_are_crlf_framed() {
    for (section, bytes) in ALL {
        if *section == "3.1.1.11" {
            continue; // The binary body holds bare LFs of its own.
        }
        for (i, w) in bytes.windows(2).enumerate() {
            if w[1] == b'\n' {
                assert_eq!(w[0], b'\r', "§{section}: bare LF at {}", i + 1);
            }
        }
        assert!(bytes.ends_with(b"\r\n"), "§{section}");
    }
}

/// Every request that is accepted serializes to bytes that parse back the same.
#[test]
fn every_accepted_request_round_trips() {
    for (_, bytes) in ALL {
        if let Ok(Message::Request(r)) = parse(bytes)
            && validate_request(&r).is_ok()
        {
            assert_round_trips(&r);
        }
    }
}

fn drain(d: &mut StreamDecoder) -> Vec<Result<StreamItem, String>> {
    let mut out = Vec::new();
    loop {
        match d.next_item() {
            Ok(Some(item)) => out.push(Ok(item)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e.0));
                return out;
            }
        }
    }
}

/// On a stream, however the bytes of a fixture arrive (whole, or cut in two anywhere), the
/// decoder neither panics nor changes its answer.
#[test]
fn stream_framing_does_not_depend_on_how_bytes_arrive() {
    for (section, bytes) in ALL {
        let mut whole = StreamDecoder::new(Limits::default());
        whole.extend(bytes);
        let expected = drain(&mut whole);
        for cut in 1..bytes.len() {
            let mut d = StreamDecoder::new(Limits::default());
            d.extend(&bytes[..cut]);
            let mut got = drain(&mut d);
            if matches!(got.last(), Some(Err(_))) {
                // A stream error closes the connection; it must be the same error whole.
                assert_eq!(got, expected, "§{section} cut at {cut}");
                continue;
            }
            d.extend(&bytes[cut..]);
            got.extend(drain(&mut d));
            assert_eq!(got, expected, "§{section} cut at {cut}");
        }
    }
}

/// The stream decoder frames the two requests of §3.1.1.8 as two messages: on TCP the second
/// is a request of its own.
#[test]
fn stream_decoder_frames_both_requests_of_dblreq() {
    let mut d = StreamDecoder::new(Limits::default());
    d.extend(DBLREQ);
    let methods: Vec<Method> = drain(&mut d)
        .iter()
        .filter_map(|i| match i {
            Ok(StreamItem::Message(Ok(Message::Request(r)))) => Some(r.method.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(methods, [Method::Register, Method::Invite]);
}
