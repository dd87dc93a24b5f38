//! Tokio driver: runs one [`Tunnel`] per task over its own UDP socket and
//! writes decapsulated packets to a shared [`PacketSink`].
//!
//! * One socket per tunnel, bound once for the tunnel's life (the relay
//!   identifies the tunnel by our address and port, NAT included). Large
//!   receive buffer: SO_RCVBUFFORCE (needs CAP_NET_ADMIN), else SO_RCVBUF
//!   (capped by net.core.rmem_max).
//! * Batched receive with `recvmmsg(2)` into buffers allocated once; the
//!   data path allocates nothing, logs nothing per packet, and reads the
//!   clock once per batch.
//! * Inner packets with TTL/hop limit below `min_inner_ttl` (default 2) are
//!   raised to it before delivery (IPv4 header checksum patched
//!   incrementally, RFC 1624). Reason: the packet enters the router through
//!   the TUN as if received, and Linux multicast forwarding only forwards a
//!   packet whose TTL exceeds the VIF threshold (1) and then decrements it,
//!   so a TTL-1 packet (common for senders that rely on the AMT tunnel to
//!   carry them) would reach FRR's MFC entry and be silently dropped. The
//!   tunnel already acted as the single hop it was allowed; raising to 2
//!   lets exactly one more router hop (the ingest router itself) forward it.
//! * IPv6 tunnel sockets accept zero UDP checksums (UDP_NO_CHECK6_RX), which
//!   RFC 7450 allows relays to use on Multicast Data; IPv4 zero checksums
//!   are always accepted by the kernel.
//! * With a kernel data plane ([`DriverConfig::kernel`]) the tunnel
//!   registers itself there, mirrors its relay address and subscriptions
//!   into the BPF maps and feeds the kernel's per-(S,G) counters into the
//!   sans-IO tunnel (every 500 ms, and before every timer and snapshot);
//!   the socket path keeps handling whatever the kernel passes on.
//! * Control from other tasks through a cloneable [`TunnelHandle`]
//!   (commands over an mpsc channel). Events of every tunnel can share one
//!   channel of [`RelayEvent`]s. Dropping every handle closes the tunnel
//!   gracefully (leaves, Teardown).

use std::cell::RefCell;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest_types::SourceGroup;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, warn};

use crate::dataplane::{
    FEED_EAGER_FOR, FEED_IDLE_INTERVAL, FEED_INTERVAL, KernelDataPlane, KernelOffload,
    KernelPathStats,
};
use crate::gateway::{
    Family, Received, SubscribeError, SubscriptionStats, Tunnel, TunnelConfig, TunnelEvent,
    TunnelState, TunnelStats,
};
use crate::tun::PacketSink;
use crate::wire::{ipv4, ipv6};

/// The inner TTL/hop limit delivered packets are raised to by default:
/// a packet arriving with TTL 1 would otherwise die in the router it is
/// handed to. Give the kernel data plane the same value.
pub const DEFAULT_MIN_INNER_TTL: u8 = 2;

/// Driver parameters around a [`TunnelConfig`].
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub tunnel: TunnelConfig,
    /// Local address to bind; default: unspecified address of the relay's
    /// family, port 0. Binding `[::]:0` gives a dual-stack socket that can
    /// also reach an IPv4 relay (IPv4-mapped addresses are handled).
    pub bind: Option<SocketAddr>,
    /// Requested socket receive buffer.
    pub recv_buffer_bytes: usize,
    /// Datagrams per `recvmmsg` call.
    pub batch_size: usize,
    /// Largest datagram accepted; longer ones are dropped (counted).
    pub max_datagram: usize,
    /// Raise the TTL/hop limit of delivered packets to at least this.
    /// (Packets the kernel data plane delivers follow its own
    /// [`KernelConfig::min_inner_ttl`](crate::dataplane::KernelConfig),
    /// given when it is opened: pass the same value.)
    pub min_inner_ttl: Option<u8>,
    /// RNG seed for nonces and backoff; default: from the OS RNG.
    pub rng_seed: Option<u64>,
    /// Upper bound on a graceful close (leaves are repeated QRV times).
    pub close_timeout: Duration,
    /// Kernel data plane to register the tunnel with (see
    /// [`crate::dataplane`]); `None`: userspace only. If the tunnel cannot
    /// be registered, it runs on the userspace path (logged), unless
    /// `kernel_required`, in which case [`spawn_tunnel`] fails.
    pub kernel: Option<Arc<KernelDataPlane>>,
    pub kernel_required: bool,
}

