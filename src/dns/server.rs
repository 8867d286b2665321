//! The UDP and TCP servers around the answer function.
//!
//! UDP runs on plain OS threads, one socket each, bound with SO_REUSEPORT so the
//! kernel spreads queries across them: no async machinery between the socket and the
//! answer, which is where the stock server spends its time, and queries read and
//! answers sent in batches, one system call for many. TCP (RFC 7766) runs on the
//! tokio runtime; it carries little traffic (truncated retries, checks).
//!
//! A wildcard bind answers on every address of the host; each UDP answer leaves from the
//! address its query was sent to (see `UdpBatch`). `0.0.0.0` brings `[::]` along, so
//! IPv6 is served next to IPv4.

use std::{
    collections::BTreeMap,
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    ptr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore},
};
use tracing::{debug, info, warn};

use super::{
    Transport, Zone, answer,
    metrics::DnsMetrics,
    metrics::TcpClosed,
    rrl::{RateLimiter, RrlConfig, Verdict},
};
use crate::index::AccountIndex;

/// How long an idle TCP connection is kept (RFC 7766 §6.2.3 suggests seconds), and how
/// long a query or an answer may take to cross it.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once. A new one beyond this closes the connection that has
/// waited longest for its client (RFC 7766 §6.2.3), so idle clients cannot lock others out.
const TCP_MAX_CONNECTIONS: usize = 1024;
/// TCP connections one source (an IPv4 address, an IPv6 /64) may hold at once: room for
/// a resolver farm behind one address, while one host cannot take more than a sixteenth
/// of the connections.
const TCP_MAX_PER_SOURCE: usize = 64;

/// The TCP limits (constants in production, small in tests).
#[derive(Clone, Copy, Debug)]
struct TcpSettings {
    max_connections: usize,
    max_per_source: usize,
    idle: Duration,
}

const TCP_SETTINGS: TcpSettings = TcpSettings {
    max_connections: TCP_MAX_CONNECTIONS,
    max_per_source: TCP_MAX_PER_SOURCE,
    idle: TCP_IDLE,
};

/// Sockets bound for the responder: `local_addr` is the real address even when the
/// configured port was 0.
pub struct DnsSockets {
    pub local_addr: SocketAddr,
    /// `[::]` on the same port, when `local_addr` is `0.0.0.0` and the host has IPv6.
    pub ipv6_addr: Option<SocketAddr>,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
}

impl DnsSockets {
    /// Binds `threads` UDP sockets and one TCP listener on `addr`. When `addr` is
    /// `0.0.0.0:<port>`, binds as many again on `[::]:<port>`, IPv6 only, unless the host
    /// has no IPv6.
    pub fn bind(addr: SocketAddr, threads: usize) -> io::Result<Self> {
        // Port 0 is chosen by the first bind, and the other sockets need that same port,
        // which something else may hold: then choose again.
        let mut attempts = if addr.port() == 0 { 8 } else { 1 };
        loop {
            attempts -= 1;
            match Self::bind_once(addr, threads) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts > 0 => {}
                bound => return bound,
            }
        }
    }

    fn bind_once(addr: SocketAddr, threads: usize) -> io::Result<Self> {
        let mut udp = udp_sockets(addr, threads, false)?;
        let local_addr = udp[0].local_addr()?;
        let mut tcp = vec![tcp_listener(local_addr, false)?];
        let mut ipv6_addr = None;
        if addr.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
            // Separate IPv6-only sockets rather than one dual-stack socket, so that both
            // families get the same threads and the same reply handling.
            let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), local_addr.port());
            match udp_sockets(v6, threads, true)
                .and_then(|more| Ok((more, tcp_listener(v6, true)?)))
            {
                Ok((more, listener)) => {
                    udp.extend(more);
                    tcp.push(listener);
                    ipv6_addr = Some(v6);
                }
                Err(e) if ipv6_unavailable(&e) => {
                    info!(addr = %v6, error = %e, "no IPv6 on this host; answering DNS over IPv4 only");
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{v6}: {e}"))),
            }
        }
        Ok(Self {
            local_addr,
            ipv6_addr,
            udp,
            tcp,
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
        let listeners = self
            .tcp
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<io::Result<_>>()?;
        Ok(serve_tcp(listeners, zone, index, metrics))
    }
}

/// True for the errors of a host without IPv6 (disabled at boot, or no address for it),
/// as opposed to a conflict on the port.
fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// `threads` UDP sockets (at least one) on `addr`, sharing its port through
/// SO_REUSEPORT; port 0 is resolved by the first.
fn udp_sockets(
    addr: SocketAddr,
    threads: usize,
    only_v6: bool,
) -> io::Result<Vec<std::net::UdpSocket>> {
    let first = udp_socket(addr, only_v6)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads.max(1) {
        sockets.push(udp_socket(addr, only_v6)?);
    }
    Ok(sockets)
}

