//! The answer path: a pure function of (query bytes, zone, index) → response bytes.
//! It allocates nothing per query beyond the output buffer the caller reuses.

use super::zone::{Node, Zone};
use crate::{
    index::{AccountIndex, Label},
    wire::{
        self, CLASS_CH, CLASS_IN, Edns, Query, RCODE_BADVERS, RCODE_FORMERR, RCODE_NOERROR,
        RCODE_NOTIMP, RCODE_NXDOMAIN, RCODE_REFUSED, Reject, TYPE_A, TYPE_AAAA, TYPE_ANY,
        TYPE_AXFR, TYPE_HINFO, TYPE_IXFR, TYPE_MAILA, TYPE_MAILB, TYPE_NS, TYPE_OPT, TYPE_SOA,
        TYPE_TXT,
    },
};

/// How the query arrived: UDP answers are bounded by the client's EDNS buffer size and
/// truncated (TC) when they do not fit; TCP answers are always complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What was answered, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub qtype: u16,
    /// Full (extended) RCODE.
    pub rcode: u16,
    pub truncated: bool,
}

/// Largest UDP payload we send, whatever the client offers: the DNS Flag Day 2020
/// value, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// HINFO RDATA for ANY queries (RFC 8482 §4.2): CPU "RFC8482", OS "".
const RFC8482_HINFO: &[u8] = b"\x07RFC8482\x00";