impl DriverConfig {
    pub fn new(tunnel: TunnelConfig) -> Self {
        Self {
            tunnel,
            bind: None,
            recv_buffer_bytes: 8 << 20,
            batch_size: 32,
            max_datagram: 9216,
            min_inner_ttl: Some(DEFAULT_MIN_INNER_TTL),
            rng_seed: None,
            close_timeout: Duration::from_secs(10),
            kernel: None,
            kernel_required: false,
        }
    }
}

/// A tunnel event tagged with the relay the tunnel was created for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEvent {
    /// [`TunnelConfig::relay`] of the tunnel (its identity for the caller).
    pub relay: SocketAddr,
    pub event: TunnelEvent,
}

/// Counters of the I/O layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub datagrams_received: u64,
    pub recv_batches: u64,
    /// Datagrams longer than `max_datagram` (dropped).
    pub truncated: u64,
    pub recv_errors: u64,
    pub send_errors: u64,
    /// Packets the sink refused (e.g. TUN queue full).
    pub sink_errors: u64,
    pub ttl_raised: u64,
    /// Receive buffer the kernel granted (as reported by SO_RCVBUF).
    pub recv_buffer_bytes: usize,
    /// The kernel data plane's part (None: userspace only).
    pub kernel: Option<KernelPathStats>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSnapshot {
    pub sg: SourceGroup,
    pub stats: SubscriptionStats,
}

/// Everything known about a tunnel at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelSnapshot {
    pub configured_relay: SocketAddr,
    /// Relay in use (after discovery).
    pub relay: Option<SocketAddr>,
    /// Our socket address (specific address of the route to the relay
    /// when bound to the unspecified address).
    pub local: SocketAddr,
    pub state: TunnelState,
    pub stats: TunnelStats,
    pub driver: DriverStats,
    pub subscriptions: Vec<SubscriptionSnapshot>,
    pub taken_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("the tunnel task has ended")]
    Gone,
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
}

enum Command {
    Subscribe {
        sg: SourceGroup,
        reply: oneshot::Sender<Result<bool, SubscribeError>>,
    },
    Unsubscribe {
        sg: SourceGroup,
        reply: oneshot::Sender<bool>,
    },
    Connect(Family),
    Snapshot(oneshot::Sender<TunnelSnapshot>),
    Close(oneshot::Sender<()>),
}

/// Cloneable control handle of a running tunnel task.
#[derive(Clone)]
pub struct TunnelHandle {
    relay: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelHandle")
            .field("relay", &self.relay)
            .finish()
    }
}

impl TunnelHandle {
    /// The relay (discovery) address the tunnel was created for.
    pub fn configured_relay(&self) -> SocketAddr {
        self.relay
    }

