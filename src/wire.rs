//! DNS wire format: just what an authoritative server needs to read a query and write
//! an answer, without allocating. RFC 1035 §4, EDNS(0) from RFC 6891.

pub const HEADER_LEN: usize = 12;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_HINFO: u16 = 13;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_MAILB: u16 = 253;
pub const TYPE_MAILA: u16 = 254;
pub const TYPE_ANY: u16 = 255;
pub const TYPE_CAA: u16 = 257;
pub const CLASS_IN: u16 = 1;
/// The CHAOS class, where servers answer questions about themselves (RFC 4892).
pub const CLASS_CH: u16 = 3;

/// EDNS option code of the name server identifier (RFC 5001 §2.3).
pub const OPTION_NSID: u16 = 3;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// Extended RCODE 16 (RFC 6891 §9): upper 8 bits go in the OPT record.
pub const RCODE_BADVERS: u16 = 16;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;

/// The most labels a 255-byte name can have.
pub const MAX_LABELS: usize = 128;

/// EDNS(0) as the client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// The OPT carried an NSID option: the client asks which server answered
    /// (RFC 5001 §2.1).
    pub nsid: bool,
}

/// A parsed query. Slices borrow the packet: `question` is the question section as
/// received, so echoing it keeps the client's letter case (0x20 randomisation).
#[derive(Debug)]
pub struct Query<'a> {
    pub id: u16,
    pub flags: u16,
    pub question: &'a [u8],
    /// Offsets of each label's length byte within `question`, apex last.
    pub label_offsets: [u8; MAX_LABELS],
    pub label_count: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The `i`th label of the question name (0 = leftmost).
    #[inline]
    pub fn label(&self, i: usize) -> &[u8] {
        let at = self.label_offsets[i] as usize;
        let len = self.question[at] as usize;
        &self.question[at + 1..at + 1 + len]
    }

    /// The question name's wire bytes, without the terminating root label.
    pub fn name_bytes(&self) -> &[u8] {
        &self.question[..self.question.len() - 5]
    }
}

/// Why a packet gets no normal answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer: shorter than a header, or itself a response (answering
    /// responses invites loops between servers).
    Drop,
    /// Answer with this RCODE and no question section; with an OPT record when `edns`
    /// is set, since the query carried one (RFC 6891 §6.1.1).
    Rcode {
        id: u16,
        flags: u16,
        rcode: u8,
        edns: Option<Edns>,
    },
}

/// Reads a query. Never panics, whatever the bytes.
pub fn parse_query(packet: &[u8]) -> Result<Query<'_>, Reject> {
    if packet.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & FLAG_QR != 0 {
        return Err(Reject::Drop);
    }
    let count = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    let (qdcount, ancount, nscount, arcount) = (count(4), count(6), count(8), count(10));
    let reject = |rcode: u8, edns: Option<Edns>| Reject::Rcode {
        id,
        flags,
        rcode,
        edns,
    };

    // Rejected at the header. The rest is still read, as leniently as the sections
    // allow, only to find an OPT record: the answer must then carry one too.
    let header_rcode = if flags & OPCODE_MASK != 0 {
        Some(RCODE_NOTIMP)
    } else if qdcount != 1 {
        Some(RCODE_FORMERR)
    } else {
        None
    };
    if let Some(rcode) = header_rcode {
        let mut pos = Some(HEADER_LEN);
        for _ in 0..qdcount {
            let Some(at) = pos else { break };
            pos = skip_name(packet, at).and_then(|at| packet.get(at..at + 4).map(|_| at + 4));
        }
        let edns = pos.and_then(|at| read_records(packet, at, ancount, nscount, arcount).edns);
        return Err(reject(rcode, edns));
    }

    // Question name: plain labels only. A compression pointer in the first name of a
    // message could only point into the header, so it is malformed.
    let mut pos = HEADER_LEN;
    let mut label_offsets = [0u8; MAX_LABELS];
    let mut label_count = 0;
    loop {
        let Some(&len) = packet.get(pos) else {
            return Err(reject(RCODE_FORMERR, None));
        };
        if len == 0 {
            pos += 1;
            break;
        }
        if len & 0xC0 != 0 || label_count == MAX_LABELS {
            return Err(reject(RCODE_FORMERR, None));
        }
        label_offsets[label_count] = (pos - HEADER_LEN) as u8;
        label_count += 1;
        pos += 1 + len as usize;
        if pos - HEADER_LEN > 255 {
            return Err(reject(RCODE_FORMERR, None));
        }
    }
    let Some(tail) = packet.get(pos..pos + 4) else {
        return Err(reject(RCODE_FORMERR, None));
    };
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    pos += 4;
    let question = &packet[HEADER_LEN..pos];

    let records = read_records(packet, pos, ancount, nscount, arcount);
    if records.malformed {
        return Err(reject(RCODE_FORMERR, records.edns));
    }

    Ok(Query {
        id,
        flags,
        question,
        label_offsets,
        label_count,
        qtype,
        qclass,
        edns: records.edns,
    })
}

