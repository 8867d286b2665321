//! The UDP and TCP servers around the answer function.
//!
//! UDP runs on plain OS threads, one socket each, bound with SO_REUSEPORT so the
//! kernel spreads queries across them: no async machinery between the socket and the
//! answer, which is where the stock server spends its time. TCP (RFC 7766) runs on the
//! tokio runtime; it carries little traffic (truncated retries, checks).

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore},
};
use tracing::{debug, warn};

use super::{
    Transport, Zone, answer,
    metrics::DnsMetrics,
    rrl::{RateLimiter, RrlConfig, Verdict},
};
use crate::index::AccountIndex;

/// How long an idle TCP connection is kept (RFC 7766 §6.2.3 suggests seconds), and how
/// long a query or an answer may take to cross it.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once. A new one beyond this closes the connection that has
/// waited longest for its client (RFC 7766 §6.2.3), so idle clients cannot lock others out.
const TCP_MAX_CONNECTIONS: usize = 1024;

/// Sockets bound for the responder: `local_addr` is the real address even when the
/// configured port was 0.
pub struct DnsSockets {
    pub local_addr: SocketAddr,
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
}

impl DnsSockets {
    /// Binds `threads` UDP sockets and one TCP listener on `addr`.
    pub fn bind(addr: SocketAddr, threads: usize) -> io::Result<Self> {
        let first = udp_socket(addr)?;
        let local_addr = first.local_addr()?;
        let mut udp = vec![first];
        for _ in 1..threads.max(1) {
            udp.push(udp_socket(local_addr)?);
        }
        let tcp = Socket::new(
            Domain::for_address(local_addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        tcp.set_reuse_address(true)?;
        tcp.set_nonblocking(true)?;
        tcp.bind(&local_addr.into())?;
        tcp.listen(1024)?;
        Ok(Self {
            local_addr,
            udp,
            tcp: tcp.into(),
        })
    }

    /// Starts answering. UDP threads stop when `stop` is set; the returned future
    /// serves TCP until dropped. UDP answers are rate limited as `rrl` says; TCP answers
    /// never are.
    pub fn serve(
        self,
        zone: Arc<Zone>,
        index: Arc<AccountIndex>,
        metrics: DnsMetrics,
        rrl: RrlConfig,
        stop: Arc<AtomicBool>,
    ) -> io::Result<impl Future<Output = ()>> {
        // One table for all UDP threads: a source's queries reach every one of them.
        let rrl = Arc::new(RateLimiter::new(rrl));
        for (i, socket) in self.udp.into_iter().enumerate() {
            let (zone, index, metrics, stop) =
                (zone.clone(), index.clone(), metrics.clone(), stop.clone());
            let rrl = rrl.clone();
            thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || serve_udp(socket, &zone, &index, &metrics, &rrl, &stop))?;
        }
        let listener = TcpListener::from_std(self.tcp)?;
        Ok(serve_tcp(listener, zone, index, metrics))
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    // Room for bursts: a CA validating from several vantage points at once.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    // Wake up now and then to flush metrics and notice `stop`.
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(socket.into())
}

fn serve_udp(
    socket: std::net::UdpSocket,
    zone: &Zone,
    index: &AccountIndex,
    metrics: &DnsMetrics,
    rrl: &RateLimiter,
    stop: &AtomicBool,
) {
    let mut local = metrics.local(Transport::Udp);
    // A query larger than this is malformed for us anyway; recv truncates it and the
    // parser answers FORMERR or drops it.
    let mut packet = [0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut packet) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                local.flush();
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; keep going.
                debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let started = Instant::now();
        let answered = answer(&packet[..len], zone, index, Transport::Udp, &mut out);
        // Response rate limiting (rrl.rs): the answer goes out whole, cut down to a
        // truncated reply in `out`, or not at all.
        if answered.is_some() {
            let verdict = rrl.apply(peer.ip(), started, &mut out);
            local.record_rrl(verdict);
            if verdict == Verdict::Drop {
                local.record(answered, started.elapsed().as_secs_f64());
                continue;
            }
        }
        if answered.is_some()
            && let Err(e) = socket.send_to(&out, peer)
        {
            debug!(%peer, error = %e, "UDP send failed");
        }
        local.record(answered, started.elapsed().as_secs_f64());
    }
    local.flush();
}

async fn serve_tcp(
    listener: TcpListener,
    zone: Arc<Zone>,
    index: Arc<AccountIndex>,
    metrics: DnsMetrics,
) {
    serve_tcp_with(
        listener,
        zone,
        index,
        metrics,
        TCP_MAX_CONNECTIONS,
        TCP_IDLE,
    )
    .await
}

async fn serve_tcp_with(
    listener: TcpListener,
    zone: Arc<Zone>,
    index: Arc<AccountIndex>,
    metrics: DnsMetrics,
    max_connections: usize,
    idle: Duration,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let waiting = Arc::new(Waiting::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Full: close the connection idle longest; its slot comes back at once.
                // If every connection is mid-answer, wait for one to finish.
                if waiting.close_oldest() {
                    debug!(%peer, "TCP connections at the limit; closed the one idle longest");
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                permit
            }
        };
        let (zone, index, metrics, waiting) = (
            zone.clone(),
            index.clone(),
            metrics.clone(),
            waiting.clone(),
        );
        tokio::spawn(async move {
            let connection = Connection {
                zone: &zone,
                index: &index,
                metrics: &metrics,
                waiting: &waiting,
                idle,
            };
            if let Err(e) = connection.serve(stream).await {
                debug!(%peer, error = %e, "DNS TCP connection ended");
            }
            drop(permit);
        });
    }
}

