//! `amt-relay`: an RFC 7450 AMT relay for the lab.
//!
//! Protocol logic is the sans-IO core `amt_gateway::relay::Relay`; this file
//! is the I/O around it: one UDP socket on the AMT port, native reception
//! of the subscribed (S,G) channels on the LAN, and status output.
//!
//! Native reception (decision): raw sockets of protocol UDP, which the
//! kernel hands every local UDP datagram *with* the network header for IPv4.
//! The relay joins each wanted (S,G) on these sockets (IGMPv3/MLDv2 source
//! -specific join on the LAN interface; IP(V6)_MULTICAST_ALL off so only
//! its own joins are delivered), so any UDP port works and the encapsulated
//! packet is the packet as received (TTL included). IPv6 raw sockets do not
//! return the IPv6 header, so it is rebuilt from IPV6_PKTINFO (destination),
//! the sender address (source), IPV6_HOPLIMIT and IPV6_TCLASS; the flow
//! label and extension headers are not preserved. Raw sockets also see
//! multicast looped back on the same host, so a one-namespace test works.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amt_gateway::relay::{Relay, RelayConfig, RelayInput};
use amt_gateway::wire::amt::{MULTICAST_DATA_HEADER, RELAY_PORT};
use amt_gateway::wire::ip;
use anyhow::{Context, bail};
use clap::Parser;
use sample_network::channel::Channel;
use sample_network::iface::Interface;
use sample_network::mcast::{force_recv_buffer, join_ssm, leave_ssm};
use sample_network::signal;
use serde_json::json;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const LONG_ABOUT: &str = "\
An RFC 7450 AMT relay for the lab.

Gateways send Relay Discovery / Request / Membership Update to --listen
(UDP, default port 2268). The relay answers with Advertisements and
Membership Queries (IGMPv3 for IPv4 data, MLDv2 for IPv6 data) carrying a
Response MAC derived from the gateway's address, port and nonce and a
secret that rotates every --secret-rotation seconds (current and previous
secrets accepted). Updates with unknown nonces or bad MACs are rejected and
counted.

For every (S,G) some gateway subscribed, the relay makes a source-specific
join on its LAN (--lan-interface) and forwards each received packet, whole
IP header included, in a Multicast Data message to every subscribed
gateway. A subscription expires QRV x QQI + QRI after the last report; a
leave (BLOCK) stops forwarding at once.

Status: a JSON line on stdout every --status-interval seconds (and on
SIGUSR1), with per-gateway channels and forwarded packet counts; the same
object is written atomically to --status-file if given. Events (channel
added/removed, joins) are JSON lines too.

Examples:
  amt-relay --lan-interface eth1
  amt-relay --listen 10.0.0.1:2268 --lan-address 10.1.0.1 --qqi 10 --status-file /run/relay.json
  amt-relay --listen [::]:2268 --lan-interface eth1 --refuse";

#[derive(Debug, Parser)]
#[command(name = "amt-relay", version, about = "RFC 7450 AMT relay for the lab", long_about = LONG_ABOUT)]
struct Args {
    /// AMT address and port to listen on ([::]:PORT is dual-stack).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RELAY_PORT))]
    listen: SocketAddr,
    /// LAN interface (name or one of its addresses) where native multicast
    /// is joined and received. Default: the kernel's choice by route.
    #[arg(long, value_name = "IFACE")]
    lan_interface: Option<String>,
    /// LAN interface given by address (same as --lan-interface ADDR).
    #[arg(long, value_name = "ADDR", conflicts_with = "lan_interface")]
    lan_address: Option<IpAddr>,
    /// Relay address to put in Relay Advertisements (default: the address
    /// the Discovery arrived on, or the --listen address if specific).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<IpAddr>,
    /// Query interval announced to gateways (they refresh this often).
    #[arg(long, value_name = "SECS", default_value_t = 125)]
    qqi: u64,
    /// Robustness variable announced to gateways.
    #[arg(long, value_name = "N", default_value_t = 2)]
    qrv: u8,
    /// Query response interval (Max Resp Code); capped at half the QQI.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    qri: f64,
    /// Secret rotation period for the Response MAC.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    secret_rotation: u64,
    /// Refuse new gateways: set the L flag in queries and ignore their Updates.
    #[arg(long)]
    refuse: bool,
    /// Append the gateway's address and port to queries (G flag), as a
    /// relay behind which gateways may be NATed would.
    #[arg(long)]
    gateway_address: bool,
    /// Seconds between status lines on stdout (0: only on SIGUSR1).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    status_interval: f64,
    /// Also write each status object to this file (atomic replace).
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    /// Receive buffer for native multicast sockets (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    recv_buffer: usize,
}

