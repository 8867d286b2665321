//! DNS metrics. The answer path counts into per-thread local counters and flushes them
//! to the shared prometheus metrics every so often, so two threads answering at full
//! speed never contend on one atomic per query.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    local::{LocalHistogram, LocalIntCounter},
};

use super::{Answered, Transport, rrl::Verdict};
use crate::wire::{TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_CAA, TYPE_NS, TYPE_SOA, TYPE_TXT};

const QTYPES: [&str; 8] = ["A", "AAAA", "TXT", "SOA", "NS", "CAA", "ANY", "other"];
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];

fn qtype_index(qtype: u16) -> usize {
    match qtype {
        TYPE_A => 0,
        TYPE_AAAA => 1,
        TYPE_TXT => 2,
        TYPE_SOA => 3,
        TYPE_NS => 4,
        TYPE_CAA => 5,
        TYPE_ANY => 6,
        _ => 7,
    }
}

fn rcode_index(rcode: u16) -> usize {
    match rcode {
        0..=5 => rcode as usize,
        16 => 6,
        _ => 7,
    }
}

fn transport_label(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

/// Why the responder closed a TCP connection early.
#[derive(Clone, Copy, Debug)]
pub enum TcpClosed {
    /// The connection limit was reached: the one idle longest made room for a new one.
    Evicted,
    /// Its source already held its share of connections.
    SourceLimit,
}

#[derive(Clone)]
pub struct DnsMetrics {
    queries: IntCounterVec,
    tcp_closed: IntCounterVec,
    dropped: IntCounterVec,
    truncated: IntCounterVec,
    rrl: IntCounterVec,
    latency: HistogramVec,
}

impl DnsMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let queries = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_dns_queries_total",
                "DNS queries answered, by query type, response code and transport",
            ),
            &["qtype", "rcode", "transport"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_dns_dropped_total",
                "Packets given no answer (shorter than a DNS header, or themselves responses)",
            ),
            &["transport"],
        )?;
        let truncated = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_dns_truncated_total",
                "UDP answers sent with TC set because they did not fit the client's buffer",
            ),
            &["transport"],
        )?;
        let rrl = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_rrl_responses_total",
                "UDP answers over the response rate limit: sent truncated (slipped) or not sent (dropped)",
            ),
            &["action"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "kube_acme_dns_dns_answer_seconds",
                "Time from receiving a query to handing its answer to the kernel",
            )
            .buckets(vec![
                0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
                0.025,
            ]),
            &["transport"],
        )?;
        let tcp_closed = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_tcp_connections_closed_total",
                "TCP connections closed by the responder's limits: the one idle longest when \
                 all were taken (evicted), or a new one from a source at its share (source_limit)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(queries.clone()))?;
        registry.register(Box::new(tcp_closed.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(truncated.clone()))?;
        registry.register(Box::new(rrl.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            queries,
            tcp_closed,
            dropped,
            truncated,
            rrl,
            latency,
        })
    }

    /// Counts a TCP connection closed by a limit (rare: counted at once, not batched).
    pub fn tcp_closed(&self, reason: TcpClosed) {
        let reason = match reason {
            TcpClosed::Evicted => "evicted",
            TcpClosed::SourceLimit => "source_limit",
        };
        self.tcp_closed.with_label_values(&[reason]).inc();
    }

    /// Counters for one answering thread or task.
    pub fn local(&self, transport: Transport) -> LocalDnsMetrics {
        let t = transport_label(transport);
        let queries = QTYPES
            .iter()
            .map(|q| {
                RCODES
                    .iter()
                    .map(|r| self.queries.with_label_values(&[*q, *r, t]).local())
                    .collect()
            })
            .collect();
        LocalDnsMetrics {
            queries,
            dropped: self.dropped.with_label_values(&[t]).local(),
            truncated: self.truncated.with_label_values(&[t]).local(),
            rrl_slipped: self.rrl.with_label_values(&["slipped"]).local(),
            rrl_dropped: self.rrl.with_label_values(&["dropped"]).local(),
            latency: self.latency.with_label_values(&[t]).local(),
            pending: 0,
        }
    }
}

pub struct LocalDnsMetrics {
    queries: Vec<Vec<LocalIntCounter>>,
    dropped: LocalIntCounter,
    truncated: LocalIntCounter,
    rrl_slipped: LocalIntCounter,
    rrl_dropped: LocalIntCounter,
    latency: LocalHistogram,
    pending: u32,
}

impl LocalDnsMetrics {
    #[inline]
    pub fn record(&mut self, answered: Option<Answered>, seconds: f64) {
        match answered {
            Some(a) => {
                self.queries[qtype_index(a.qtype)][rcode_index(a.rcode)].inc();
                if a.truncated {
                    self.truncated.inc();
                }
            }
            None => self.dropped.inc(),
        }
        self.latency.observe(seconds);
        self.pending += 1;
        if self.pending >= 4096 {
            self.flush();
        }
    }

    /// Counts what response rate limiting did to an answer; [`record`](Self::record)
    /// still counts the query itself.
    #[inline]
    pub fn record_rrl(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Send => {}
            Verdict::Slip => self.rrl_slipped.inc(),
            Verdict::Drop => self.rrl_dropped.inc(),
        }
    }

    pub fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        for row in &mut self.queries {
            for counter in row {
                counter.flush();
            }
        }
        self.dropped.flush();
        self.truncated.flush();
        self.rrl_slipped.flush();
        self.rrl_dropped.flush();
        self.latency.flush();
        self.pending = 0;
    }
}