/// Writes the response to `packet` into `out`, or returns `None` when the packet gets
/// no answer at all.
pub fn answer(
    packet: &[u8],
    zone: &Zone,
    index: &AccountIndex,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Option<Answered> {
    out.clear();
    let query = match wire::parse_query(packet) {
        Ok(query) => query,
        Err(Reject::Drop) => return None,
        Err(Reject::Rcode {
            id,
            flags,
            rcode,
            edns,
        }) => {
            wire::write_header(
                out,
                id,
                wire::response_flags(flags, false, false, rcode),
                [0, 0, 0, u16::from(edns.is_some())],
            );
            if let Some(edns) = edns {
                // RFC 6891 §6.1.1: an OPT in the query means one in the response.
                wire::write_opt(out, MAX_UDP_PAYLOAD, 0, edns.dnssec_ok, nsid(zone, edns));
            }
            return Some(Answered {
                qtype: 0,
                rcode: rcode as u16,
                truncated: false,
            });
        }
    };

    if let Some(edns) = query.edns
        && edns.version > 0
    {
        // RFC 6891 §6.1.3: we speak version 0 only.
        return Some(header_only(&query, zone, out, false, RCODE_BADVERS));
    }
    if query.qclass != CLASS_IN {
        // RFC 4892 §2: a server's identity as CHAOS TXT at id.server. (and BIND's older
        // hostname.bind.), when it has one. Anything else in another class, such as
        // version.bind., is refused: we answer for our zone only.
        if query.qclass == CLASS_CH
            && query.qtype == TYPE_TXT
            && !zone.identity_txt.is_empty()
            && asks_identity(&query)
        {
            let mut response = Response::start(&query, out);
            response.out.extend_from_slice(&zone.identity_txt);
            response.answers = 1;
            return Some(response.finish(zone, transport));
        }
        return Some(header_only(&query, zone, out, false, RCODE_REFUSED as u16));
    }
    match query.qtype {
        TYPE_OPT => return Some(header_only(&query, zone, out, false, RCODE_FORMERR as u16)),
        // No zone transfers: the content is per-replica state, not a zone to copy.
        TYPE_AXFR | TYPE_IXFR => {
            return Some(header_only(&query, zone, out, false, RCODE_REFUSED as u16));
        }
        TYPE_MAILA | TYPE_MAILB => {
            return Some(header_only(&query, zone, out, false, RCODE_NOTIMP as u16));
        }
        _ => {}
    }

    // Is the name in our zone? Anything else is REFUSED: we are no resolver, and
    // answering would make us an amplifier.
    let n = query.label_count;
    let k = zone.apex_labels.len();
    if n < k
        || !(0..k).all(|i| {
            query
                .label(n - k + i)
                .eq_ignore_ascii_case(&zone.apex_labels[i])
        })
    {
        return Some(header_only(&query, zone, out, false, RCODE_REFUSED as u16));
    }
    let apex_offset = wire::HEADER_LEN as u16 + query.label_offsets[n - k] as u16;

    let mut response = Response::start(&query, out);
    if n == k {
        response.node(zone, &zone.apex, query.qtype);
    } else if let Some(node) = static_node(zone, &query, n - k) {
        response.node(zone, node, query.qtype);
    } else if n - k == 1
        && let Some(label) = Label::new(query.label(0))
        && index
            .with_served(&label, |served| match query.qtype {
                TYPE_TXT if served.txt.count > 0 => {
                    response.out.extend_from_slice(&served.txt.records);
                    response.answers = served.txt.count;
                }
                // RFC 8482: one synthesised HINFO stands for the name's data; a name
                // with none (no challenge pending) is NODATA, as for any other type.
                TYPE_ANY if served.txt.count > 0 => response.hinfo(zone),
                _ => {}
            })
            .is_some()
    {
        // Answered from the account's prepared records (or NODATA below).
    } else {
        response.rcode = RCODE_NXDOMAIN;
    }
    if response.answers == 0 {
        // NXDOMAIN or NODATA: the SOA in authority gives the negative TTL (RFC 2308 §3).
        // acme-dns answers NXDOMAIN for other types at existing names; that is wrong.
        response.soa_authority(zone, apex_offset);
    }
    Some(response.finish(zone, transport))
}

/// Whether the question name is `id.server.` or `hostname.bind.`, in any letter case.
fn asks_identity(query: &Query<'_>) -> bool {
    query.label_count == 2
        && [(&b"id"[..], &b"server"[..]), (b"hostname", b"bind")]
            .iter()
            .any(|(first, second)| {
                query.label(0).eq_ignore_ascii_case(first)
                    && query.label(1).eq_ignore_ascii_case(second)
            })
}

/// The NSID to put in the answer's OPT: the zone's identity when the query asked for
/// it, and nothing otherwise (RFC 5001 §2.3: never unasked).
#[inline]
fn nsid(zone: &Zone, edns: Edns) -> Option<&[u8]> {
    if edns.nsid { zone.nsid() } else { None }
}

/// A configured name below the apex, found without allocating.
fn static_node<'z>(zone: &'z Zone, query: &Query<'_>, relative_labels: usize) -> Option<&'z Node> {
    if zone.names.is_empty() {
        return None;
    }
    let end = query.label_offsets[relative_labels] as usize;
    let mut key = [0u8; 255];
    for (dst, src) in key.iter_mut().zip(&query.question[..end]) {
        *dst = src.to_ascii_lowercase();
    }
    // Length bytes are < 64, so lowercasing leaves them unchanged.
    zone.names.get(&key[..end])
}

/// An answer of the header, the question and the OPT only. It always fits a 512-byte
/// UDP answer, NSID included: 12 + at most 259 + 11 + 4 + 64 bytes.
fn header_only(
    query: &Query<'_>,
    zone: &Zone,
    out: &mut Vec<u8>,
    authoritative: bool,
    rcode: u16,
) -> Answered {
    let flags = wire::response_flags(query.flags, authoritative, false, (rcode & 0x0F) as u8);
    let arcount = u16::from(query.edns.is_some());
    wire::write_header(out, query.id, flags, [1, 0, 0, arcount]);
    out.extend_from_slice(query.question);
    if let Some(edns) = query.edns {
        wire::write_opt(
            out,
            MAX_UDP_PAYLOAD,
            (rcode >> 4) as u8,
            edns.dnssec_ok,
            nsid(zone, edns),
        );
    }
    Answered {
        qtype: query.qtype,
        rcode,
        truncated: false,
    }
}

struct Response<'q, 'o> {
    query: &'q Query<'q>,
    out: &'o mut Vec<u8>,
    rcode: u8,
    answers: u16,
    authority: u16,
    additional: u16,
}

impl<'q, 'o> Response<'q, 'o> {
    fn start(query: &'q Query<'q>, out: &'o mut Vec<u8>) -> Self {
        wire::write_header(out, query.id, 0, [1, 0, 0, 0]);
        out.extend_from_slice(query.question);
        Self {
            query,
            out,
            rcode: RCODE_NOERROR,
            answers: 0,
            authority: 0,
            additional: 0,
        }
    }

    /// Answers from a configured node: the RRset of the asked type, HINFO for ANY at a
    /// name with data (an empty non-terminal has none: NODATA), and for NS the addresses
    /// of in-zone name servers as additional records.
    fn node(&mut self, zone: &Zone, node: &Node, qtype: u16) {
        if qtype == TYPE_ANY {
            if !node.rrsets.is_empty() {
                self.hinfo(zone);
            }
            return;
        }
        let Some(set) = node.get(qtype) else { return };
        let mut targets = [0u16; 16];
        for (i, rdata) in set.rdatas.iter().enumerate() {
            wire::write_record_header(
                self.out,
                wire::HEADER_LEN as u16,
                set.rtype,
                set.ttl,
                rdata.len() as u16,
            );
            if i < targets.len() && self.out.len() < 0x3FFF {
                targets[i] = self.out.len() as u16;
            }
            self.out.extend_from_slice(rdata);
            self.answers += 1;
        }
        if qtype == TYPE_NS {
            for (i, rdata) in set.rdatas.iter().enumerate().take(targets.len()) {
                if targets[i] != 0 {
                    self.glue(zone, rdata, targets[i]);
                }
            }
        }
    }

    /// A and AAAA of an in-zone name server, owned by a pointer to its name in the NS
    /// record just written.
    fn glue(&mut self, zone: &Zone, ns_name: &[u8], at: u16) {
        let labels = count_labels(ns_name);
        let k = zone.apex_labels.len();
        if labels <= k {
            return;
        }
        let mut end = 0;
        for _ in 0..labels - k {
            end += 1 + ns_name[end] as usize;
        }
        let mut key = [0u8; 255];
        for (dst, src) in key.iter_mut().zip(&ns_name[..end]) {
            *dst = src.to_ascii_lowercase();
        }
        let Some(node) = zone.names.get(&key[..end]) else {
            return;
        };
        for rtype in [TYPE_A, TYPE_AAAA] {
            if let Some(set) = node.get(rtype) {
                for rdata in &set.rdatas {
                    wire::write_record_header(self.out, at, rtype, set.ttl, rdata.len() as u16);
                    self.out.extend_from_slice(rdata);
                    self.additional += 1;
                }
            }
        }
    }

    fn hinfo(&mut self, zone: &Zone) {
        wire::write_record_header(
            self.out,
            wire::HEADER_LEN as u16,
            TYPE_HINFO,
            zone.negative_ttl,
            RFC8482_HINFO.len() as u16,
        );
        self.out.extend_from_slice(RFC8482_HINFO);
        self.answers += 1;
    }

    fn soa_authority(&mut self, zone: &Zone, apex_offset: u16) {
        wire::write_record_header(
            self.out,
            apex_offset,
            TYPE_SOA,
            zone.negative_ttl,
            zone.soa_rdata.len() as u16,
        );
        self.out.extend_from_slice(&zone.soa_rdata);
        self.authority += 1;
    }

    fn finish(self, zone: &Zone, transport: Transport) -> Answered {
        let edns = self.query.edns;
        let limit = match transport {
            Transport::Tcp => u16::MAX as usize,
            Transport::Udp => match edns {
                Some(e) => e.udp_size.clamp(512, MAX_UDP_PAYLOAD) as usize,
                None => 512,
            },
        };
        let nsid = edns.and_then(|e| nsid(zone, e));
        // The OPT is written last, after the decision to truncate, so it is counted
        // here: 11 bytes, and the NSID option's when there is one.
        let opt_len = match edns {
            Some(_) => wire::OPT_LEN + nsid.map_or(0, wire::nsid_option_len),
            None => 0,
        };
        let mut counts = [1, self.answers, self.authority, self.additional];
        let truncated = self.out.len() + opt_len > limit;
        if truncated {
            // RFC 2181 §9: the client retries over TCP, which always gets everything.
            self.out
                .truncate(wire::HEADER_LEN + self.query.question.len());
            counts = [1, 0, 0, 0];
        }
        if let Some(e) = edns {
            wire::write_opt(self.out, MAX_UDP_PAYLOAD, 0, e.dnssec_ok, nsid);
            counts[3] += 1;
        }
        wire::set_counts(self.out, counts);
        wire::set_flags(
            self.out,
            wire::response_flags(self.query.flags, true, truncated, self.rcode),
        );
        Answered {
            qtype: self.query.qtype,
            rcode: self.rcode as u16,
            truncated,
        }
    }
}

fn count_labels(wire_name: &[u8]) -> usize {
    let mut at = 0;
    let mut labels = 0;
    while at < wire_name.len() && wire_name[at] != 0 {
        at += 1 + wire_name[at] as usize;
        labels += 1;
    }
    labels
}