static STATUS_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int) {
    STATUS_REQUESTED.store(true, Ordering::SeqCst);
}

fn install_sigusr1() -> io::Result<()> {
    // SAFETY: zeroed sigaction is valid; handler and empty mask set; no SA_RESTART
    // so poll() returns EINTR and the status goes out at once.
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = on_sigusr1 as *const () as libc::sighandler_t;
    // SAFETY: valid sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: action fully initialised.
    if unsafe { libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn event(kind: &str, fields: serde_json::Value) {
    let mut v = json!({ "kind": kind, "unix_ms": unix_ms() as u64 });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), fields.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    println!("{v}");
    let _ = io::stdout().flush();
}

/// The address the kernel would use towards `dest` (no packet is sent).
fn route_source(dest: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(any).ok()?;
    probe.connect(dest).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

#[derive(Default)]
struct IoStats {
    native_packets: u64,
    native_unmatched: u64,
    forwarded: u64,
    send_errors: u64,
    join_errors: u64,
}

struct Native {
    raw4: Socket,
    raw6: Option<Socket>,
    iface: Option<Interface>,
    joined: BTreeSet<(IpAddr, IpAddr)>,
}

impl Native {
    fn open(iface: Option<Interface>, recv_buffer: usize) -> anyhow::Result<Self> {
        let raw4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
            .context("raw IPv4 socket (needs CAP_NET_RAW)")?;
        raw4.set_multicast_all_v4(false)?;
        let _ = force_recv_buffer(&raw4, recv_buffer);
        raw4.set_nonblocking(true)?;
        let raw6 = match Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::UDP)) {
            Ok(s) => {
                let _ = s.set_multicast_all_v6(false);
                let _ = force_recv_buffer(&s, recv_buffer);
                for opt in [
                    libc::IPV6_RECVPKTINFO,
                    libc::IPV6_RECVHOPLIMIT,
                    libc::IPV6_RECVTCLASS,
                ] {
                    set_int(&s, libc::IPPROTO_IPV6, opt, 1)?;
                }
                s.set_nonblocking(true)?;
                Some(s)
            }
            Err(e) => {
                event(
                    "warning",
                    json!({ "message": format!("no IPv6 native reception: {e}") }),
                );
                None
            }
        };
        Ok(Self {
            raw4,
            raw6,
            iface,
            joined: BTreeSet::new(),
        })
    }

    /// Makes the native joins equal to `wanted`.
    fn sync(&mut self, wanted: &BTreeSet<(IpAddr, IpAddr)>, stats: &mut IoStats) {
        let to_leave: Vec<_> = self.joined.difference(wanted).copied().collect();
        let to_join: Vec<_> = wanted.difference(&self.joined).copied().collect();
        for (s, g) in to_leave {
            if let (Ok(ch), Some(sock)) = (Channel::new(s, g), self.socket_for(g)) {
                let _ = leave_ssm(sock, &ch, self.iface.as_ref());
            }
            self.joined.remove(&(s, g));
            event("native_leave", json!({ "source": s, "group": g }));
        }
        for (s, g) in to_join {
            let result = match (Channel::new(s, g), self.socket_for(g)) {
                (Ok(ch), Some(sock)) => {
                    join_ssm(sock, &ch, self.iface.as_ref()).map_err(|e| e.to_string())
                }
                (Err(e), _) => Err(e.to_string()),
                (_, None) => Err("no IPv6 socket".to_string()),
            };
            match result {
                Ok(()) => {
                    self.joined.insert((s, g));
                    event("native_join", json!({ "source": s, "group": g }));
                }
                Err(e) => {
                    stats.join_errors += 1;
                    event(
                        "native_join_failed",
                        json!({ "source": s, "group": g, "error": e }),
                    );
                }
            }
        }
    }

    fn socket_for(&self, group: IpAddr) -> Option<&Socket> {
        match group {
            IpAddr::V4(_) => Some(&self.raw4),
            IpAddr::V6(_) => self.raw6.as_ref(),
        }
    }
}