/// The TCP connections now waiting for their client (for a query, or the rest of one),
/// in the order they started waiting.
#[derive(Default)]
struct Waiting {
    next: AtomicU64,
    queue: Mutex<BTreeMap<u64, Arc<Notify>>>,
}

impl Waiting {
    fn queue(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters the queue; `close` is notified if this connection is to be closed.
    fn enter(&self, close: &Arc<Notify>) -> u64 {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.queue().insert(ticket, close.clone());
        ticket
    }

    fn leave(&self, ticket: u64) {
        self.queue().remove(&ticket);
    }

    /// Tells the connection that has waited longest to close; false if none waits.
    fn close_oldest(&self) -> bool {
        let oldest = self.queue().pop_first();
        oldest.map(|(_, close)| close.notify_one()).is_some()
    }
}

struct Connection<'a> {
    zone: &'a Zone,
    index: &'a AccountIndex,
    metrics: &'a DnsMetrics,
    waiting: &'a Waiting,
    idle: Duration,
}

impl Connection<'_> {
    /// Answers length-prefixed queries, in order, until the client closes the connection,
    /// leaves it idle for `idle`, or it is closed to make room for a new one.
    async fn serve(&self, mut stream: TcpStream) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut local = self.metrics.local(Transport::Tcp);
        let close = Arc::new(Notify::new());
        // Grown to the largest query seen, not 64 KiB up front: idle connections are
        // what a server holds most of.
        let mut packet = Vec::new();
        let mut out = Vec::new();
        let result = loop {
            let ticket = self.waiting.enter(&close);
            let read = tokio::select! {
                read = tokio::time::timeout(self.idle, read_query(&mut stream, &mut packet)) => read,
                () = close.notified() => break Ok(()),
            };
            self.waiting.leave(ticket);
            match read {
                Err(_) | Ok(Ok(false)) => break Ok(()),
                Ok(Err(e)) => break Err(e),
                Ok(Ok(true)) => {}
            }
            let started = Instant::now();
            let answered = answer(&packet, self.zone, self.index, Transport::Tcp, &mut out);
            local.record(answered, started.elapsed().as_secs_f64());
            let Some(_) = answered else {
                // Nothing sensible to say to a peer that sends responses or runts.
                break Ok(());
            };
            let length = (out.len() as u16).to_be_bytes();
            let write = async {
                stream.write_all(&length).await?;
                stream.write_all(&out).await
            };
            match tokio::time::timeout(self.idle, write).await {
                Err(_) => break Ok(()),
                Ok(Err(e)) => break Err(e),
                Ok(Ok(())) => {}
            }
        };
        local.flush();
        result
    }
}

