//! DNS queries sent by the test itself and decoded with hickory-proto, an implementation
//! independent of ours, so assertions are on parsed flags and records, not on a tool's
//! text.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    str::FromStr,
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A query as a stub resolver sends it: `recursion` sets RD, `edns` adds OPT with that
/// UDP payload size.
pub fn query(name: &str, rtype: RecordType, recursion: bool, edns: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.id = rand_id();
    message.metadata.recursion_desired = recursion;
    message.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message
}

fn rand_id() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u16
}

/// Sends raw bytes over UDP; returns the raw reply.
pub fn udp_bytes(server: SocketAddr, packet: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    // From loopback to loopback; any other server is a node address, asked from inside
    // the node's network namespace (`node::in_node`).
    let local = if server.ip().is_loopback() {
        server.ip()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((local, 0))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(server)?;
    socket.send(packet)?;
    let mut buf = vec![0u8; 65535];
    let len = socket.recv(&mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// One exchange over UDP, the reply decoded and matched to the query's id.
pub fn udp(server: SocketAddr, query: &Message, timeout: Duration) -> std::io::Result<Message> {
    let reply = udp_bytes(server, &query.to_vec().unwrap(), timeout)?;
    decode(query, &reply)
}

/// One exchange over TCP (RFC 1035 §4.2.2: two-byte length prefix).
pub fn tcp(server: SocketAddr, query: &Message, timeout: Duration) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let bytes = query.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply)?;
    decode(query, &reply)
}

fn decode(query: &Message, reply: &[u8]) -> std::io::Result<Message> {
    let message = Message::from_vec(reply)
        .map_err(|e| std::io::Error::other(format!("undecodable reply {reply:02x?}: {e}")))?;
    if message.metadata.id != query.metadata.id {
        return Err(std::io::Error::other(format!(
            "reply id {} for query id {}",
            message.metadata.id, query.metadata.id
        )));
    }
    Ok(message)
}

/// The TXT strings in a reply's answer section, sorted.
pub fn txt_strings(reply: &Message) -> Vec<String> {
    let mut values: Vec<String> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    values.sort();
    values
}

/// The TXT values `server` answers for `name`, asked over UDP and again over TCP when
/// the answer is truncated (as a resolver does), sorted; None unless NOERROR.
pub fn txt_values(server: SocketAddr, name: &str) -> Option<Vec<String>> {
    let query = query(name, RecordType::TXT, false, Some(1232));
    let mut reply = udp(server, &query, TIMEOUT).ok()?;
    if reply.metadata.truncation {
        reply = tcp(server, &query, TIMEOUT).ok()?;
    }
    (reply.metadata.response_code == ResponseCode::NoError).then(|| txt_strings(&reply))
}

/// Whether `server` answers `zone`'s SOA: authoritatively (`recursion` false) or
/// by resolving it (`recursion` true).
pub fn answers_soa(server: SocketAddr, zone: &str, recursion: bool) -> bool {
    let Ok(reply) = udp(
        server,
        &query(zone, RecordType::SOA, recursion, None),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    reply.metadata.response_code == ResponseCode::NoError
        && (recursion || reply.metadata.authoritative)
        && reply
            .answers
            .iter()
            .any(|r| r.record_type() == RecordType::SOA && r.name == Name::from_str(zone).unwrap())
}