fn set_int(
    sock: &Socket,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `[Multicast Data header][packet]` to `dest` without copying.
fn send_data(
    ctrl_fd: libc::c_int,
    ctrl_v6: bool,
    dest: SocketAddr,
    packet: &[u8],
) -> io::Result<()> {
    let dest = match (ctrl_v6, dest) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        (_, d) => d,
    };
    let addr = SockAddr::from(dest);
    let mut iov = [
        libc::iovec {
            iov_base: MULTICAST_DATA_HEADER.as_ptr() as *mut libc::c_void,
            iov_len: MULTICAST_DATA_HEADER.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        },
    ];
    // SAFETY: zeroed msghdr is valid; we point it at live stack/slice data.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: msg describes valid buffers for the duration of the call; the
    // kernel only reads them (the mut casts are required by the C API).
    let n = unsafe { libc::sendmsg(ctrl_fd, &msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one IPv6 UDP datagram from the raw socket into `buf[40..]` and
/// writes a rebuilt IPv6 header into `buf[..40]`. Returns the packet length.
fn recv_v6(sock: &Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
    const HDR: usize = 40;
    let mut from: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    let mut cmsg_space = [0u64; 16];
    let payload = &mut buf[HDR..];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: zeroed msghdr is valid; fields point at live buffers below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_space.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&cmsg_space) as _;
    // SAFETY: msg points at valid, writable buffers of the declared sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if msg.msg_flags & libc::MSG_TRUNC != 0 || n > u16::MAX as usize {
        return Ok(None);
    }
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut hop_limit = 64u8;
    let mut tclass = 0u8;
    // SAFETY: standard CMSG iteration over the control buffer the kernel filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    hop_limit =
                        std::ptr::read_unaligned(data.cast::<libc::c_int>()).clamp(0, 255) as u8;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                    tclass =
                        std::ptr::read_unaligned(data.cast::<libc::c_int>()).clamp(0, 255) as u8;
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = Ipv6Addr::from(from.sin6_addr.s6_addr);
    let hdr = &mut buf[..HDR];
    hdr[0] = 0x60 | (tclass >> 4);
    hdr[1] = tclass << 4;
    hdr[2] = 0;
    hdr[3] = 0;
    hdr[4..6].copy_from_slice(&(n as u16).to_be_bytes());
    hdr[6] = 17;
    hdr[7] = hop_limit;
    hdr[8..24].copy_from_slice(&src.octets());
    hdr[24..40].copy_from_slice(&dst.octets());
    Ok(Some(HDR + n))
}

fn status_object(
    relay: &Relay,
    native: &Native,
    io_stats: &IoStats,
    started: Instant,
    now: Instant,
) -> serde_json::Value {
    let gateways: Vec<serde_json::Value> = relay
        .gateways()
        .into_iter()
        .map(|g| {
            let channels: Vec<serde_json::Value> = g
                .channels
                .iter()
                .map(|(s, gr, c)| {
                    json!({
                        "source": s,
                        "group": gr,
                        "expires_in_s": c.expires.saturating_duration_since(now).as_secs_f64(),
                        "packets": c.packets,
                        "bytes": c.bytes,
                    })
                })
                .collect();
            json!({ "gateway": g.gateway.to_string(), "channels": channels })
        })
        .collect();
    let joined: Vec<serde_json::Value> = native
        .joined
        .iter()
        .map(|(s, g)| json!({ "source": s, "group": g }))
        .collect();
    let s = relay.stats();
    json!({
        "kind": "status",
        "unix_ms": unix_ms() as u64,
        "uptime_s": now.duration_since(started).as_secs_f64(),
        "refuse": relay.config().refuse,
        "gateways": gateways,
        "joined": joined,
        "stats": {
            "discoveries": s.discoveries,
            "requests": s.requests,
            "queries_sent": s.queries_sent,
            "updates_accepted": s.updates_accepted,
            "teardowns_accepted": s.teardowns_accepted,
            "malformed": s.malformed,
            "unexpected": s.unexpected,
            "unknown_nonce": s.unknown_nonce,
            "bad_mac": s.bad_mac,
            "refused": s.refused,
            "exclude_records": s.exclude_records,
            "expired": s.expired,
            "secret_rotations": s.secret_rotations,
            "native_packets": io_stats.native_packets,
            "native_unmatched": io_stats.native_unmatched,
            "forwarded": io_stats.forwarded,
            "send_errors": io_stats.send_errors,
            "join_errors": io_stats.join_errors,
        },
    })
}

fn write_status_file(path: &PathBuf, value: &serde_json::Value) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{value}\n"))?;
    std::fs::rename(&tmp, path)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("amt-relay: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    signal::install_stop_handler().context("signal handlers")?;
    install_sigusr1().context("SIGUSR1 handler")?;
    let iface = match (&args.lan_interface, args.lan_address) {
        (Some(spec), _) => Some(Interface::find(spec)?),
        (None, Some(addr)) => Some(Interface::find(&addr.to_string())?),
        (None, None) => None,
    };
    if args.qqi == 0 {
        bail!("--qqi must be at least 1");
    }
    let qqi = Duration::from_secs(args.qqi);
    let qri = Duration::from_secs_f64(args.qri.max(0.1)).min(qqi / 2);
    let cfg = RelayConfig {
        advertised: args
            .advertise
            .or((!args.listen.ip().is_unspecified()).then_some(args.listen.ip())),
        qqi,
        qrv: args.qrv.clamp(1, 7),
        qri,
        secret_rotation: Duration::from_secs(args.secret_rotation.max(1)),
        refuse: args.refuse,
        send_gateway_address: args.gateway_address,
        ..RelayConfig::default()
    };

    let ctrl = Socket::new(
        Domain::for_address(args.listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if args.listen.is_ipv6() && args.listen.ip().is_unspecified() {
        let _ = ctrl.set_only_v6(false);
    }
    ctrl.set_reuse_address(true)?;
    ctrl.bind(&args.listen.into())
        .with_context(|| format!("binding {}", args.listen))?;
    ctrl.set_nonblocking(true)?;
    let ctrl_v6 = args.listen.is_ipv6();
    let ctrl: UdpSocket = ctrl.into();
    let mut native = Native::open(iface.clone(), args.recv_buffer)?;

    let started = Instant::now();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id());
    let mut relay = Relay::new(cfg, started, seed);
    let mut io_stats = IoStats::default();
    event(
        "started",
        json!({
            "listen": args.listen.to_string(),
            "lan_interface": iface.as_ref().map(|i| i.name.clone()),
            "qqi_s": qqi.as_secs(),
            "qrv": args.qrv,
            "refuse": args.refuse,
        }),
    );

    let status_every =
        (args.status_interval > 0.0).then(|| Duration::from_secs_f64(args.status_interval));
    let mut next_status = status_every.map(|d| started + d);
    let mut buf = vec![0u8; 65_536 + 64];
    let mut ctrl_buf = vec![0u8; 65_536];

    while !signal::stop_requested() {
        let now = Instant::now();
        let mut deadline = relay.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        if let Some(ns) = next_status {
            deadline = deadline.min(ns);
        }
        let wait_ms = deadline
            .saturating_duration_since(now)
            .as_millis()
            .clamp(0, 1000) as libc::c_int;
        let mut fds = [
            libc::pollfd {
                fd: ctrl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: native.raw4.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: native.raw6.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of pollfd; negative fds are ignored by poll.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("poll");
            }
        }
        let now = Instant::now();

        // Control messages.
        let mut changed = false;
        for _ in 0..256 {
            let (n, from) = match ctrl.recv_from(&mut ctrl_buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            let payload = &ctrl_buf[..n];
            // Only a Discovery needs the local address (for the Advertisement).
            let local_ip = if payload.first() == Some(&0x01) && relay.config().advertised.is_none()
            {
                route_source(from).unwrap_or(args.listen.ip())
            } else {
                args.listen.ip()
            };
            let before: BTreeSet<_> = relay
                .gateways()
                .iter()
                .flat_map(|g| {
                    g.channels
                        .iter()
                        .map(move |(s, gr, _)| (g.gateway, *s, *gr))
                })
                .collect();
            if let RelayInput::Control { changed: true } =
                relay.handle_datagram(now, from, local_ip, payload)
            {
                changed = true;
                let after: BTreeSet<_> = relay
                    .gateways()
                    .iter()
                    .flat_map(|g| {
                        g.channels
                            .iter()
                            .map(move |(s, gr, _)| (g.gateway, *s, *gr))
                    })
                    .collect();
                for (gw, s, g) in after.difference(&before) {
                    event(
                        "channel_added",
                        json!({ "gateway": gw.to_string(), "source": s, "group": g }),
                    );
                }
                for (gw, s, g) in before.difference(&after) {
                    event(
                        "channel_removed",
                        json!({ "gateway": gw.to_string(), "source": s, "group": g }),
                    );
                }
            }
            while let Some(tx) = relay.poll_transmit() {
                let dest = match (ctrl_v6, tx.destination) {
                    (true, SocketAddr::V4(v4)) => {
                        SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
                    }
                    (_, d) => d,
                };
                if ctrl.send_to(&tx.payload, dest).is_err() {
                    io_stats.send_errors += 1;
                }
            }
        }

        // Timers.
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            let before: BTreeSet<_> = relay.channels();
            if relay.handle_timeout(now) {
                changed = true;
                for (s, g) in before.difference(&relay.channels()) {
                    event("channel_expired", json!({ "source": s, "group": g }));
                }
            }
        }
        if changed {
            let wanted = relay.channels();
            native.sync(&wanted, &mut io_stats);
        }

        // Native IPv4 multicast.
        let ctrl_fd = ctrl.as_raw_fd();
        for _ in 0..1024 {
            // SAFETY: recv into our buffer; MSG_DONTWAIT keeps it non-blocking.
            let n = unsafe {
                libc::recv(
                    native.raw4.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                break;
            }
            let packet = &buf[..n as usize];
            let Ok(info) = ip::inspect(packet) else {
                continue;
            };
            if !info.dst.is_multicast() {
                continue;
            }
            io_stats.native_packets += 1;
            let gateways = relay.forward(info.src, info.dst, info.len);
            if gateways.is_empty() {
                io_stats.native_unmatched += 1;
            }
            for gw in gateways {
                match send_data(ctrl_fd, ctrl_v6, *gw, &packet[..info.len]) {
                    Ok(()) => io_stats.forwarded += 1,
                    Err(_) => io_stats.send_errors += 1,
                }
            }
        }

        // Native IPv6 multicast.
        if let Some(raw6) = native.raw6.as_ref() {
            for _ in 0..1024 {
                let len = match recv_v6(raw6, &mut buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => continue,
                    Err(_) => break,
                };
                let Ok(info) = ip::inspect(&buf[..len]) else {
                    continue;
                };
                if !info.dst.is_multicast() {
                    continue;
                }
                io_stats.native_packets += 1;
                let gateways = relay.forward(info.src, info.dst, len);
                if gateways.is_empty() {
                    io_stats.native_unmatched += 1;
                }
                for gw in gateways {
                    match send_data(ctrl_fd, ctrl_v6, *gw, &buf[..len]) {
                        Ok(()) => io_stats.forwarded += 1,
                        Err(_) => io_stats.send_errors += 1,
                    }
                }
            }
        }

        // Status.
        let due = next_status.is_some_and(|t| t <= now);
        if due || STATUS_REQUESTED.swap(false, Ordering::SeqCst) {
            let status = status_object(&relay, &native, &io_stats, started, now);
            println!("{status}");
            let _ = io::stdout().flush();
            if let Some(path) = &args.status_file
                && let Err(e) = write_status_file(path, &status)
            {
                eprintln!("amt-relay: writing {}: {e}", path.display());
            }
            if due {
                next_status = status_every.map(|d| now + d);
            }
        }
    }
    event("stopped", json!({ "signal": signal::stop_signal_name() }));
    Ok(())
}