fn udp_socket(addr: SocketAddr, only_v6: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if only_v6 {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // Room for bursts: a CA validating from several vantage points at once.
    let _ = socket.set_recv_buffer_size(4 << 20);
    if addr.ip().is_unspecified() {
        // Have each query's destination reported, so its answer can leave from there.
        set_recv_pktinfo(&socket, addr.is_ipv6())?;
    }
    socket.bind(&addr.into())?;
    // Wake up now and then to flush metrics and notice `stop`.
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(socket.into())
}

/// Enables IP_PKTINFO (IPv4) or IPV6_RECVPKTINFO (IPv6, RFC 3542 §6.1): recvmsg then
/// carries the datagram's destination address and interface in a control message. On a
/// dual-stack IPv6 socket, Linux reports IPv4 destinations as mapped IPv6 addresses.
fn set_recv_pktinfo(socket: &Socket, ipv6: bool) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: the option value is a c_int that outlives the call, passed with its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn tcp_listener(addr: SocketAddr, only_v6: bool) -> io::Result<std::net::TcpListener> {
    let tcp = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if only_v6 {
        tcp.set_only_v6(true)?;
    }
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    Ok(tcp.into())
}

/// Datagrams taken from the socket in one `recvmmsg`, and answers sent in one `sendmmsg`.
/// Under load each system call carries up to this many; when queries trickle in, a call
/// returns as soon as one has arrived, so nothing waits for a batch to fill.
const UDP_BATCH: usize = 32;
/// Bytes read of a query. A query larger than this is malformed for us anyway: the
/// kernel cuts it and the parser answers FORMERR or drops it.
const UDP_QUERY_MAX: usize = 4096;

/// A UDP socket read and written in batches, whose replies leave from the address their
/// query was sent to.
///
/// On a wildcard bind the kernel would pick a reply's source address by route, and on a
/// host with several addresses that need not be the one the client asked; clients and
/// resolvers drop such replies (RFC 2181 §4.1). With IP_PKTINFO / IPV6_RECVPKTINFO on
/// (`udp_socket` enables them on wildcard binds), recvmmsg learns each query's
/// destination and sendmmsg hands it back as the reply's source, as in RFC 3542 §6. A
/// socket bound to one address reports no destination; its replies go out without a
/// control message, from the bound address.
///
/// Every buffer is allocated once, when the thread starts: nothing per query. The
/// message headers point into the buffers and are filled in again before each call, so
/// no pointer outlives the call it was made for.
struct UdpBatch {
    socket: std::net::UdpSocket,
    /// Per slot: the query, its sender, and the control messages that came with it.
    queries: Box<[[u8; UDP_QUERY_MAX]]>,
    peers: Box<[libc::sockaddr_storage]>,
    controls: Box<[Control]>,
    /// Per slot: the answer, and whether it goes out (Some) and from which address
    /// (the query's destination, when the socket reported one).
    answers: Box<[Vec<u8>]>,
    replies: Box<[Option<Option<Destination>>]>,
    /// The headers of the last call, and the io vectors they point at.
    headers: Box<[libc::mmsghdr]>,
    iovecs: Box<[libc::iovec]>,
}

/// A query's destination, as its control message reported it.
#[derive(Clone, Copy)]
enum Destination {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

/// Room for one IP_PKTINFO or IPV6_PKTINFO control message, aligned like a `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const CONTROL_LEN: usize =
    unsafe { libc::CMSG_SPACE(mem::size_of::<libc::in6_pktinfo>() as u32) } as usize;
const _: () = assert!(mem::align_of::<Control>() >= mem::align_of::<libc::cmsghdr>());
const _: () = assert!(mem::size_of::<libc::in6_pktinfo>() >= mem::size_of::<libc::in_pktinfo>());

impl UdpBatch {
    fn new(socket: std::net::UdpSocket) -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs (null pointers,
        // zero lengths, family AF_UNSPEC).
        let (storage, header, iovec) = unsafe {
            (
                mem::zeroed::<libc::sockaddr_storage>(),
                mem::zeroed::<libc::mmsghdr>(),
                mem::zeroed::<libc::iovec>(),
            )
        };
        Self {
            socket,
            queries: vec![[0; UDP_QUERY_MAX]; UDP_BATCH].into_boxed_slice(),
            peers: vec![storage; UDP_BATCH].into_boxed_slice(),
            controls: vec![Control([0; CONTROL_LEN]); UDP_BATCH].into_boxed_slice(),
            answers: (0..UDP_BATCH)
                .map(|_| Vec::with_capacity(UDP_QUERY_MAX))
                .collect(),
            replies: vec![None; UDP_BATCH].into_boxed_slice(),
            headers: vec![header; UDP_BATCH].into_boxed_slice(),
            iovecs: vec![iovec; UDP_BATCH].into_boxed_slice(),
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout), then takes
    /// whatever else is queued, up to a batch; how many.
    fn receive(&mut self) -> io::Result<usize> {
        for i in 0..UDP_BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.queries[i].as_mut_ptr().cast(),
                iov_len: UDP_QUERY_MAX,
            };
            let header = &mut self.headers[i];
            header.msg_len = 0;
            header.msg_hdr.msg_name = (&raw mut self.peers[i]).cast();
            header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            header.msg_hdr.msg_iov = &raw mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = CONTROL_LEN as _;
            header.msg_hdr.msg_flags = 0;
        }
        // SAFETY: each of the UDP_BATCH headers points at its own peer storage, query
        // buffer (through its iovec) and control buffer, all owned by `self` and alive
        // across the call, each given with its true size.
        let received = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                UDP_BATCH as _,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if received < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(received as usize)
        }
    }

    /// Hands each of the `n` datagrams received to `respond` with its sender and a
    /// buffer for the answer; sends the answers it returns true for, in one call when
    /// it can.
    fn respond(
        &mut self,
        n: usize,
        mut respond: impl FnMut(&[u8], SocketAddr, &mut Vec<u8>) -> bool,
    ) {
        for i in 0..n {
            self.replies[i] = None;
            let header = &self.headers[i];
            let Some(peer) = socket_addr(&self.peers[i], header.msg_hdr.msg_namelen) else {
                continue; // not an IP sender: nothing to answer
            };
            // SAFETY: the header is as recvmmsg left it, its control buffer is alive.
            let destination = unsafe { destination(&header.msg_hdr) };
            let len = (header.msg_len as usize).min(UDP_QUERY_MAX);
            if respond(&self.queries[i][..len], peer, &mut self.answers[i]) {
                self.replies[i] = Some(destination);
            }
        }
        self.send(n);
    }

    /// Sends the answers of the first `n` slots that have one.
    fn send(&mut self, n: usize) {
        let mut count = 0;
        for i in 0..n {
            let Some(destination) = self.replies[i] else {
                continue;
            };
            self.iovecs[count] = libc::iovec {
                iov_base: self.answers[i].as_mut_ptr().cast(),
                iov_len: self.answers[i].len(),
            };
            // The reply goes to the query's sender: peers[i] and its length are as
            // recvmmsg left them (headers[count] is headers[i] or an earlier one,
            // whose length is copied before it is overwritten).
            let namelen = self.headers[i].msg_hdr.msg_namelen;
            let header = &mut self.headers[count];
            header.msg_len = 0;
            header.msg_hdr.msg_name = (&raw mut self.peers[i]).cast();
            header.msg_hdr.msg_namelen = namelen;
            header.msg_hdr.msg_iov = &raw mut self.iovecs[count];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_flags = 0;
            match destination.and_then(Destination::reply_source) {
                Some(source) => {
                    // The control buffer of slot i is free again: its query is read.
                    let control = &mut self.controls[i];
                    // SAFETY: see `write_pktinfo`; the header points at `control`,
                    // which `self` owns.
                    unsafe { write_pktinfo(&mut header.msg_hdr, control, source) };
                }
                None => {
                    header.msg_hdr.msg_control = ptr::null_mut();
                    header.msg_hdr.msg_controllen = 0;
                }
            }
            count += 1;
        }
        let fd = self.socket.as_raw_fd();
        let mut start = 0;
        while start < count {
            // SAFETY: headers[start..count] each point at a peer address, an answer
            // (through its iovec; sendmmsg only reads it) and a control message or
            // none, all owned by `self` and alive across the call.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers[start..].as_mut_ptr(),
                    (count - start) as _,
                    0,
                )
            };
            if sent > 0 {
                start += sent as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first of the rest could not go (an unreachable client, a full
            // buffer): it is lost, as a plain send's would be; the others still go.
            debug!(error = %e, "UDP send failed");
            start += 1;
        }
    }
}

