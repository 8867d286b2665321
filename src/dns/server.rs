//! The UDP and TCP servers around the answer function.
//!
//! UDP runs on plain OS threads, one socket each, bound with SO_REUSEPORT so the
//! kernel spreads queries across them: no async machinery between the socket and the
//! answer, which is where the stock server spends its time. TCP (RFC 7766) runs on the
//! tokio runtime; it carries little traffic (truncated retries, checks).

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::{Transport, Zone, answer, metrics::DnsMetrics};
use crate::index::AccountIndex;

/// How long an idle TCP connection is kept (RFC 7766 §6.2.3 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; more wait in the accept queue.
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
    /// serves TCP until dropped.
    pub fn serve(
        self,
        zone: Arc<Zone>,
        index: Arc<AccountIndex>,
        metrics: DnsMetrics,
        stop: Arc<AtomicBool>,
    ) -> io::Result<impl Future<Output = ()>> {
        for (i, socket) in self.udp.into_iter().enumerate() {
            let (zone, index, metrics, stop) =
                (zone.clone(), index.clone(), metrics.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || serve_udp(socket, &zone, &index, &metrics, &stop))?;
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
    let slots = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (zone, index, metrics) = (zone.clone(), index.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_tcp_connection(stream, &zone, &index, &metrics).await {
                debug!(%peer, error = %e, "DNS TCP connection ended");
            }
            drop(permit);
        });
    }
}

/// Answers length-prefixed queries on one connection until the client closes it or it
/// stays idle for [`TCP_IDLE`].
async fn serve_tcp_connection(
    mut stream: TcpStream,
    zone: &Zone,
    index: &AccountIndex,
    metrics: &DnsMetrics,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut local = metrics.local(Transport::Tcp);
    let mut packet = vec![0u8; u16::MAX as usize];
    let mut out = Vec::with_capacity(4096);
    let result = loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Err(_) => break Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Ok(Err(e)) => break Err(e),
            Ok(Ok(_)) => {}
        }
        let len = u16::from_be_bytes(len) as usize;
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet[..len])).await {
            Err(_) => break Ok(()),
            Ok(Err(e)) => break Err(e),
            Ok(Ok(_)) => {}
        }
        let started = Instant::now();
        let answered = answer(&packet[..len], zone, index, Transport::Tcp, &mut out);
        local.record(answered, started.elapsed().as_secs_f64());
        let Some(_) = answered else {
            // Nothing sensible to say to a peer that sends responses or runts.
            break Ok(());
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
    };
    local.flush();
    result
}