/// What the answer, authority and additional sections of a query hold.
struct Records {
    /// The OPT record, when one owned by the root was read whole, even if something
    /// else makes the query malformed: the FORMERR then carries an OPT too.
    edns: Option<Edns>,
    malformed: bool,
}

/// Reads the records from `pos` on: the answer and authority sections are skipped, the
/// additional section searched for the OPT record (RFC 6891 §6.1.1).
fn read_records(
    packet: &[u8],
    mut pos: usize,
    ancount: u16,
    nscount: u16,
    arcount: u16,
) -> Records {
    let mut records = Records {
        edns: None,
        malformed: false,
    };
    for _ in 0..(ancount as u32 + nscount as u32) {
        let Some((next, rtype, _)) = skip_record(packet, pos) else {
            records.malformed = true;
            return records;
        };
        // OPT is a pseudo-record of the additional section only (RFC 6891 §6.1.1).
        if rtype == TYPE_OPT {
            records.malformed = true;
        }
        pos = next;
    }
    for _ in 0..arcount {
        let Some((next, rtype, owner_is_root)) = skip_record(packet, pos) else {
            records.malformed = true;
            return records;
        };
        if rtype == TYPE_OPT {
            // RFC 6891 §6.1.1: one OPT, owned by the root.
            if records.edns.is_some() || !owner_is_root {
                records.malformed = true;
            } else {
                let fixed = &packet[next_fixed(pos)..next];
                let class = u16::from_be_bytes([fixed[2], fixed[3]]);
                let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
                let options = read_options(&fixed[10..]);
                records.edns = Some(Edns {
                    udp_size: class,
                    version: (ttl >> 16) as u8,
                    dnssec_ok: ttl & 0x8000 != 0,
                    nsid: options.nsid,
                });
                // RFC 6891 §7: an option list that does not end exactly at the end of
                // the RDATA is malformed.
                if !options.well_formed {
                    records.malformed = true;
                }
            }
        }
        pos = next;
    }
    records
}

/// What the options of an OPT record ask for.
struct Options {
    /// The RDATA is a whole number of options: code (16 bits), length (16 bits) and
    /// that many bytes of data, each (RFC 6891 §6.1.2).
    well_formed: bool,
    /// An NSID option was among them (as far as they could be read).
    nsid: bool,
}

/// Walks the option list of OPT RDATA. Options we do not know are skipped
/// (RFC 6891 §6.1.2).
fn read_options(mut rdata: &[u8]) -> Options {
    let mut options = Options {
        well_formed: true,
        nsid: false,
    };
    while !rdata.is_empty() {
        let Some(header) = rdata.get(..4) else {
            options.well_formed = false;
            break;
        };
        let code = u16::from_be_bytes([header[0], header[1]]);
        let len = u16::from_be_bytes([header[2], header[3]]) as usize;
        let Some(rest) = rdata.get(4 + len..) else {
            options.well_formed = false;
            break;
        };
        // RFC 5001 §2.1 has the client send the option empty; data in it is ignored
        // rather than refused, the request being plain either way.
        if code == OPTION_NSID {
            options.nsid = true;
        }
        rdata = rest;
    }
    options
}

/// Position of a record's fixed part (type, class, ttl, rdlength) when its owner is the
/// root name, which is all an OPT record may have.
fn next_fixed(record_start: usize) -> usize {
    record_start + 1
}

/// Skips a name, which may end in a compression pointer; returns the position after it.
fn skip_name(packet: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *packet.get(pos)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len as usize,
            0xC0 => {
                packet.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
        if pos - start > 255 {
            return None;
        }
    }
}

