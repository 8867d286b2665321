//! The zone we are authoritative for, prepared once at start: apex records (SOA, NS),
//! addresses of in-zone name servers, and static records from configuration.

use std::{collections::HashMap, net::IpAddr};

use crate::index::{Label, ReservedLabels};
use crate::wire::{self, TYPE_A, TYPE_AAAA, TYPE_CAA, TYPE_NS, TYPE_SOA, TYPE_TXT};

/// What the operator configures.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The zone apex, e.g. `auth.example.org`.
    pub apex: String,
    /// Name servers listed in NS at the apex; the first is the SOA MNAME.
    pub nameservers: Vec<String>,
    /// Addresses answered for name servers inside the zone (A and AAAA).
    pub nameserver_addresses: Vec<IpAddr>,
    /// SOA RNAME in name form, e.g. `hostmaster.auth.example.org`.
    pub hostmaster: String,
    pub serial: u32,
    /// TTL of SOA and NS records and of static records.
    pub ttl: u32,
    /// SOA MINIMUM: the TTL of negative answers (RFC 2308 §4).
    pub negative_ttl: u32,
    /// Static records, `NAME TYPE DATA` (e.g. `api A 192.0.2.10`).
    pub records: Vec<String>,
    /// This server's identity, answered in NSID (RFC 5001) and to CHAOS TXT queries for
    /// `id.server.` and `hostname.bind.` (RFC 4892), so an operator can tell which
    /// replica answered. Empty turns both off.
    pub identity: String,
}

impl ZoneConfig {
    /// Defaults that work for a single name server `ns.<apex>`.
    pub fn new(apex: &str) -> Self {
        let apex = apex.trim_end_matches('.').to_ascii_lowercase();
        Self {
            nameservers: vec![format!("ns.{apex}")],
            nameserver_addresses: Vec::new(),
            hostmaster: format!("hostmaster.{apex}"),
            serial: 1,
            ttl: 3600,
            negative_ttl: 60,
            records: Vec::new(),
            identity: String::new(),
            apex,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZoneError {
    #[error("zone {0:?} is not a valid DNS name")]
    BadApex(String),
    #[error("name {name:?} is not a valid DNS name ({what})")]
    BadName { name: String, what: &'static str },
    #[error(
        "name {name:?} is outside the zone {apex}: use a name relative to the zone (\"api\", \"@\") or one ending in \".{apex}.\""
    )]
    OutsideZone { name: String, apex: String },
    #[error(
        "static record {0:?} is not `NAME TYPE DATA` with TYPE one of A, AAAA, TXT, CAA (e.g. \"api A 192.0.2.10\", \"@ CAA 0 issue \\\"letsencrypt.org\\\"\")"
    )]
    BadRecord(String),
    #[error("at least one name server is needed for the NS records at the apex")]
    NoNameservers,
    #[error(
        "the server identity {0:?} is not usable in NSID and CHAOS TXT answers: set --nsid (KUBE_ACME_DNS_NSID) to at most {MAX_IDENTITY_LEN} printable ASCII characters, e.g. the pod name, or leave it empty to turn them off"
    )]
    BadIdentity(String),
}

/// Longest server identity. RFC 5001 sets no bound, but the identity rides in every
/// answer that asks for it, so it is kept short: a pod name (at most 63 characters
/// for one a Deployment names) fits.
pub const MAX_IDENTITY_LEN: usize = 64;

/// Record sets at one name, each record's RDATA already encoded.
#[derive(Debug, Default)]
pub struct Node {
    pub rrsets: Vec<RrSet>,
}

#[derive(Debug)]
pub struct RrSet {
    pub rtype: u16,
    pub ttl: u32,
    pub rdatas: Vec<Vec<u8>>,
}

impl Node {
    pub fn get(&self, rtype: u16) -> Option<&RrSet> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }

    fn add(&mut self, rtype: u16, ttl: u32, rdata: Vec<u8>) {
        match self.rrsets.iter_mut().find(|r| r.rtype == rtype) {
            Some(set) => {
                if !set.rdatas.contains(&rdata) {
                    set.rdatas.push(rdata);
                }
            }
            None => self.rrsets.push(RrSet {
                rtype,
                ttl,
                rdatas: vec![rdata],
            }),
        }
    }
}