/// Puts one IP_PKTINFO or IPV6_PKTINFO control message in `control` and points `msg` at
/// it, so the datagram leaves from `source`.
///
/// # Safety
///
/// `msg` must be used only while `control` is alive and not moved.
unsafe fn write_pktinfo(msg: &mut libc::msghdr, control: &mut Control, source: Destination) {
    let (level, kind, size) = match source {
        Destination::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            mem::size_of::<libc::in_pktinfo>(),
        ),
        Destination::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    control.0.fill(0);
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only does arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size as u32) } as _;
    // SAFETY: the one control message fits: CONTROL_LEN is the space of the larger
    // pktinfo, and the buffer is aligned for a cmsghdr, so CMSG_FIRSTHDR returns its
    // start and CMSG_DATA a pointer `size` bytes of which lie inside it (written
    // unaligned all the same).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size as u32) as _;
        let data = libc::CMSG_DATA(cmsg);
        match source {
            Destination::V4(info) => ptr::write_unaligned(data.cast(), info),
            Destination::V6(info) => ptr::write_unaligned(data.cast(), info),
        }
    }
}

/// The sender recvmmsg wrote into `storage`, `len` bytes of it; None unless IPv4 or IPv6.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, written whole
            // (len), and sockaddr_storage is aligned for every address type.
            let addr = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)).into(),
                u16::from_be(addr.sin_port),
            ))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let addr = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(
                std::net::SocketAddrV6::new(
                    Ipv6Addr::from(addr.sin6_addr.s6_addr),
                    u16::from_be(addr.sin6_port),
                    addr.sin6_flowinfo,
                    addr.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

/// The destination of a datagram, from the IP_PKTINFO or IPV6_PKTINFO control message
/// recvmsg put in `msg`; None when there is none.
///
/// # Safety
///
/// `msg` is as recvmsg left it, and the control buffer it points at is still alive.
unsafe fn destination(msg: &libc::msghdr) -> Option<Destination> {
    // SAFETY (whole loop): CMSG_FIRSTHDR and CMSG_NXTHDR return only headers that start
    // inside the msg_controllen bytes recvmsg wrote, at cmsghdr alignment. The kernel
    // cuts a message's cmsg_len to what fit (MSG_CTRUNC), so a length check keeps each
    // read of the data inside the buffer; the data is read unaligned all the same.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        let (level, kind, len) = unsafe {
            (
                (*cmsg).cmsg_level,
                (*cmsg).cmsg_type,
                (*cmsg).cmsg_len as usize,
            )
        };
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        let fits = |size: usize| len >= unsafe { libc::CMSG_LEN(size as u32) } as usize;
        match (level, kind) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if fits(mem::size_of::<libc::in_pktinfo>()) => {
                return Some(Destination::V4(unsafe { ptr::read_unaligned(data.cast()) }));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                if fits(mem::size_of::<libc::in6_pktinfo>()) =>
            {
                return Some(Destination::V6(unsafe { ptr::read_unaligned(data.cast()) }));
            }
            _ => {}
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    None
}

impl Destination {
    /// The pktinfo that makes a reply to this query leave from where it arrived; None
    /// when the kernel should choose the source (an address that cannot be one).
    fn reply_source(self) -> Option<Self> {
        match self {
            Self::V4(info) => {
                // ipi_spec_dst is the query's local address (ip(7)): its destination
                // when that is one of ours (ipi_addr), an address of the receiving
                // interface when it was a broadcast. ipi_ifindex stays 0 so that the
                // route picks the interface, as for any other packet: a non-zero index
                // would put that interface's primary address in place of ipi_spec_dst
                // for the route lookup (ip(7)).
                let source = match info.ipi_spec_dst.s_addr {
                    0 => info.ipi_addr,
                    _ => info.ipi_spec_dst,
                };
                let ip = Ipv4Addr::from(u32::from_be(source.s_addr));
                let usable = !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast());
                usable.then_some(Self::V4(libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: source,
                    ipi_addr: libc::in_addr { s_addr: 0 },
                }))
            }
            Self::V6(info) => {
                // ipi6_addr is the query's destination (RFC 3542 §6.1), IPv4 ones
                // mapped on a dual-stack socket. A multicast or broadcast destination
                // is no source address.
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                let usable = match ip.to_ipv4_mapped() {
                    Some(v4) => !(v4.is_multicast() || v4.is_broadcast()),
                    None => !ip.is_multicast(),
                };
                // The interface matters only for a link-local address, which means
                // something on its own link alone; otherwise the route picks it.
                let ifindex = if ip.is_unicast_link_local() {
                    info.ipi6_ifindex
                } else {
                    0
                };
                usable.then_some(Self::V6(libc::in6_pktinfo {
                    ipi6_addr: info.ipi6_addr,
                    ipi6_ifindex: ifindex,
                }))
            }
        }
    }
}