/// Skips one resource record; returns the next position, its type, and whether its
/// owner is the root name.
fn skip_record(packet: &[u8], start: usize) -> Option<(usize, u16, bool)> {
    let mut pos = skip_name(packet, start)?;
    let owner_is_root = pos == start + 1;
    let fixed = packet.get(pos..pos + 10)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
    pos += 10;
    packet.get(pos..pos + rdlen)?;
    Some((pos + rdlen, rtype, owner_is_root))
}

/// Header flags for a response to a query with `query_flags`: QR set, opcode copied,
/// RD and CD copied for QUERY (RFC 1035 §4.1.1, RFC 4035 §3.1.6) and left clear for any
/// other opcode, whose meaning of them we do not know; RA never (we do not recurse).
#[inline]
pub fn response_flags(query_flags: u16, authoritative: bool, truncated: bool, rcode: u8) -> u16 {
    let opcode = query_flags & OPCODE_MASK;
    let mut flags = FLAG_QR | opcode;
    if opcode == 0 {
        flags |= query_flags & (FLAG_RD | FLAG_CD);
    }
    if authoritative {
        flags |= FLAG_AA;
    }
    if truncated {
        flags |= FLAG_TC;
    }
    flags | (rcode & 0x0F) as u16
}

#[inline]
pub fn write_header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// Overwrites the header counts of an answer already written.
#[inline]
pub fn set_counts(out: &mut [u8], counts: [u16; 4]) {
    for (i, c) in counts.iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
}

#[inline]
pub fn set_flags(out: &mut [u8], flags: u16) {
    out[2..4].copy_from_slice(&flags.to_be_bytes());
}

/// Cuts a response already written in `out` down to a truncated one, in place: TC set,
/// the header and the question kept, the answer, authority and additional sections
/// dropped except the OPT record, which RFC 6891 §7 asks for in a truncated response too
/// (it carries the upper RCODE bits and our payload size). The OPT keeps no options: the
/// only one we write is NSID (RFC 5001), which the retry gets, and without it the reply
/// is never larger than the query, whose OPT has at least the same 11 bytes. The client
/// asks again over TCP (RFC 2181 §9, RFC 7766 §5). Nothing is allocated: the OPT moves
/// down to follow the question.
pub fn truncate_response(out: &mut Vec<u8>) {
    if out.len() < HEADER_LEN {
        return;
    }
    let count = |at: usize| u16::from_be_bytes([out[at], out[at + 1]]);
    let (qdcount, ancount, nscount, arcount) = (count(4), count(6), count(8), count(10));
    let flags = count(2) | FLAG_TC;
    let mut question_end = Some(HEADER_LEN);
    for _ in 0..qdcount {
        question_end = question_end
            .and_then(|at| skip_name(out, at))
            .and_then(|at| out.get(at..at + 4).map(|_| at + 4));
    }
    // Our own responses always read; were one not to, the header alone is still a
    // well-formed truncated reply.
    let (qdcount, question_end, opt) = match question_end {
        Some(end) => (qdcount, end, find_opt(out, end, ancount, nscount, arcount)),
        None => (0, HEADER_LEN, None),
    };
    let mut end = question_end;
    if let Some(opt) = &opt {
        // Owner, type, class and TTL (9 bytes for a root owner), then RDLENGTH 0.
        let fixed = opt.start..opt.start + OPT_LEN - 2;
        out.copy_within(fixed, question_end);
        end += OPT_LEN - 2;
        out[end..end + 2].copy_from_slice(&0u16.to_be_bytes());
        end += 2;
    }
    out.truncate(end);
    set_counts(out, [qdcount, 0, 0, u16::from(opt.is_some())]);
    set_flags(out, flags);
}

/// Where the OPT record of a response is, searching its additional section from the
/// records that start at `pos`. Ours is always owned by the root (RFC 6891 §6.1.2).
fn find_opt(
    packet: &[u8],
    mut pos: usize,
    ancount: u16,
    nscount: u16,
    arcount: u16,
) -> Option<std::ops::Range<usize>> {
    let before = u32::from(ancount) + u32::from(nscount);
    for i in 0..before + u32::from(arcount) {
        let (next, rtype, owner_is_root) = skip_record(packet, pos)?;
        if i >= before && rtype == TYPE_OPT && owner_is_root {
            return Some(pos..next);
        }
        pos = next;
    }
    None
}

/// A record header whose owner is a compression pointer to `owner_offset`.
#[inline]
pub fn write_record_header(out: &mut Vec<u8>, owner_offset: u16, rtype: u16, ttl: u32, rdlen: u16) {
    out.extend_from_slice(&(0xC000 | owner_offset).to_be_bytes());
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&rdlen.to_be_bytes());
}

