//! Counters of the front end, rendered in the Prometheus text format by the admin API.

use sip::Method;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; every field is a Prometheus counter named `tandem_sip_<field>_total`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// UDP datagrams received.
    pub datagrams: AtomicU64,
    /// Messages that could not be parsed (dropped, or answered with 400 when possible).
    pub parse_errors: AtomicU64,
    /// Retransmitted requests absorbed by the transaction layer.
    pub retransmissions: AtomicU64,
    /// 401/407 challenges sent.
    pub challenges: AtomicU64,
    /// Requests refused for bad credentials.
    pub auth_failures: AtomicU64,
    /// MESSAGE requests forwarded to a contact.
    pub messages_forwarded: AtomicU64,
    /// Requests refused with 503 because the transaction table was full.
    pub overloaded: AtomicU64,
    /// New requests refused with 503 by overload control: queued too long, or too many
    /// requests pending ([sip] `max_queue_delay_ms`, `max_pending_requests`).
    pub shed: AtomicU64,
    /// NOTIFY requests sent / that got no 2xx.
    pub notifies_sent: AtomicU64,
    pub notifies_failed: AtomicU64,
    requests: [AtomicU64; 9],
    responses: [AtomicU64; 6],
}

const METHODS: [&str; 9] = [
    "REGISTER",
    "MESSAGE",
    "PUBLISH",
    "SUBSCRIBE",
    "NOTIFY",
    "OPTIONS",
    "INVITE",
    "ACK",
    "other",
];

impl Metrics {
    pub(crate) fn count_request(&self, method: &Method) {
        let i = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_response(&self, status: u16) {
        let class = usize::from(status / 100).min(6).saturating_sub(1);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests received with this method (`other` for the rest).
    pub fn requests(&self, method: &str) -> u64 {
        METHODS
            .iter()
            .position(|m| *m == method)
            .map_or(0, |i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Responses sent in a class (1 to 6).
    pub fn responses(&self, class: u16) -> u64 {
        usize::from(class)
            .checked_sub(1)
            .and_then(|i| self.responses.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self, out: &mut String) {
        let simple: [(&str, &AtomicU64, &str); 10] = [
            ("datagrams", &self.datagrams, "UDP datagrams received"),
            (
                "parse_errors",
                &self.parse_errors,
                "messages that could not be parsed",
            ),
            (
                "retransmissions",
                &self.retransmissions,
                "retransmitted requests absorbed",
            ),
            ("challenges", &self.challenges, "digest challenges sent"),
            (
                "auth_failures",
                &self.auth_failures,
                "requests refused for bad credentials",
            ),
            (
                "messages_forwarded",
                &self.messages_forwarded,
                "MESSAGE requests forwarded to a contact",
            ),
            (
                "overloaded",
                &self.overloaded,
                "requests refused with 503: transaction table full",
            ),
            (
                "shed",
                &self.shed,
                "new requests refused with 503: queued too long or too many pending",
            ),
            ("notifies_sent", &self.notifies_sent, "NOTIFY requests sent"),
            (
                "notifies_failed",
                &self.notifies_failed,
                "NOTIFY requests without a 2xx answer",
            ),
        ];
        for (name, value, help) in simple {
            let _ = writeln!(out, "# HELP tandem_sip_{name}_total {help}");
            let _ = writeln!(out, "# TYPE tandem_sip_{name}_total counter");
            let _ = writeln!(
                out,
                "tandem_sip_{name}_total {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tandem_sip_requests_total SIP requests received, by method"
        );
        let _ = writeln!(out, "# TYPE tandem_sip_requests_total counter");
        for (m, c) in METHODS.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "tandem_sip_requests_total{{method=\"{m}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tandem_sip_responses_total SIP responses sent, by class"
        );
        let _ = writeln!(out, "# TYPE tandem_sip_responses_total counter");
        for (i, c) in self.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "tandem_sip_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                c.load(Ordering::Relaxed)
            );
        }
    }
}