fn serve_udp(
    socket: std::net::UdpSocket,
    zone: &Zone,
    index: &AccountIndex,
    metrics: &DnsMetrics,
    rrl: &RateLimiter,
    stop: &AtomicBool,
) {
    // Queries come in and answers go out in batches; replies leave from the address each
    // query was sent to. See `UdpBatch`.
    let mut batch = UdpBatch::new(socket);
    let mut local = metrics.local(Transport::Udp);
    while !stop.load(Ordering::Relaxed) {
        let n = match batch.receive() {
            Ok(n) => n,
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
        batch.respond(n, |packet, peer, out| {
            let started = Instant::now();
            let answered = answer(packet, zone, index, Transport::Udp, out);
            // Response rate limiting (rrl.rs): the answer goes out whole, cut down to a
            // truncated reply in `out`, or not at all.
            let send = match answered {
                Some(_) => {
                    let verdict = rrl.apply(peer.ip(), started, out);
                    local.record_rrl(verdict);
                    verdict != Verdict::Drop
                }
                None => false,
            };
            local.record(answered, started.elapsed().as_secs_f64());
            send
        });
    }
    local.flush();
}

async fn serve_tcp(
    listeners: Vec<TcpListener>,
    zone: Arc<Zone>,
    index: Arc<AccountIndex>,
    metrics: DnsMetrics,
) {
    serve_tcp_with(listeners, zone, index, metrics, TCP_SETTINGS).await
}

/// Serves TCP on every listener (IPv4 and IPv6) until dropped, all of them under one
/// limit of `max_connections` and one queue of waiting connections.
async fn serve_tcp_with(
    listeners: Vec<TcpListener>,
    zone: Arc<Zone>,
    index: Arc<AccountIndex>,
    metrics: DnsMetrics,
    settings: TcpSettings,
) {
    let limits = TcpLimits {
        slots: Arc::new(Semaphore::new(settings.max_connections)),
        waiting: Arc::new(Waiting::default()),
        sources: Arc::new(Sources {
            max: settings.max_per_source,
            held: Mutex::default(),
        }),
        idle: settings.idle,
    };
    let accepting = listeners
        .iter()
        .map(|listener| accept_tcp(listener, &zone, &index, &metrics, &limits));
    futures::future::join_all(accepting).await;
}

/// What the TCP listeners share: the connection slots, the connections waiting for
/// their client (the first to close when the slots run out), and the idle time.
struct TcpLimits {
    slots: Arc<Semaphore>,
    waiting: Arc<Waiting>,
    sources: Arc<Sources>,
    idle: Duration,
}

/// Connections held per source; a source appears only while it holds one.
struct Sources {
    max: usize,
    held: Mutex<std::collections::HashMap<IpAddr, usize>>,
}

impl Sources {
    /// An IPv4 address, or the /64 of an IPv6 one (one host's usual share).
    fn key(peer: IpAddr) -> IpAddr {
        match peer {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(bits.into())
                }
            },
            v4 => v4,
        }
    }

    /// Counts a new connection from `peer`; None when it already holds the most.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<SourceGuard> {
        let key = Self::key(peer);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceGuard {
            sources: self.clone(),
            key,
        })
    }
}