/// The prepared zone.
#[derive(Debug)]
pub struct Zone {
    /// Apex labels, lowercase, leftmost first.
    pub apex_labels: Vec<Vec<u8>>,
    pub apex: Node,
    /// Names below the apex from configuration, keyed by their lowercase wire labels
    /// relative to the apex (no terminating root label). Holds empty non-terminals as
    /// empty nodes, so a name above a configured one answers NODATA, not NXDOMAIN.
    pub names: HashMap<Box<[u8]>, Node>,
    /// SOA RDATA, used in the authority section of negative answers.
    pub soa_rdata: Vec<u8>,
    pub negative_ttl: u32,
    /// The server identity's bytes, the NSID option's data; empty when there is none.
    pub nsid: Box<[u8]>,
    /// The CHAOS TXT record answering `id.server.` and `hostname.bind.`, owned by a
    /// pointer to the question name; empty when there is no identity.
    pub identity_txt: Box<[u8]>,
}

impl Zone {
    pub fn new(config: &ZoneConfig) -> Result<Self, ZoneError> {
        let apex_wire = wire::encode_name(&config.apex)
            .ok_or_else(|| ZoneError::BadApex(config.apex.clone()))?;
        let apex_labels = split_labels(&apex_wire);
        if config.nameservers.is_empty() {
            return Err(ZoneError::NoNameservers);
        }
        let mut zone = Zone {
            apex_labels,
            apex: Node::default(),
            names: HashMap::new(),
            soa_rdata: Vec::new(),
            negative_ttl: config.negative_ttl,
            nsid: Box::default(),
            identity_txt: Box::default(),
        };
        zone.set_identity(&config.identity)?;

        let mname = absolute_name(&config.nameservers[0], "name server")?;
        let rname = absolute_name(&config.hostmaster, "hostmaster")?;
        let mut soa = mname;
        soa.extend_from_slice(&rname);
        for v in [config.serial, 7200, 3600, 1_209_600, config.negative_ttl] {
            soa.extend_from_slice(&v.to_be_bytes());
        }
        zone.soa_rdata = soa.clone();
        zone.apex.add(TYPE_SOA, config.ttl, soa);

        for ns in &config.nameservers {
            let wire_name = absolute_name(ns, "name server")?;
            zone.apex.add(TYPE_NS, config.ttl, wire_name.clone());
            if let Some(relative) = zone.relative_key(&wire_name) {
                for addr in &config.nameserver_addresses {
                    let (rtype, rdata) = address_rdata(addr);
                    zone.node_mut(&relative).add(rtype, config.ttl, rdata);
                }
            }
        }

        for record in &config.records {
            let (owner, rtype, rdata) = parse_record(record, &config.apex)?;
            let owner_wire = wire::encode_name(&owner).ok_or_else(|| ZoneError::BadName {
                name: owner.clone(),
                what: "record owner",
            })?;
            let relative =
                zone.relative_key(&owner_wire)
                    .ok_or_else(|| ZoneError::OutsideZone {
                        name: owner.clone(),
                        apex: config.apex.clone(),
                    })?;
            zone.node_mut(&relative).add(rtype, config.ttl, rdata);
        }
        Ok(zone)
    }

    /// The identity's bytes, when there is one.
    #[inline]
    pub fn nsid(&self) -> Option<&[u8]> {
        (!self.nsid.is_empty()).then_some(&*self.nsid)
    }