/// Reads one length-prefixed query into `packet`; false at a clean end of the stream.
async fn read_query(stream: &mut TcpStream, packet: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    packet.resize(u16::from_be_bytes(len) as usize, 0);
    stream.read_exact(packet).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Edns, Message, Query},
        rr::{Name, RecordType},
    };
    use prometheus::Registry;

    use super::*;
    use crate::dns::ZoneConfig;

    /// A TCP responder for `auth.example.test` on loopback with `max` connections.
    async fn responder(max: usize, idle: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let zone = Arc::new(Zone::new(&ZoneConfig::new("auth.example.test")).unwrap());
        let metrics = DnsMetrics::new(&Registry::new()).unwrap();
        let index = Arc::new(AccountIndex::new(1));
        tokio::spawn(serve_tcp_with(listener, zone, index, metrics, max, idle));
        addr
    }

    /// The apex SOA query, with an OPT record.
    fn query(id: u16) -> Vec<u8> {
        let mut query = Message::query();
        query.metadata.id = id;
        query.add_query(Query::query(
            Name::from_ascii("auth.example.test.").unwrap(),
            RecordType::SOA,
        ));
        query.set_edns(Edns::new());
        query.to_vec().unwrap()
    }

    fn framed_query(id: u16) -> Vec<u8> {
        let bytes = query(id);
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        framed
    }

    /// Reads one framed answer; its id.
    async fn answer_id(stream: &mut TcpStream) -> io::Result<u16> {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut answer).await?;
        Ok(Message::from_vec(&answer).unwrap().metadata.id)
    }

    /// True when the server has closed `stream` (EOF or reset within a second).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_new_connection_at_the_limit_closes_the_one_idle_longest() {
        let addr = responder(4, Duration::from_secs(60)).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
            // Each starts waiting after the one before.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One of them half-sends a query: it is waiting too, but began last.
        let framed = framed_query(7);
        idle[3].write_all(&framed[..3]).await.unwrap();

        let started = Instant::now();
        let mut new = TcpStream::connect(addr).await.unwrap();
        new.write_all(&framed_query(1)).await.unwrap();
        assert_eq!(answer_id(&mut new).await.unwrap(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered at once"
        );
        assert!(
            closed(&mut idle[0]).await,
            "the oldest idle connection is closed"
        );

        // The others are still served, the half-sent query included.
        idle[3].write_all(&framed[3..]).await.unwrap();
        assert_eq!(answer_id(&mut idle[3]).await.unwrap(), 7);
        idle[1].write_all(&framed_query(2)).await.unwrap();
        assert_eq!(answer_id(&mut idle[1]).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn pipelined_queries_are_answered_in_order_on_one_connection() {
        let addr = responder(4, Duration::from_secs(60)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut all = Vec::new();
        for id in 1..=20 {
            all.extend_from_slice(&framed_query(id));
        }
        stream.write_all(&all).await.unwrap();
        for id in 1..=20 {
            assert_eq!(answer_id(&mut stream).await.unwrap(), id);
        }
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_idle_time() {
        let addr = responder(4, Duration::from_millis(300)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Half a query, then nothing.
        silent.write_all(&framed_query(3)[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(closed(&mut silent).await);
    }

    /// UDP and TCP as `serve` starts them, on 127.0.0.1 with one UDP thread; the UDP
    /// thread stops when the returned guard is dropped.
    async fn udp_and_tcp_responder(rrl: RrlConfig) -> (SocketAddr, StopOnDrop) {
        let sockets = DnsSockets::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = sockets.local_addr;
        let zone = Arc::new(Zone::new(&ZoneConfig::new("auth.example.test")).unwrap());
        let metrics = DnsMetrics::new(&Registry::new()).unwrap();
        let index = Arc::new(AccountIndex::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let tcp = sockets
            .serve(zone, index, metrics, rrl, stop.clone())
            .unwrap();
        tokio::spawn(tcp);
        (addr, StopOnDrop(stop))
    }

    struct StopOnDrop(Arc<AtomicBool>);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Every reply `socket` receives until none has come for half a second.
    async fn replies(socket: &tokio::net::UdpSocket) -> Vec<Message> {
        let mut all = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(received) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buffer)).await
        {
            let len = received.unwrap();
            all.push(Message::from_vec(&buffer[..len]).unwrap());
        }
        all
    }

    /// The whole SOA answer, or (with `truncated`) the truncated reply of RRL: the
    /// question and the OPT record, nothing else.
    fn assert_reply(reply: &Message, truncated: bool) {
        assert_eq!(reply.metadata.truncation, truncated, "{reply:?}");
        assert_eq!(reply.queries.len(), 1, "{reply:?}");
        assert!(reply.edns.is_some(), "the OPT is kept: {reply:?}");
        let records = reply.answers.len() + reply.authorities.len();
        assert_eq!(records, usize::from(!truncated), "{reply:?}");
    }

    #[tokio::test]
    async fn udp_answers_over_the_rate_are_truncated_or_dropped_per_source_prefix() {
        let rrl = RrlConfig {
            rate: 1,
            burst: 5,
            slip: 2,
            ..RrlConfig::DEFAULT
        };
        let (addr, _stop) = udp_and_tcp_responder(rrl).await;
        let limited = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        limited.connect(addr).await.unwrap();
        // 127.0.0.0/8 is all loopback on Linux: 127.0.1.1 is another /24.
        let other = tokio::net::UdpSocket::bind("127.0.1.1:0").await.unwrap();
        other.connect(addr).await.unwrap();

        let started = Instant::now();
        for id in 0..100 {
            limited.send(&query(id)).await.unwrap();
        }
        // Queued behind the burst, so answered while the first /24 is limited.
        other.send(&query(1000)).await.unwrap();
        let (from_limited, from_other) = tokio::join!(replies(&limited), replies(&other));
        // Time the bucket may have refilled in (1 answer a second).
        let seconds = started.elapsed().as_secs() as usize + 1;

        let (whole, truncated): (Vec<&Message>, Vec<&Message>) =
            from_limited.iter().partition(|r| !r.metadata.truncation);
        for reply in &whole {
            assert_reply(reply, false);
        }
        for reply in &truncated {
            assert_reply(reply, true);
        }
        assert!(
            (5..=5 + seconds).contains(&whole.len()),
            "the burst answered whole, then about the rate: {} of 100",
            whole.len()
        );
        // Of the other 95 or so, every second one slips and the rest are dropped.
        let over = 100 - whole.len();
        assert!(
            truncated.len().abs_diff(over / 2) <= 1 + seconds,
            "{} truncated of {over} over the limit",
            truncated.len()
        );
        assert!(whole.len() + truncated.len() < 100, "some dropped");

        // Another /24 is answered as usual.
        assert_eq!(from_other.len(), 1);
        assert_eq!(from_other[0].metadata.id, 1000);
        assert_reply(&from_other[0], false);

        // A truncated query asked again over TCP gets the whole answer: TCP is not
        // limited.
        let id = truncated[0].metadata.id;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&framed_query(id)).await.unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut bytes = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut bytes).await.unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, id);
        assert_reply(&reply, false);
    }

    #[tokio::test]
    async fn udp_is_not_limited_with_rate_zero() {
        let (addr, _stop) = udp_and_tcp_responder(RrlConfig::OFF).await;
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        for id in 0..100 {
            client.send(&query(id)).await.unwrap();
        }
        let all = replies(&client).await;
        assert_eq!(all.len(), 100);
        for reply in &all {
            assert_reply(reply, false);
        }
    }
}