    /// Joins (S,G). `Ok(false)`: already subscribed.
    pub async fn subscribe(&self, sg: SourceGroup) -> Result<bool, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe { sg, reply })
            .map_err(|_| DriverError::Gone)?;
        Ok(rx.await.map_err(|_| DriverError::Gone)??)
    }

    /// Leaves (S,G). `Ok(false)`: was not subscribed.
    pub async fn unsubscribe(&self, sg: SourceGroup) -> Result<bool, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Unsubscribe { sg, reply })
            .map_err(|_| DriverError::Gone)?;
        rx.await.map_err(|_| DriverError::Gone)
    }

    /// Joins (S,G) without waiting for the tunnel task (which logs a
    /// refusal). `Err(Gone)` when the task has ended.
    pub fn subscribe_nowait(&self, sg: SourceGroup) -> Result<(), DriverError> {
        let (reply, _) = oneshot::channel();
        self.commands
            .send(Command::Subscribe { sg, reply })
            .map_err(|_| DriverError::Gone)
    }

    /// Leaves (S,G) without waiting for the tunnel task. `Err(Gone)` when
    /// the task has ended.
    pub fn unsubscribe_nowait(&self, sg: SourceGroup) -> Result<(), DriverError> {
        let (reply, _) = oneshot::channel();
        self.commands
            .send(Command::Unsubscribe { sg, reply })
            .map_err(|_| DriverError::Gone)
    }

    /// Starts the relay handshake for `family` without joining anything
    /// (relay racing); [`TunnelEvent::Up`] follows when the relay answers.
    /// `Err(Gone)` when the task has ended.
    pub fn connect_nowait(&self, family: Family) -> Result<(), DriverError> {
        self.commands
            .send(Command::Connect(family))
            .map_err(|_| DriverError::Gone)
    }

    pub async fn snapshot(&self) -> Result<TunnelSnapshot, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Snapshot(reply))
            .map_err(|_| DriverError::Gone)?;
        rx.await.map_err(|_| DriverError::Gone)
    }

    /// Leaves everything, sends Teardown, and resolves when the task has
    /// finished (bounded by `close_timeout`). Closing an ended tunnel is Ok.
    pub async fn close(&self) -> Result<(), DriverError> {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Close(reply)).is_err() {
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    /// True once the task has ended.
    pub fn is_finished(&self) -> bool {
        self.commands.is_closed()
    }
}

/// Opens the tunnel's socket and spawns its task on the current tokio
/// runtime. Events go to `events` (which may be shared by many tunnels).
pub fn spawn_tunnel(
    cfg: DriverConfig,
    sink: Arc<dyn PacketSink>,
    events: mpsc::UnboundedSender<RelayEvent>,
) -> io::Result<(TunnelHandle, JoinHandle<()>)> {
    let relay = cfg.tunnel.relay;
    let (socket, local, granted) = open_socket(&cfg)?;
    let socket = UdpSocket::from_std(socket.into())?;
    let seed = cfg.rng_seed.unwrap_or_else(rand::random);
    let now = Instant::now();
    let tunnel = Tunnel::new(cfg.tunnel.clone(), local, now, seed);
    let offload = match &cfg.kernel {
        None => None,
        Some(plane) => match plane.add_tunnel(local, tunnel.relay()) {
            Ok(t) => Some(KernelOffload::new(t)),
            Err(e) if cfg.kernel_required => return Err(io::Error::other(e)),
            Err(e) => {
                warn!(relay = %relay, error = %e, "this tunnel runs on the userspace data plane");
                None
            }
        },
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // A root span: the tunnel outlives the flow that opened it and serves
    // others, so it must not log under that flow's (S,G).
    let span = tracing::info_span!(parent: None, "amt_tunnel", relay = %relay, local = %local);
    let task = TunnelTask {
        cfg,
        tunnel,
        socket,
        sink,
        events,
        commands: rx,
        commands_open: true,
        close_waiters: Vec::new(),
        close_deadline: None,
        stats: DriverStats {
            recv_buffer_bytes: granted,
            ..DriverStats::default()
        },
        last_sink_warning: None,
        offload,
    };
    let join = tokio::spawn(task.run().instrument(span));
    Ok((
        TunnelHandle {
            relay,
            commands: tx,
        },
        join,
    ))
}

fn open_socket(cfg: &DriverConfig) -> io::Result<(Socket, SocketAddr, usize)> {
    let relay = cfg.tunnel.relay;
    let bind = cfg.bind.unwrap_or(match relay {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    });
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() && bind.ip().is_unspecified() {
        // Dual-stack so that an IPv4 relay (or advertised relay) works too.
        let _ = socket.set_only_v6(false);
    }
    set_recv_buffer(&socket, cfg.recv_buffer_bytes);
    if bind.is_ipv6() {
        // RFC 7450 §4.2.2.3: a relay may send Multicast Data over IPv6 with
        // a zero UDP checksum (RFC 6935/6936); Linux drops those unless asked.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a pointer to a c_int and its size.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_UDP,
                libc::UDP_NO_CHECK6_RX,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    socket.bind(&bind.into())?;
    socket.set_nonblocking(true)?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("socket has no IP address"))?;
    let local = if bound.ip().is_unspecified() {
        match route_source(relay) {
            Ok(ip) => SocketAddr::new(ip, bound.port()),
            // No route at all: a tunnel could never reach this relay (an
            // IPv6 relay from a host without IPv6 connectivity); say so
            // now rather than after the Discovery timeouts.
            Err(e) if is_unreachable(&e) => {
                let family = if relay.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(io::Error::new(
                    e.kind(),
                    format!("unreachable from this host: no {family} route to {relay} ({e})"),
                ));
            }
            Err(_) => bound,
        }
    } else {
        bound
    };
    let granted = socket.recv_buffer_size().unwrap_or(0);
    Ok((socket, local, granted))
}

/// SO_RCVBUFFORCE ignores net.core.rmem_max (needs CAP_NET_ADMIN); fall
/// back to SO_RCVBUF, which the kernel silently caps.
fn set_recv_buffer(socket: &Socket, bytes: usize) {
    const SO_RCVBUFFORCE: libc::c_int = 33;
    let value = libc::c_int::try_from(bytes / 2).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = socket.set_recv_buffer_size(bytes);
    }
}