/// Bytes of an OPT record without options: root owner, type, class, TTL, RDLENGTH.
pub const OPT_LEN: usize = 11;

/// Bytes the NSID option adds to an OPT record: code, length, then the identifier.
#[inline]
pub fn nsid_option_len(nsid: &[u8]) -> usize {
    4 + nsid.len()
}

/// The OPT record of a response: our UDP payload size, the extended RCODE bits, the
/// DO bit copied from the query (RFC 3225 §3), and, when `nsid` is given, the NSID
/// option holding it (RFC 5001 §2.3). The identifier is at most 64 bytes (checked when
/// the zone is prepared), so its length always fits.
#[inline]
pub fn write_opt(
    out: &mut Vec<u8>,
    udp_size: u16,
    extended_rcode: u8,
    dnssec_ok: bool,
    nsid: Option<&[u8]>,
) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&udp_size.to_be_bytes());
    let ttl = ((extended_rcode as u32) << 24) | if dnssec_ok { 0x8000 } else { 0 };
    out.extend_from_slice(&ttl.to_be_bytes());
    match nsid {
        Some(nsid) => {
            out.extend_from_slice(&(nsid_option_len(nsid) as u16).to_be_bytes());
            out.extend_from_slice(&OPTION_NSID.to_be_bytes());
            out.extend_from_slice(&(nsid.len() as u16).to_be_bytes());
            out.extend_from_slice(nsid);
        }
        None => out.extend_from_slice(&0u16.to_be_bytes()),
    }
}

/// Encodes a presentation-format name (`ns.example.org`, trailing dot optional) in
/// uncompressed wire format, or `None` when it is not a valid name.
pub fn encode_name(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// An RRset in answer-section form, ready to be copied after the question.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EncodedRrset {
    /// The records, each owned by a compression pointer to the question name.
    pub records: Box<[u8]>,
    pub count: u16,
}

/// TXT records for `values`, each owned by a pointer to the question name (offset 12,
/// right after the header), class IN. A value longer than 255 bytes becomes several
/// character-strings (RFC 1035 §3.3.14), so nothing a client wrote is cut off; a value
/// too long for one record (RDLENGTH is 16 bits) is left out, as is anything past the
/// 65 535th value.
pub fn encode_txt_rrset<'a>(values: impl IntoIterator<Item = &'a str>, ttl: u32) -> EncodedRrset {
    let mut out = Vec::new();
    let mut count: u16 = 0;
    for value in values {
        let bytes = value.as_bytes();
        let strings = bytes.len().div_ceil(255).max(1);
        let rdlen = bytes.len() + strings;
        if rdlen > u16::MAX as usize || count == u16::MAX {
            continue;
        }
        write_record_header(&mut out, HEADER_LEN as u16, TYPE_TXT, ttl, rdlen as u16);
        if bytes.is_empty() {
            out.push(0);
        }
        for chunk in bytes.chunks(255) {
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
        count += 1;
    }
    EncodedRrset {
        records: out.into_boxed_slice(),
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_rrset_points_at_the_question_and_splits_long_values() {
        let long = "x".repeat(300);
        let rrset = encode_txt_rrset(["ab", "", long.as_str()], 5);
        assert_eq!(rrset.count, 3);
        let r = &rrset.records;
        // "ab": pointer to offset 12, TXT, IN, TTL 5, RDLENGTH 3, one string.
        assert_eq!(
            &r[..15],
            &[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 5, 0, 3, 2, b'a', b'b']
        );
        // "": one empty character-string.
        assert_eq!(&r[15..15 + 10], &[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 5]);
        assert_eq!(&r[25..28], &[0, 1, 0]);
        // 300 bytes: strings of 255 and 45, RDLENGTH 302.
        assert_eq!(&r[28..38], &[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 5]);
        assert_eq!(&r[38..40], &302u16.to_be_bytes());
        assert_eq!(r[40], 255);
        assert_eq!(r[40 + 256], 45);
        assert_eq!(r.len(), 40 + 302);
    }

    #[test]
    fn txt_value_too_long_for_one_record_is_left_out() {
        let huge = "y".repeat(70_000);
        let rrset = encode_txt_rrset([huge.as_str(), "ok"], 1);
        assert_eq!(rrset.count, 1);
        assert_eq!(rrset.records.len(), 12 + 3);
    }
}
