//! Checks that the user published the CNAME that delegates their challenge name to us:
//! `_acme-challenge.<domain>.` must resolve, through CNAMEs, to the account's FQDN.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

/// Most CNAMEs followed from the challenge name before giving up.
const MAX_CHAIN: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(3);

/// What resolving one domain's challenge name showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The challenge name leads to the account's FQDN.
    Delegated,
    /// No CNAME at the challenge name (NXDOMAIN or no CNAME record).
    Missing { name: String },
    /// A CNAME chain that ends somewhere else.
    WrongTarget { name: String, target: String },
    /// The resolver could not be asked or did not answer usefully.
    Unresolvable { name: String, reason: String },
}

impl Finding {
    /// A sentence for the condition message saying what to do.
    pub fn explain(&self, fqdn: &str) -> String {
        match self {
            Finding::Delegated => String::new(),
            Finding::Missing { name } => {
                format!("{name} has no CNAME: publish `{name} CNAME {fqdn}` in your DNS zone")
            }
            Finding::WrongTarget { name, target } => format!(
                "{name} points to {target}, not {fqdn}: change the CNAME to `{name} CNAME {fqdn}`"
            ),
            Finding::Unresolvable { name, reason } => {
                format!("could not check {name}: {reason}")
            }
        }
    }
}

/// The challenge name for a domain: `_acme-challenge.<domain>.`
pub fn challenge_name(domain: &str) -> String {
    format!("_acme-challenge.{}.", domain.trim_end_matches('.'))
}

/// Resolves `_acme-challenge.<domain>` through `resolver` and compares where its CNAME
/// chain leads with `fqdn`.
pub async fn check(resolver: SocketAddr, domain: &str, fqdn: &str) -> Finding {
    let start = challenge_name(domain);
    let want = fqdn.trim_end_matches('.').to_ascii_lowercase();
    let mut name = start.clone();
    for _ in 0..MAX_CHAIN {
        let answered = match ask(resolver, &name).await {
            Ok(response) => match response.metadata.response_code {
                ResponseCode::NoError | ResponseCode::NXDomain => Ok(response),
                other => Err(format!("the resolver at {resolver} answered {other}")),
            },
            Err(reason) => Err(reason),
        };
        let response = match answered {
            Ok(response) => response,
            // Past the first hop we already know the chain leaves for another name.
            Err(_) if name != start => {
                return Finding::WrongTarget {
                    name: start,
                    target: name,
                };
            }
            Err(reason) => {
                return Finding::Unresolvable {
                    name: start,
                    reason,
                };
            }
        };
        let target = response.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(cname) if r.name.to_ascii().eq_ignore_ascii_case(&name) => {
                Some(cname.0.to_ascii())
            }
            _ => None,
        });
        let Some(target) = target else {
            return if name == start {
                Finding::Missing { name: start }
            } else {
                Finding::WrongTarget {
                    name: start,
                    target: name,
                }
            };
        };
        if target.trim_end_matches('.').eq_ignore_ascii_case(&want) {
            return Finding::Delegated;
        }
        name = target;
    }
    Finding::WrongTarget {
        name: start,
        target: format!("a chain of more than {MAX_CHAIN} CNAMEs"),
    }
}

/// One CNAME query, over UDP, retried over TCP when truncated.
async fn ask(resolver: SocketAddr, name: &str) -> Result<Message, String> {
    let qname = Name::from_str(name).map_err(|e| format!("{name} is not a DNS name: {e}"))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname, RecordType::CNAME));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let id = query.metadata.id;

    let udp = async {
        let bind: SocketAddr = if resolver.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal address");
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(resolver).await?;
        socket.send(&bytes).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let len = socket.recv(&mut buf).await?;
            if let Ok(message) = Message::from_vec(&buf[..len])
                && message.metadata.id == id
            {
                return Ok::<_, std::io::Error>(message);
            }
        }
    };
    let message = tokio::time::timeout(TIMEOUT, udp)
        .await
        .map_err(|_| format!("no answer from the resolver at {resolver} within {TIMEOUT:?}"))?
        .map_err(|e| format!("cannot query the resolver at {resolver}: {e}"))?;
    if !message.metadata.truncation {
        return Ok(message);
    }
    let tcp = async {
        let mut stream = TcpStream::connect(resolver).await?;
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await?;
        stream.write_all(&bytes).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, tcp)
        .await
        .map_err(|_| format!("no TCP answer from the resolver at {resolver}"))?
        .map_err(|e| format!("cannot query the resolver at {resolver} over TCP: {e}"))?;
    Message::from_vec(&buf).map_err(|e| format!("undecodable answer from {resolver}: {e}"))
}