/// A connection's place in its source's count, given back when dropped.
struct SourceGuard {
    sources: Arc<Sources>,
    key: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut held = self.sources.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

async fn accept_tcp(
    listener: &TcpListener,
    zone: &Arc<Zone>,
    index: &Arc<AccountIndex>,
    metrics: &DnsMetrics,
    limits: &TcpLimits,
) {
    let TcpLimits {
        slots,
        waiting,
        sources,
        idle,
    } = limits;
    let idle = *idle;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(source) = sources.admit(peer.ip()) else {
            // Closed at once: this source holds its share already.
            debug!(%peer, "TCP connections from this source at its limit; closed the new one");
            metrics.tcp_closed(TcpClosed::SourceLimit);
            drop(stream);
            continue;
        };
        let Some(permit) = slot(slots, waiting, metrics).await else {
            return;
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
            drop(source);
        });
    }
}

/// A connection slot: a free one, else the one of the connection that has waited longest
/// for its client, closed for it. None once the slots are closed.
async fn slot(
    slots: &Arc<Semaphore>,
    waiting: &Waiting,
    metrics: &DnsMetrics,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        if waiting.close_oldest() {
            debug!("TCP connections at the limit; closed the one idle longest");
            metrics.tcp_closed(TcpClosed::Evicted);
            // It gives its slot back as soon as it sees the notice.
            return slots.clone().acquire_owned().await.ok();
        }
        // Every connection is starting or computing an answer: one is back in the queue
        // (or done) within moments.
        match tokio::time::timeout(Duration::from_millis(20), slots.clone().acquire_owned()).await {
            Ok(permit) => return permit.ok(),
            Err(_) => continue,
        }
    }
}

/// The TCP connections now waiting for their client (for a query, the rest of one, or to
/// read an answer),
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
            let read = self
                .for_client(&close, read_query(&mut stream, &mut packet))
                .await;
            match read {
                None | Some(Ok(false)) => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(true)) => {}
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
            // A client that does not read its answers holds the connection as surely
            // as one that sends nothing: it waits in the same queue.
            match self.for_client(&close, write).await {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(())) => {}
            }
        };
        local.flush();
        result
    }

    /// Runs `io`, which waits on the client, from the waiting queue: None when it took
    /// longer than the idle time or the connection was closed to make room for a new one.
    async fn for_client<T>(
        &self,
        close: &Arc<Notify>,
        io: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let ticket = self.waiting.enter(close);
        let done = tokio::select! {
            done = tokio::time::timeout(self.idle, io) => done.ok(),
            () = close.notified() => None,
        };
        self.waiting.leave(ticket);
        done
    }
}

