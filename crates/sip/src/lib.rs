//! Tandem's SIP core, sans I/O: messages and their parser and serializer (with limits on
//! everything), typed header views, RFC 3261 transactions driven by the caller's clock, and
//! server-side digest authentication (MD5 and SHA-256).
//!
//! **Invariant:** this crate does no I/O and reads no clock: bytes and times come in, bytes and
//! decisions go out. That keeps it testable with literal fixtures and usable under simulation.

pub mod digest;
pub mod header;
pub mod message;
pub mod parse;
pub mod transaction;
pub mod uri;

pub use message::{Headers, Message, Method, Request, Response, reason_phrase};
pub use parse::{
    Limits, ParseError, Rejection, StreamDecoder, StreamItem, parse_message, validate_request,
};
pub use uri::Uri;