    /// Checks the identity and prepares what answers carry of it, once, so writing it
    /// into an answer is a copy.
    fn set_identity(&mut self, identity: &str) -> Result<(), ZoneError> {
        if identity.is_empty() {
            return Ok(());
        }
        // Printable ASCII reads the same in every tool that shows it (dig prints NSID
        // as hex and as text).
        if identity.len() > MAX_IDENTITY_LEN
            || !identity.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            return Err(ZoneError::BadIdentity(identity.to_string()));
        }
        let bytes = identity.as_bytes();
        self.nsid = bytes.into();
        // One TXT record, class CH, TTL 0 (the answer is about this replica only, so
        // nothing should cache it), one character-string (RFC 1035 §3.3.14).
        let mut txt = Vec::with_capacity(12 + 1 + bytes.len());
        txt.extend_from_slice(&(0xC000 | wire::HEADER_LEN as u16).to_be_bytes());
        txt.extend_from_slice(&TYPE_TXT.to_be_bytes());
        txt.extend_from_slice(&wire::CLASS_CH.to_be_bytes());
        txt.extend_from_slice(&0u32.to_be_bytes());
        txt.extend_from_slice(&(1 + bytes.len() as u16).to_be_bytes());
        txt.push(bytes.len() as u8);
        txt.extend_from_slice(bytes);
        self.identity_txt = txt.into();
        Ok(())
    }

    /// The single labels right below the apex that the zone itself uses (a name server,
    /// a static record, or a name above one), so no account may take them.
    pub fn reserved_labels(&self) -> ReservedLabels {
        self.names
            .keys()
            .filter(|key| {
                key.first()
                    .is_some_and(|&len| len as usize + 1 == key.len())
            })
            .filter_map(|key| Label::new(&key[1..]))
            .collect()
    }

    /// The node for `relative` (lowercase wire labels; empty = apex), creating it and
    /// the empty non-terminals above it.
    fn node_mut(&mut self, relative: &[u8]) -> &mut Node {
        if relative.is_empty() {
            return &mut self.apex;
        }
        // Every suffix of the relative name that starts at a label boundary exists.
        let mut at = 0;
        while at < relative.len() {
            let len = relative[at] as usize;
            at += 1 + len;
            if at < relative.len() {
                self.names.entry(relative[at..].into()).or_default();
            }
        }
        self.names.entry(relative.into()).or_default()
    }

    /// Lowercase wire labels of `name` relative to the apex, or `None` when outside.
    fn relative_key(&self, name_wire: &[u8]) -> Option<Vec<u8>> {
        let labels = split_labels(name_wire);
        let (n, k) = (labels.len(), self.apex_labels.len());
        if n < k || labels[n - k..] != self.apex_labels[..] {
            return None;
        }
        let mut key = Vec::new();
        for label in &labels[..n - k] {
            key.push(label.len() as u8);
            key.extend_from_slice(label);
        }
        Some(key)
    }
}

fn split_labels(wire_name: &[u8]) -> Vec<Vec<u8>> {
    let mut labels = Vec::new();
    let mut at = 0;
    while at < wire_name.len() && wire_name[at] != 0 {
        let len = wire_name[at] as usize;
        labels.push(wire_name[at + 1..at + 1 + len].to_ascii_lowercase());
        at += 1 + len;
    }
    labels
}

fn absolute_name(name: &str, what: &'static str) -> Result<Vec<u8>, ZoneError> {
    wire::encode_name(name).ok_or_else(|| ZoneError::BadName {
        name: name.to_string(),
        what,
    })
}

fn address_rdata(addr: &IpAddr) -> (u16, Vec<u8>) {
    match addr {
        IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
        IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
    }
}

/// Parses `NAME TYPE DATA`. NAME is `@`, relative to the apex, or absolute (ends in a
/// dot). Returns the absolute owner, the type, and the encoded RDATA.
fn parse_record(record: &str, apex: &str) -> Result<(String, u16, Vec<u8>), ZoneError> {
    let bad = || ZoneError::BadRecord(record.to_string());
    let mut parts = record.split_whitespace();
    let owner = parts.next().ok_or_else(bad)?;
    let rtype = parts.next().ok_or_else(bad)?.to_ascii_uppercase();
    let data: Vec<&str> = parts.collect();
    let owner = match owner {
        "@" => apex.to_string(),
        o if o.ends_with('.') => o.trim_end_matches('.').to_string(),
        o => format!("{o}.{apex}"),
    };
    let rdata = match (rtype.as_str(), data.as_slice()) {
        ("A", [ip]) => match ip.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(_) => return Err(bad()),
        },
        ("AAAA", [ip]) => match ip.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
            IpAddr::V4(_) => return Err(bad()),
        },
        ("TXT", strings) if !strings.is_empty() => {
            let text = strings.join(" ");
            let text = unquote(&text).ok_or_else(bad)?;
            let mut rdata = Vec::new();
            for chunk in text.as_bytes().chunks(255) {
                rdata.push(chunk.len() as u8);
                rdata.extend_from_slice(chunk);
            }
            (TYPE_TXT, rdata)
        }
        ("CAA", [flags, tag, value @ ..]) if !value.is_empty() => {
            let flags: u8 = flags.parse().map_err(|_| bad())?;
            let value = unquote(&value.join(" ")).ok_or_else(bad)?;
            if tag.is_empty() || tag.len() > 15 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad());
            }
            let mut rdata = vec![flags, tag.len() as u8];
            rdata.extend_from_slice(tag.as_bytes());
            rdata.extend_from_slice(value.as_bytes());
            (TYPE_CAA, rdata)
        }
        _ => return Err(bad()),
    };
    Ok((owner, rdata.0, rdata.1))
}

/// `"text"` → `text`; unquoted text is taken as it is.
fn unquote(text: &str) -> Option<String> {
    match text.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').map(str::to_string),
        None => Some(text.to_string()),
    }
}