/// Reads one length-prefixed query into `packet`; false at a clean end of the stream.
/// The buffer grows with the bytes that arrive, not with the length the client claims:
/// a length prefix alone costs the server nothing.
async fn read_query<S: AsyncRead + Unpin>(
    stream: &mut S,
    packet: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u16::from_be_bytes(len) as usize;
    packet.clear();
    (&mut *stream).take(len as u64).read_to_end(packet).await?;
    if packet.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed {} bytes into a {len}-byte query",
                packet.len()
            ),
        ));
    }
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
        let settings = TcpSettings {
            max_connections: max,
            // Every test connection comes from 127.0.0.1: only the total limit here.
            max_per_source: usize::MAX,
            idle,
        };
        responder_with(settings, &Registry::new()).await
    }

    async fn responder_with(settings: TcpSettings, registry: &Registry) -> SocketAddr {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let addr = SocketAddr::new(
            Ipv4Addr::LOCALHOST.into(),
            listener.local_addr().unwrap().port(),
        );
        let zone = Arc::new(Zone::new(&ZoneConfig::new("auth.example.test")).unwrap());
        let metrics = DnsMetrics::new(registry).unwrap();
        let index = Arc::new(AccountIndex::new(1));
        tokio::spawn(serve_tcp_with(
            vec![listener],
            zone,
            index,
            metrics,
            settings,
        ));
        addr
    }

    /// A TCP connection to `server` from the loopback address `from`.
    async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(server).await.unwrap()
    }

    fn counted(registry: &Registry, reason: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "kube_acme_dns_tcp_connections_closed_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    #[tokio::test]
    async fn one_source_holds_at_most_its_share_of_connections() {
        let registry = Registry::new();
        let settings = TcpSettings {
            max_connections: 16,
            max_per_source: 2,
            idle: Duration::from_secs(60),
        };
        let addr = responder_with(settings, &registry).await;
        let mut held = vec![
            connect_from("127.0.0.1", addr).await,
            connect_from("127.0.0.1", addr).await,
        ];
        // Both are served.
        held[0].write_all(&framed_query(1)).await.unwrap();
        assert_eq!(answer_id(&mut held[0]).await.unwrap(), 1);
        // A third from the same address is closed at once.
        let mut third = connect_from("127.0.0.1", addr).await;
        assert!(closed(&mut third).await, "over the source's share");
        assert_eq!(counted(&registry, "source_limit"), 1);
        // Another address is served, and so are the first two still.
        let mut other = connect_from("127.0.0.2", addr).await;
        other.write_all(&framed_query(2)).await.unwrap();
        assert_eq!(answer_id(&mut other).await.unwrap(), 2);
        held[1].write_all(&framed_query(3)).await.unwrap();
        assert_eq!(answer_id(&mut held[1]).await.unwrap(), 3);
        // Once one closes, the source may connect again.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut again = connect_from("127.0.0.1", addr).await;
        again.write_all(&framed_query(4)).await.unwrap();
        assert_eq!(answer_id(&mut again).await.unwrap(), 4);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let key = |s: &str| Sources::key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }

    /// The apex SOA query, with an OPT record.
    fn query_bytes(id: u16) -> Vec<u8> {
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
        let bytes = query_bytes(id);
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

    #[tokio::test]
    async fn a_claimed_length_alone_costs_no_buffer() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        // The longest length a client may claim, then ten bytes of it.
        client.write_all(&[0xff, 0xff]).await.unwrap();
        client.write_all(&[0u8; 10]).await.unwrap();
        let mut packet = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_millis(200),
            read_query(&mut server, &mut packet),
        )
        .await;
        assert!(read.is_err(), "still waiting for the rest of the query");
        assert!(
            packet.capacity() < 1024,
            "{} bytes held for 10 received",
            packet.capacity()
        );
        // A client that goes away in the middle of a query is an error, not a query.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&[0x00, 0x20]).await.unwrap();
        client.write_all(&[0u8; 10]).await.unwrap();
        drop(client);
        let err = read_query(&mut server, &mut packet).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_its_answers_is_closed_for_a_new_one() {
        let registry = Registry::new();
        let settings = TcpSettings {
            max_connections: 1,
            max_per_source: usize::MAX,
            idle: Duration::from_secs(60),
        };
        let addr = responder_with(settings, &registry).await;
        // Pipelined queries whose answers it never reads: the server's writes block
        // once the socket buffers are full, and so its reads of this connection.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stuck = socket.connect(addr).await.unwrap();
        let (_unread, mut writer) = stuck.into_split();
        let flood = tokio::spawn(async move {
            let query = framed_query(9);
            for _ in 0..200_000 {
                if writer.write_all(&query).await.is_err() {
                    break;
                }
            }
        });
        // Until the writer is blocked (the server stopped reading), or the flood ended.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut new = TcpStream::connect(addr).await.unwrap();
        new.write_all(&framed_query(1)).await.unwrap();
        let id = tokio::time::timeout(Duration::from_secs(5), answer_id(&mut new)).await;
        assert_eq!(
            id.expect("answered, not queued behind the stuck client")
                .unwrap(),
            1
        );
        assert_eq!(counted(&registry, "evicted"), 1);
        flood.abort();
    }

    /// With about 1 100 idle connections open (more than the limit of 1 024, from many
    /// sources), a new client is answered at once: the idle ones closed first.
    #[tokio::test]
    async fn a_new_query_is_answered_at_once_behind_1100_idle_connections() {
        let registry = Registry::new();
        let settings = TcpSettings {
            // The real limits, with an idle time longer than the test.
            idle: Duration::from_secs(120),
            ..TCP_SETTINGS
        };
        let addr = responder_with(settings, &registry).await;
        let mut idle = Vec::new();
        for n in 0..1100 {
            // 127.0.2.x: a source per 50, under the per-source limit.
            let from = format!("127.0.2.{}", 1 + n / 50);
            idle.push(connect_from(&from, addr).await);
        }
        let mut new = connect_from("127.0.3.1", addr).await;
        new.write_all(&framed_query(5)).await.unwrap();
        let id = tokio::time::timeout(Duration::from_secs(5), answer_id(&mut new)).await;
        assert_eq!(
            id.expect("answered before any idle time ran out").unwrap(),
            5
        );
        // Each connection beyond the limit closed one idle connection, the oldest first.
        let evicted = counted(&registry, "evicted");
        assert_eq!(evicted, 1101 - TCP_MAX_CONNECTIONS as u64);
        assert!(closed(&mut idle[0]).await, "the oldest is closed");
        // Without waiting: an open connection has nothing to read yet.
        let is_closed = |s: &TcpStream| !matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        let closed_now = idle.iter().filter(|s| is_closed(s)).count();
        assert_eq!(closed_now as u64, evicted, "as many closed as counted");
        // The newest idle connection is still served.
        let last = idle.last_mut().unwrap();
        last.write_all(&framed_query(6)).await.unwrap();
        assert_eq!(answer_id(last).await.unwrap(), 6);
    }

    /// The whole responder (UDP threads and TCP) bound to `addr`; its UDP threads stop
    /// when this is dropped.
    struct Responder {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn bind(addr: &str) -> (DnsSockets, Responder) {
        let sockets = DnsSockets::bind(addr.parse().unwrap(), 2).unwrap();
        let responder = Responder {
            addr: sockets.local_addr,
            stop: Arc::new(AtomicBool::new(false)),
        };
        (sockets, responder)
    }

    fn serve(sockets: DnsSockets, responder: &Responder) {
        let zone = Arc::new(Zone::new(&ZoneConfig::new("auth.example.test")).unwrap());
        let metrics = DnsMetrics::new(&Registry::new()).unwrap();
        let index = Arc::new(AccountIndex::new(1));
        let tcp = sockets
            .serve(zone, index, metrics, RrlConfig::OFF, responder.stop.clone())
            .unwrap();
        tokio::spawn(tcp);
    }

    /// Asks `server` over UDP from a socket bound to `client`; the answer's id and the
    /// address it came from.
    async fn ask_udp(client: &str, server: SocketAddr, id: u16) -> (u16, SocketAddr) {
        let socket = tokio::net::UdpSocket::bind(client).await.unwrap();
        socket.send_to(&query_bytes(id), server).await.unwrap();
        let mut answer = [0u8; 4096];
        let (len, from) =
            tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("no answer from {server} within 2 s"))
                .unwrap();
        (Message::from_vec(&answer[..len]).unwrap().metadata.id, from)
    }

    fn at(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    #[tokio::test]
    async fn udp_answers_leave_from_the_address_the_query_was_sent_to() {
        let (sockets, responder) = bind("0.0.0.0:0");
        serve(sockets, &responder);
        let port = responder.addr.port();
        // All of 127.0.0.0/8 is local on Linux: 127.0.0.2 is a second address, which
        // the kernel would not pick as the source of a reply to 127.0.0.1.
        for (id, ip) in [(1, "127.0.0.2"), (2, "127.0.0.1"), (3, "127.0.0.2")] {
            let asked = at(ip, port);
            assert_eq!(ask_udp("127.0.0.1:0", asked, id).await, (id, asked));
        }
    }

    #[tokio::test]
    async fn udp_on_a_specific_address_answers_from_it() {
        let (sockets, responder) = bind("127.0.0.2:0");
        serve(sockets, &responder);
        assert_eq!(
            ask_udp("127.0.0.1:0", responder.addr, 4).await,
            (4, responder.addr)
        );
    }

    #[tokio::test]
    async fn udp_on_a_dual_stack_ipv6_wildcard_answers_ipv4_from_the_address_asked() {
        let (sockets, responder) = bind("[::]:0");
        // `[::]` is left as the host configures it (net.ipv6.bindv6only).
        if Socket::from(sockets.udp[0].try_clone().unwrap())
            .only_v6()
            .unwrap()
        {
            eprintln!("skipped: [::] does not take IPv4 on this host");
            return;
        }
        serve(sockets, &responder);
        let port = responder.addr.port();
        for (id, ip) in [(5, "127.0.0.2"), (6, "127.0.0.1")] {
            let asked = at(ip, port);
            assert_eq!(ask_udp("127.0.0.1:0", asked, id).await, (id, asked));
        }
    }

    /// True when this host has IPv6 loopback.
    fn ipv6_loopback() -> bool {
        std::net::UdpSocket::bind("[::1]:0").is_ok()
    }

    #[tokio::test]
    async fn ipv6_is_served_alongside_ipv4() {
        let (sockets, responder) = bind("0.0.0.0:0");
        if !ipv6_loopback() {
            assert_eq!(sockets.ipv6_addr, None);
            eprintln!("skipped: no IPv6 loopback on this host");
            return;
        }
        let port = responder.addr.port();
        assert_eq!(sockets.ipv6_addr, Some(at("::", port)));
        serve(sockets, &responder);

        let asked = at("::1", port);
        assert_eq!(ask_udp("[::1]:0", asked, 7).await, (7, asked));
        let asked = at("127.0.0.2", port);
        assert_eq!(ask_udp("127.0.0.1:0", asked, 8).await, (8, asked));

        let mut stream = TcpStream::connect(at("::1", port)).await.unwrap();
        stream.write_all(&framed_query(9)).await.unwrap();
        assert_eq!(answer_id(&mut stream).await.unwrap(), 9);
        let mut stream = TcpStream::connect(at("127.0.0.2", port)).await.unwrap();
        stream.write_all(&framed_query(10)).await.unwrap();
        assert_eq!(answer_id(&mut stream).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn udp_on_an_ipv6_wildcard_answers_from_the_address_asked() {
        if !ipv6_loopback() {
            eprintln!("skipped: no IPv6 loopback on this host");
            return;
        }
        let (sockets, responder) = bind("[::]:0");
        assert_eq!(sockets.ipv6_addr, None, "[::] is served as configured");
        serve(sockets, &responder);
        let asked = at("::1", responder.addr.port());
        assert_eq!(ask_udp("[::1]:0", asked, 11).await, (11, asked));
    }

    /// UDP and TCP as `serve` starts them, on 127.0.0.1 with one UDP thread; the UDP
    /// thread stops when the returned guard is dropped.
    async fn udp_and_tcp_responder(rrl: RrlConfig) -> (SocketAddr, StopOnDrop) {
        udp_and_tcp_responder_counted(rrl, &Registry::new()).await
    }

    async fn udp_and_tcp_responder_counted(
        rrl: RrlConfig,
        registry: &Registry,
    ) -> (SocketAddr, StopOnDrop) {
        let sockets = DnsSockets::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = sockets.local_addr;
        let zone = Arc::new(Zone::new(&ZoneConfig::new("auth.example.test")).unwrap());
        let metrics = DnsMetrics::new(registry).unwrap();
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

    /// Queries arriving faster than they are answered are read and answered in batches:
    /// each sender gets exactly the answers to its own queries, and a packet given no
    /// answer (too short for a header) in the middle of a batch costs only itself.
    #[tokio::test]
    async fn udp_bursts_from_several_senders_each_get_their_own_answers() {
        let (addr, _stop) = udp_and_tcp_responder(RrlConfig::OFF).await;
        let mut senders = Vec::new();
        for local in ["127.0.0.1:0", "127.0.1.1:0", "127.0.0.1:0"] {
            let socket = tokio::net::UdpSocket::bind(local).await.unwrap();
            socket.connect(addr).await.unwrap();
            senders.push(socket);
        }
        // Interleaved, without waiting: 3 × 60 queries and 3 × 10 runts.
        for id in 0..60u16 {
            for (n, socket) in senders.iter().enumerate() {
                socket
                    .send(&query_bytes(n as u16 * 1000 + id))
                    .await
                    .unwrap();
                if id % 6 == 0 {
                    socket.send(&[0x12, 0x34, 0x01]).await.unwrap();
                }
            }
        }
        for (n, socket) in senders.iter().enumerate() {
            let mut ids: Vec<u16> = replies(socket)
                .await
                .iter()
                .inspect(|reply| assert_reply(reply, false))
                .map(|reply| reply.metadata.id)
                .collect();
            ids.sort_unstable();
            let expected: Vec<u16> = (0..60).map(|id| n as u16 * 1000 + id).collect();
            assert_eq!(ids, expected, "sender {n}");
        }
    }

    #[tokio::test]
    async fn udp_answers_over_the_rate_are_truncated_or_dropped_per_source_prefix() {
        let rrl = RrlConfig {
            rate: 1,
            burst: 5,
            slip: 2,
            ..RrlConfig::DEFAULT
        };
        let registry = Registry::new();
        let (addr, _stop) = udp_and_tcp_responder_counted(rrl, &registry).await;
        let limited = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        limited.connect(addr).await.unwrap();
        // 127.0.0.0/8 is all loopback on Linux: 127.0.1.1 is another /24.
        let other = tokio::net::UdpSocket::bind("127.0.1.1:0").await.unwrap();
        other.connect(addr).await.unwrap();

        let started = Instant::now();
        for id in 0..100 {
            limited.send(&query_bytes(id)).await.unwrap();
        }
        // Queued behind the burst, so answered while the first /24 is limited.
        other.send(&query_bytes(1000)).await.unwrap();
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
        // And counted: kube_acme_dns_rrl_responses_total{action}, flushed by the UDP
        // thread once it has waited half a second for a query.
        let rrl_counted = |action: &str| {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == "kube_acme_dns_rrl_responses_total")
                .flat_map(|f| f.get_metric())
                .filter(|m| m.get_label().iter().any(|l| l.value() == action))
                .map(|m| m.get_counter().get_value() as usize)
                .sum::<usize>()
        };
        let dropped = 100 - whole.len() - truncated.len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while (rrl_counted("slipped"), rrl_counted("dropped")) != (truncated.len(), dropped)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            (rrl_counted("slipped"), rrl_counted("dropped")),
            (truncated.len(), dropped),
            "slipped and dropped answers counted"
        );

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
            client.send(&query_bytes(id)).await.unwrap();
        }
        let all = replies(&client).await;
        assert_eq!(all.len(), 100);
        for reply in &all {
            assert_reply(reply, false);
        }
    }
}