/// The source address the kernel would use towards `dest` (no packet sent).
fn route_source(dest: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(dest)?;
    Ok(probe.local_addr()?.ip())
}

/// ENETUNREACH / EHOSTUNREACH: the routing table has no way to `dest`.
fn is_unreachable(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)
    )
}

/// Raises the TTL/hop limit of `packet` to `min`; true if it changed.
fn raise_ttl(packet: &mut [u8], min: u8) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= ipv4::MIN_HEADER_LEN && packet[8] < min => {
            ipv4::set_ttl(packet, min).is_ok()
        }
        Some(6) if packet.len() >= ipv6::HEADER_LEN && packet[7] < min => {
            ipv6::set_hop_limit(packet, min).is_ok()
        }
        _ => false,
    }
}

/// Zeroed memory straight from the kernel (an anonymous private mapping):
/// a page costs RSS only once written, and all of it goes back to the
/// kernel on drop. A `Vec` of the same size comes from glibc's heap once a
/// freed one has raised its mmap threshold: calloc then zeroes (touches)
/// every page, and a freed buffer stays in the process. With 1,000 tunnels
/// that was ~290 MB of receive batches that nothing had written, kept after
/// the tunnels closed (scale benchmark, issue 10).
struct PageBuffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl PageBuffer {
    fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1);
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: len bytes mapped readable and writable (zero-filled by the
        // kernel), owned by self and borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Receive buffers for `recvmmsg`: one set per runtime thread, shared by
/// every tunnel task that thread runs. A tunnel reads and handles a whole
/// batch in [`TunnelTask::on_readable`], which never awaits, so no other
/// task can use the buffers meanwhile. Per tunnel they cost 300 KB of
/// address space and, once a burst had touched them, tens of KB of RSS
/// each: 1,000 tunnels of the userspace data plane held 35 MB more than the
/// kernel data plane's at the scale benchmark's peak (issue 10).
struct RecvBatch {
    bufs: PageBuffer,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    slot: usize,
}

thread_local! {
    /// This thread's receive batch (see [`RecvBatch`]), made on first use.
    static RECV_BATCH: RefCell<Option<RecvBatch>> = const { RefCell::new(None) };
}

impl RecvBatch {
    /// `f` with this thread's batch of `batch` datagrams of up to `slot`
    /// bytes (made, or remade when a tunnel asks for other sizes).
    fn with_thread_batch<R>(
        batch: usize,
        slot: usize,
        f: impl FnOnce(&mut RecvBatch) -> R,
    ) -> io::Result<R> {
        RECV_BATCH.with_borrow_mut(|cell| {
            let fits = cell
                .as_ref()
                .is_some_and(|b| b.msgs.len() == batch && b.slot == slot);
            if !fits {
                *cell = None;
                *cell = Some(RecvBatch::new(batch, slot)?);
            }
            match cell.as_mut() {
                Some(b) => Ok(f(b)),
                None => Err(io::Error::other("no receive batch")),
            }
        })
    }

    fn new(batch: usize, slot: usize) -> io::Result<Self> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zero_addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let zero_msg: libc::mmsghdr = unsafe { mem::zeroed() };
        Ok(Self {
            bufs: PageBuffer::new(batch * slot)?,
            addrs: vec![zero_addr; batch],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                batch
            ],
            msgs: vec![zero_msg; batch],
            slot,
        })
    }

    /// One non-blocking `recvmmsg`; returns how many datagrams arrived.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.msgs.len();
        let base = self.bufs.as_mut_ptr();
        for i in 0..n {
            // SAFETY: i * slot + slot <= bufs.len(), so the pointer stays in bounds.
            self.iovecs[i].iov_base = unsafe { base.add(i * self.slot) }.cast();
            self.iovecs[i].iov_len = self.slot;
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        // SAFETY: every mmsghdr points at live buffers owned by self, sized
        // as declared; n fits in c_uint (batch size is small).
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Sender, payload and truncation flag of datagram `i` of the last batch.
    fn datagram(&mut self, i: usize) -> (Option<SocketAddr>, &mut [u8], bool) {
        let len = (self.msgs[i].msg_len as usize).min(self.slot);
        let truncated = self.msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let from = sockaddr_to_std(&self.addrs[i]);
        let start = i * self.slot;
        (
            from,
            &mut self.bufs.as_mut_slice()[start..start + len],
            truncated,
        )
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says this storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)).to_canonical();
            Some(SocketAddr::new(ip, u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

struct TunnelTask {
    cfg: DriverConfig,
    tunnel: Tunnel,
    socket: UdpSocket,
    sink: Arc<dyn PacketSink>,
    events: mpsc::UnboundedSender<RelayEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    close_waiters: Vec<oneshot::Sender<()>>,
    close_deadline: Option<tokio::time::Instant>,
    stats: DriverStats,
    last_sink_warning: Option<Instant>,
    offload: Option<KernelOffload>,
}

/// Batches handled per wakeup before timers and commands get a turn.
const BATCHES_PER_WAKEUP: usize = 16;

impl TunnelTask {
    async fn run(mut self) {
        // Per-tunnel lines are at debug: with a thousand relays they would
        // be thousands; the daemon summarises tunnel changes per cause.
        debug!("tunnel started");
        let mut last_feed = tokio::time::Instant::now();
        loop {
            self.flush().await;
            if self.tunnel.state() == TunnelState::Closed {
                break;
            }
            let timer = self
                .tunnel
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let close_deadline = self.close_deadline;
            let feed_at = self
                .offload
                .as_ref()
                .map(|_| last_feed + self.feed_interval());
            tokio::select! {
                biased;
                cmd = self.commands.recv(), if self.commands_open => self.on_command(cmd),
                _ = sleep_until_opt(timer), if timer.is_some() => {
                    self.feed_kernel_counters();
                    self.tunnel.handle_timeout(Instant::now())
                }
                _ = sleep_until_opt(feed_at), if feed_at.is_some() => {
                    self.feed_kernel_counters();
                    last_feed = tokio::time::Instant::now();
                }
                _ = sleep_until_opt(close_deadline), if close_deadline.is_some() => {
                    warn!("graceful close timed out");
                    break;
                }
                ready = self.socket.readable() => match ready {
                    Ok(()) => self.on_readable(),
                    Err(e) => {
                        warn!(error = %e, "socket error; closing tunnel");
                        break;
                    }
                },
            }
        }
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
        debug!(stats = ?self.tunnel.stats(), "tunnel ended");
    }

    /// How often the kernel's counters are read into the tunnel now.
    fn feed_interval(&self) -> Duration {
        let recent = Instant::now().checked_sub(FEED_EAGER_FOR);
        if recent.is_none_or(|since| self.tunnel.awaits_first_data(since)) {
            FEED_INTERVAL
        } else {
            FEED_IDLE_INTERVAL
        }
    }

    fn feed_kernel_counters(&mut self) {
        if let Some(offload) = &mut self.offload {
            offload.feed(&mut self.tunnel);
        }
    }

    async fn flush(&mut self) {
        if let Some(offload) = &mut self.offload {
            offload.sync_relay(self.tunnel.relay());
        }
        while let Some(tx) = self.tunnel.poll_transmit() {
            let dest = match (self.socket.local_addr(), tx.destination) {
                (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => {
                    SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
                }
                (_, d) => d,
            };
            if let Err(e) = self.socket.send_to(&tx.payload, dest).await {
                self.stats.send_errors += 1;
                debug!(error = %e, destination = %dest, "send failed");
            }
        }
        while let Some(event) = self.tunnel.poll_event() {
            // Per-(S,G) and per-tunnel events are the daemon's to summarise
            // (a few lines per cause and interval, with counts); only a
            // relay lost or refusing is worth a line of its own here.
            match &event {
                TunnelEvent::RelayLost { .. } | TunnelEvent::RelayRefused { .. } => {
                    warn!(?event, "tunnel event")
                }
                TunnelEvent::NoData { .. }
                | TunnelEvent::DataFlowing { .. }
                | TunnelEvent::DataStopped { .. } => debug!(?event, "tunnel event"),
                _ => debug!(?event, "tunnel event"),
            }
            let _ = self.events.send(RelayEvent {
                relay: self.cfg.tunnel.relay,
                event,
            });
        }
    }

    fn start_close(&mut self) {
        let now = Instant::now();
        if let Some(offload) = &mut self.offload {
            offload.unsubscribe_all(&mut self.tunnel);
        }
        self.tunnel.close(now);
        if self.close_deadline.is_none() {
            self.close_deadline =
                Some(tokio::time::Instant::from_std(now + self.cfg.close_timeout));
        }
    }

    fn on_command(&mut self, cmd: Option<Command>) {
        let now = Instant::now();
        match cmd {
            None => {
                // Every handle is gone: leave gracefully.
                self.commands_open = false;
                self.start_close();
            }
            Some(Command::Subscribe { sg, reply }) => {
                let r = self.tunnel.subscribe(sg, now);
                match &r {
                    Ok(_) => debug!(%sg, "subscribe"),
                    Err(error) => warn!(%sg, %error, "subscribe refused"),
                }
                if let (Ok(true), Some(offload)) = (&r, &mut self.offload) {
                    offload.subscribe(sg);
                }
                let _ = reply.send(r);
            }
            Some(Command::Unsubscribe { sg, reply }) => {
                if let Some(offload) = &mut self.offload
                    && self.tunnel.is_subscribed(sg)
                {
                    offload.unsubscribe(&mut self.tunnel, sg);
                }
                let r = self.tunnel.unsubscribe(sg, now);
                if r {
                    debug!(%sg, "unsubscribe");
                }
                let _ = reply.send(r);
            }
            Some(Command::Connect(family)) => {
                if let Err(error) = self.tunnel.connect(family, now) {
                    debug!(?family, %error, "connect refused");
                }
            }
            Some(Command::Snapshot(reply)) => {
                self.feed_kernel_counters();
                let _ = reply.send(self.snapshot(now));
            }
            Some(Command::Close(reply)) => {
                self.close_waiters.push(reply);
                self.start_close();
            }
        }
    }

    fn snapshot(&self, now: Instant) -> TunnelSnapshot {
        let mut driver = self.stats.clone();
        driver.kernel = self.offload.as_ref().map(KernelOffload::stats);
        TunnelSnapshot {
            configured_relay: self.cfg.tunnel.relay,
            relay: self.tunnel.relay(),
            local: self.tunnel.local(),
            state: self.tunnel.state(),
            stats: self.tunnel.stats().clone(),
            driver,
            subscriptions: self
                .tunnel
                .subscriptions()
                .filter_map(|sg| {
                    self.tunnel
                        .subscription_stats(sg)
                        .map(|stats| SubscriptionSnapshot {
                            sg,
                            stats: stats.clone(),
                        })
                })
                .collect(),
            taken_at: now,
        }
    }

    fn on_readable(&mut self) {
        let (batch, slot) = (self.cfg.batch_size.max(1), self.cfg.max_datagram.max(64));
        if let Err(e) = RecvBatch::with_thread_batch(batch, slot, |b| self.read_batches(b)) {
            self.stats.recv_errors += 1;
            debug!(error = %e, "no receive buffers");
        }
    }

    /// Reads and handles up to [`BATCHES_PER_WAKEUP`] batches. Must not
    /// await: `batch` is this thread's, shared with other tunnels.
    fn read_batches(&mut self, batch: &mut RecvBatch) {
        let fd = self.socket.as_raw_fd();
        for _ in 0..BATCHES_PER_WAKEUP {
            let n = match self.socket.try_io(Interest::READABLE, || batch.recv(fd)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.stats.recv_errors += 1;
                    debug!(error = %e, "recvmmsg failed");
                    return;
                }
            };
            self.stats.recv_batches += 1;
            self.stats.datagrams_received += n as u64;
            let now = Instant::now();
            for i in 0..n {
                let (from, payload, truncated) = batch.datagram(i);
                if truncated {
                    self.stats.truncated += 1;
                    continue;
                }
                let Some(from) = from else { continue };
                if let Received::Data { inner, .. } =
                    self.tunnel.handle_datagram(now, from, payload)
                {
                    let Some(packet) = payload.get_mut(inner) else {
                        continue;
                    };
                    if let Some(min) = self.cfg.min_inner_ttl
                        && raise_ttl(packet, min)
                    {
                        self.stats.ttl_raised += 1;
                    }
                    if let Err(e) = self.sink.write_packet(packet) {
                        self.stats.sink_errors += 1;
                        let quiet = self
                            .last_sink_warning
                            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10));
                        if !quiet {
                            self.last_sink_warning = Some(now);
                            warn!(error = %e, total = self.stats.sink_errors, "packet sink refused packets");
                        }
                    }
                }
            }
            if n < batch.msgs.len() {
                return;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{Ipv4Header, Ipv4Repr, PROTO_UDP};

    #[test]
    fn page_buffer_is_zeroed_writable_and_sized() {
        let mut b = PageBuffer::new(3 * 9216).unwrap();
        assert_eq!(b.as_mut_slice().len(), 3 * 9216);
        assert!(b.as_mut_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9216] = 7;
        assert_eq!(b.as_mut_slice()[9216], 7);
        assert_eq!(unsafe { *b.as_mut_ptr().add(9216) }, 7);
    }

    #[test]
    fn a_thread_reuses_its_receive_batch_and_remakes_it_for_other_sizes() {
        let first = RecvBatch::with_thread_batch(4, 128, |b| b.bufs.as_mut_ptr()).unwrap();
        let again = RecvBatch::with_thread_batch(4, 128, |b| b.bufs.as_mut_ptr()).unwrap();
        assert_eq!(first, again);
        let sizes = RecvBatch::with_thread_batch(8, 256, |b| (b.msgs.len(), b.slot)).unwrap();
        assert_eq!(sizes, (8, 256));
        let other_thread = std::thread::spawn(|| {
            RecvBatch::with_thread_batch(8, 256, |b| b.bufs.as_mut_ptr() as usize).unwrap()
        })
        .join()
        .unwrap();
        let here = RecvBatch::with_thread_batch(8, 256, |b| b.bufs.as_mut_ptr() as usize).unwrap();
        assert_ne!(other_thread, here);
    }

    #[test]
    fn raise_ttl_only_below_minimum() {
        let r = Ipv4Repr {
            src: "192.0.2.1".parse().unwrap(),
            dst: "232.1.1.1".parse().unwrap(),
            protocol: PROTO_UDP,
            ttl: 1,
            tos: 0,
            router_alert: false,
            payload_len: 8,
        };
        let mut p = vec![0u8; r.total_len()];
        r.emit(&mut p).unwrap();
        assert!(raise_ttl(&mut p, 2));
        let h = Ipv4Header::parse(&p).unwrap();
        assert_eq!(h.ttl(), 2);
        assert!(h.checksum_ok());
        assert!(!raise_ttl(&mut p, 2));
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[7] = 0;
        assert!(raise_ttl(&mut v6, 2));
        assert_eq!(v6[7], 2);
        assert!(!raise_ttl(&mut [0x45, 0, 0], 2));
    }

    #[test]
    fn sockaddr_conversion_canonicalises_mapped_addresses() {
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        {
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = 2268u16.to_be();
            sin6.sin6_addr.s6_addr = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        }
        assert_eq!(
            sockaddr_to_std(&ss),
            Some("192.0.2.7:2268".parse().unwrap())
        );
    }
}
