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
use amt_gateway::wire::amt::MULTICAST_DATA_HEADER;
use amt_gateway::wire::ip;
use anyhow::{Context, bail};
use clap::Parser;
use ingest_types::AMT_PORT;
use ingest_types::SourceGroup;
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

Synthetic source (benchmarks): --synthetic S,G makes the relay generate
Multicast Data for (S,G) itself once a gateway has subscribed it (after
--synthetic-delay): IPv4/IPv6 UDP packets to --synthetic-port with the lab
probe payload (8-byte sequence from 0, 8-byte send time in ns, zero padding
to --synthetic-size bytes; valid checksums), paced at --synthetic-rate
packets/s and sent in sendmmsg batches to every subscribed gateway, until
--synthetic-count packets or --synthetic-duration seconds. Events
synthetic_armed / synthetic_started, then one synthetic_summary JSON line
(sent, achieved_pps, skipped, send errors). Native forwarding is unchanged.

Examples:
  amt-relay --lan-interface eth1
  amt-relay --listen 10.0.0.1:2268 --lan-address 10.1.0.1 --qqi 10 --status-file /run/relay.json
  amt-relay --listen [::]:2268 --lan-interface eth1 --refuse
  amt-relay --listen 10.99.0.1:2268 --synthetic 10.99.0.1,232.9.9.9 --synthetic-rate 100000 --synthetic-size 1316 --synthetic-duration 5";

#[derive(Debug, Parser)]
#[command(name = "amt-relay", version, about = "RFC 7450 AMT relay for the lab", long_about = LONG_ABOUT)]
struct Args {
    /// AMT address and port to listen on ([::]:PORT is dual-stack).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), AMT_PORT))]
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
    /// Generate Multicast Data for this channel once a gateway subscribes it.
    #[arg(long, value_name = "S,G")]
    synthetic: Option<SourceGroup>,
    /// Synthetic packets per second (per gateway).
    #[arg(
        long,
        value_name = "PPS",
        default_value_t = 10_000,
        requires = "synthetic"
    )]
    synthetic_rate: u64,
    /// Synthetic UDP payload size (at least 16: the probe header).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 1316,
        requires = "synthetic"
    )]
    synthetic_size: usize,
    /// UDP source and destination port of synthetic packets.
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 5000,
        requires = "synthetic"
    )]
    synthetic_port: u16,
    /// Stop generating after this many packets.
    #[arg(long, value_name = "N", requires = "synthetic")]
    synthetic_count: Option<u64>,
    /// Stop generating after this many seconds (RATE x SECS packets).
    #[arg(long, value_name = "SECS", requires = "synthetic")]
    synthetic_duration: Option<f64>,
    /// Wait this long after the subscription before sending.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 1.0,
        requires = "synthetic"
    )]
    synthetic_delay: f64,
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
    joined: BTreeSet<SourceGroup>,
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
    fn sync(&mut self, wanted: &BTreeSet<SourceGroup>, stats: &mut IoStats) {
        let to_leave: Vec<_> = self.joined.difference(wanted).copied().collect();
        let to_join: Vec<_> = wanted.difference(&self.joined).copied().collect();
        for channel in to_leave {
            let (s, g) = (channel.source, channel.group);
            if let (Ok(ch), Some(sock)) = (SourceGroup::new(s, g), self.socket_for(g)) {
                let _ = leave_ssm(sock, &ch, self.iface.as_ref());
            }
            self.joined.remove(&channel);
            event("native_leave", json!({ "source": s, "group": g }));
        }
        for channel in to_join {
            let (s, g) = (channel.source, channel.group);
            let result = match (SourceGroup::new(s, g), self.socket_for(g)) {
                (Ok(ch), Some(sock)) => {
                    join_ssm(sock, &ch, self.iface.as_ref()).map_err(|e| e.to_string())
                }
                (Err(e), _) => Err(e.to_string()),
                (_, None) => Err("no IPv6 socket".to_string()),
            };
            match result {
                Ok(()) => {
                    self.joined.insert(channel);
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
                .map(|(sg, c)| {
                    json!({
                        "source": sg.source,
                        "group": sg.group,
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
        .map(|sg| json!({ "source": sg.source, "group": sg.group }))
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

/// Packets per `sendmmsg` call of the synthetic source.
const SYNTHETIC_BATCH: usize = 64;
/// Shortest sleep between synthetic send rounds: at high rates a round
/// sends everything due, so rounds are ~1 ms apart (100 packets at 100k/s).
const SYNTHETIC_TICK: Duration = Duration::from_millis(1);
/// Backlog sent at once after a stall; older due packets are skipped.
const SYNTHETIC_MAX_BACKLOG: Duration = Duration::from_millis(100);

enum SyntheticPhase {
    /// No gateway has subscribed the channel yet.
    Waiting,
    Armed {
        start_at: Instant,
    },
    Sending,
    Done,
}

/// The `--synthetic` run: waits for a subscription, then sends at the
/// fixed rate until the limit (one run per process).
struct SyntheticRun {
    channel: SourceGroup,
    rate: u64,
    payload_len: usize,
    port: u16,
    limit: Option<u64>,
    delay: Duration,
    sender: synthetic::BatchSender,
    phase: SyntheticPhase,
    pacer: Option<synthetic::Pacer>,
    subscribed: bool,
    gateways: Vec<SocketAddr>,
    max_gateways: usize,
    datagrams: u64,
    send_errors: u64,
    would_block: u64,
    start: Option<Instant>,
    last_send: Option<Instant>,
}

impl SyntheticRun {
    fn new(args: &Args, channel: SourceGroup) -> anyhow::Result<Self> {
        if args.synthetic_rate == 0 {
            bail!("--synthetic-rate must be at least 1");
        }
        if !(args.synthetic_delay.is_finite() && args.synthetic_delay >= 0.0) {
            bail!("--synthetic-delay must be a non-negative number");
        }
        let by_duration = match args.synthetic_duration {
            Some(d) if d.is_finite() && d > 0.0 => {
                Some((d * args.synthetic_rate as f64).ceil() as u64)
            }
            Some(_) => bail!("--synthetic-duration must be a positive number"),
            None => None,
        };
        let limit = match (args.synthetic_count, by_duration) {
            (Some(c), Some(d)) => Some(c.min(d)),
            (c, d) => c.or(d),
        };
        let template =
            synthetic::DataTemplate::new(channel, args.synthetic_port, args.synthetic_size)
                .context("--synthetic-size")?;
        Ok(Self {
            channel,
            rate: args.synthetic_rate,
            payload_len: args.synthetic_size,
            port: args.synthetic_port,
            limit,
            delay: Duration::from_secs_f64(args.synthetic_delay),
            sender: synthetic::BatchSender::new(template, SYNTHETIC_BATCH),
            phase: SyntheticPhase::Waiting,
            pacer: None,
            subscribed: false,
            gateways: Vec::new(),
            max_gateways: 0,
            datagrams: 0,
            send_errors: 0,
            would_block: 0,
            start: None,
            last_send: None,
        })
    }

    fn set_subscribed(&mut self, subscribed: bool, now: Instant) {
        self.subscribed = subscribed;
        if subscribed && matches!(self.phase, SyntheticPhase::Waiting) {
            self.phase = SyntheticPhase::Armed {
                start_at: now + self.delay,
            };
            event(
                "synthetic_armed",
                json!({
                    "source": self.channel.source,
                    "group": self.channel.group,
                    "starts_in_s": self.delay.as_secs_f64(),
                }),
            );
        }
    }

    /// When the main loop must wake up for the next send round.
    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        match self.phase {
            SyntheticPhase::Armed { start_at } => Some(start_at),
            SyntheticPhase::Sending if self.subscribed => self
                .pacer
                .as_ref()
                .and_then(|p| p.next_due())
                .map(|t| t.max(now + SYNTHETIC_TICK)),
            _ => None,
        }
    }

    /// Sends everything due at `now` (batched); prints the summary when done.
    fn run(&mut self, now: Instant, relay: &mut Relay, fd: libc::c_int, v6_socket: bool) {
        if let SyntheticPhase::Armed { start_at } = self.phase {
            if now < start_at {
                return;
            }
            self.phase = SyntheticPhase::Sending;
            self.start = Some(start_at);
            self.pacer = Some(synthetic::Pacer::new(
                self.rate,
                start_at,
                self.limit,
                SYNTHETIC_MAX_BACKLOG,
            ));
            event(
                "synthetic_started",
                json!({
                    "source": self.channel.source,
                    "group": self.channel.group,
                    "rate_pps": self.rate,
                    "payload_bytes": self.payload_len,
                    "limit": self.limit,
                }),
            );
        }
        if !matches!(self.phase, SyntheticPhase::Sending) {
            return;
        }
        let Some(pacer) = self.pacer.as_mut() else {
            return;
        };
        let channel = self.channel;
        let packet_len = self.sender.packet_len();
        loop {
            let due = pacer.due(now);
            if due == 0 || !self.subscribed {
                break;
            }
            let count = (due as usize).min(self.sender.batch());
            self.gateways.clear();
            self.gateways
                .extend_from_slice(relay.forward(channel, packet_len));
            if self.gateways.is_empty() {
                break;
            }
            self.max_gateways = self.max_gateways.max(self.gateways.len());
            let first = pacer.taken();
            self.sender.stamp(first, count, unix_ns());
            // The sequence advances by what reached the first gateway; a
            // shortfall towards the others is counted as send errors.
            let mut advanced = 0;
            for (i, gw) in self.gateways.iter().enumerate() {
                let sent = match self.sender.send(fd, v6_socket, *gw, count) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(_) => {
                        self.send_errors += 1;
                        0
                    }
                };
                self.datagrams += sent as u64;
                if i == 0 {
                    advanced = sent;
                } else {
                    self.send_errors += count.saturating_sub(sent) as u64;
                }
            }
            // Count the rest of the batch for the relay's per-channel stats.
            for _ in 1..advanced {
                relay.forward(channel, packet_len);
            }
            pacer.take(advanced as u64);
            if advanced > 0 {
                self.last_send = Some(now);
            }
            if advanced < count {
                // Socket buffer full: the rest stays due for the next round.
                self.would_block += 1;
                break;
            }
        }
        if pacer.finished() {
            self.phase = SyntheticPhase::Done;
            println!("{}", self.summary("limit"));
            let _ = io::stdout().flush();
        }
    }

    fn summary(&self, stopped_by: &str) -> serde_json::Value {
        let (sent, skipped) = self
            .pacer
            .as_ref()
            .map_or((0, 0), |p| (p.taken(), p.skipped()));
        let elapsed = match (self.start, self.last_send) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        json!({
            "kind": "synthetic_summary",
            "unix_ms": unix_ms() as u64,
            "source": self.channel.source,
            "group": self.channel.group,
            "port": self.port,
            "rate_pps": self.rate,
            "payload_bytes": self.payload_len,
            "packet_bytes": self.sender.packet_len(),
            "datagram_bytes": self.sender.datagram_len(),
            "limit": self.limit,
            "sent": sent,
            "skipped": skipped,
            "datagrams": self.datagrams,
            "gateways": self.max_gateways,
            "send_errors": self.send_errors,
            "would_block_rounds": self.would_block,
            "elapsed_s": elapsed,
            "achieved_pps": if elapsed > 0.0 { (sent as f64 / elapsed).round() } else { 0.0 },
            "stopped_by": stopped_by,
        })
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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
    let mut synthetic = match args.synthetic {
        Some(channel) => Some(SyntheticRun::new(&args, channel)?),
        None => None,
    };

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
        if let Some(t) = synthetic.as_ref().and_then(|s| s.next_wakeup(now)) {
            deadline = deadline.min(t);
        }
        // ppoll for sub-millisecond wakeups (the synthetic source's pacing).
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_secs(1));
        let wait = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
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
        // SAFETY: fds is a valid array of pollfd (negative fds are ignored);
        // wait is a valid timespec; a null sigmask keeps the current mask.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &wait,
                std::ptr::null(),
            )
        };
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
                .flat_map(|g| g.channels.iter().map(move |(sg, _)| (g.gateway, *sg)))
                .collect();
            if let RelayInput::Control { changed: true } =
                relay.handle_datagram(now, from, local_ip, payload)
            {
                changed = true;
                let after: BTreeSet<_> = relay
                    .gateways()
                    .iter()
                    .flat_map(|g| g.channels.iter().map(move |(sg, _)| (g.gateway, *sg)))
                    .collect();
                for (gw, sg) in after.difference(&before) {
                    event(
                        "channel_added",
                        json!({ "gateway": gw.to_string(), "source": sg.source, "group": sg.group }),
                    );
                }
                for (gw, sg) in before.difference(&after) {
                    event(
                        "channel_removed",
                        json!({ "gateway": gw.to_string(), "source": sg.source, "group": sg.group }),
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
                for sg in before.difference(&relay.channels()) {
                    event(
                        "channel_expired",
                        json!({ "source": sg.source, "group": sg.group }),
                    );
                }
            }
        }
        if changed {
            let wanted = relay.channels();
            native.sync(&wanted, &mut io_stats);
            if let Some(syn) = synthetic.as_mut() {
                syn.set_subscribed(wanted.contains(&syn.channel), now);
            }
        }
        if let Some(syn) = synthetic.as_mut() {
            syn.run(now, &mut relay, ctrl.as_raw_fd(), ctrl_v6);
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
            let gateways = relay.forward(
                SourceGroup {
                    source: info.src,
                    group: info.dst,
                },
                info.len,
            );
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
                let gateways = relay.forward(
                    SourceGroup {
                        source: info.src,
                        group: info.dst,
                    },
                    len,
                );
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
    if let Some(syn) = synthetic.as_ref()
        && matches!(syn.phase, SyntheticPhase::Sending)
    {
        println!("{}", syn.summary("signal"));
    }
    event("stopped", json!({ "signal": signal::stop_signal_name() }));
    Ok(())
}

/// Synthetic source (`--synthetic S,G`): generated Multicast Data for one
/// channel at a fixed rate, to benchmark a gateway's data path without a
/// native sender. Pure parts (datagram template, pacing) are sans-IO; the
/// batched `sendmmsg` is in [`synthetic::BatchSender`].
mod synthetic {
    use std::io;
    use std::mem;
    use std::net::{IpAddr, SocketAddr};
    use std::time::{Duration, Instant};

    use amt_gateway::wire::amt::MULTICAST_DATA_HEADER;
    use amt_gateway::wire::checksum;
    use amt_gateway::wire::ipv4::{Ipv4Repr, PROTO_UDP};
    use amt_gateway::wire::ipv6::{Ipv6Repr, NEXT_UDP};
    use ingest_types::SourceGroup;
    use sample_network::PAYLOAD_HEADER_LEN;
    use socket2::SockAddr;

    pub const UDP_HEADER_LEN: usize = 8;
    /// TTL / hop limit of generated packets (above the gateway's minimum, so
    /// the gateway's TTL patch is not exercised).
    const INNER_TTL: u8 = 64;

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum TemplateError {
        #[error("payload of {0} bytes is shorter than the {PAYLOAD_HEADER_LEN}-byte probe header")]
        PayloadTooShort(usize),
        #[error("payload of {0} bytes does not fit in one IP packet")]
        PayloadTooLong(usize),
        #[error("source {0} and group {1} are of different address families")]
        MixedFamilies(IpAddr, IpAddr),
    }

    /// One AMT Multicast Data datagram: `[AMT header][IP][UDP][probe]`; the
    /// probe payload is the lab's (sequence, send time, zero padding).
    #[derive(Debug, Clone)]
    pub struct DataTemplate {
        bytes: Vec<u8>,
        probe_offset: usize,
        udp_checksum_offset: usize,
        /// One's-complement sum of everything the UDP checksum covers except
        /// the 16 probe header bytes (pseudo-header, UDP header, zero padding).
        fixed_sum: u32,
    }

    impl DataTemplate {
        pub fn new(
            channel: SourceGroup,
            port: u16,
            payload_len: usize,
        ) -> Result<Self, TemplateError> {
            if payload_len < PAYLOAD_HEADER_LEN {
                return Err(TemplateError::PayloadTooShort(payload_len));
            }
            let udp_len = UDP_HEADER_LEN + payload_len;
            let too_long = TemplateError::PayloadTooLong(payload_len);
            let udp_len16 = u16::try_from(udp_len).map_err(|_| too_long.clone())?;
            let (ip_header, pseudo_sum) = match (channel.source, channel.group) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    let repr = Ipv4Repr {
                        src,
                        dst,
                        protocol: PROTO_UDP,
                        ttl: INNER_TTL,
                        tos: 0,
                        router_alert: false,
                        payload_len: udp_len,
                    };
                    let mut header = vec![0u8; repr.header_len()];
                    repr.emit(&mut header).map_err(|_| too_long.clone())?;
                    let mut sum = checksum::accumulate(0, &src.octets());
                    sum = checksum::accumulate(sum, &dst.octets());
                    sum = checksum::accumulate(sum, &[0, PROTO_UDP]);
                    sum = checksum::accumulate(sum, &udp_len16.to_be_bytes());
                    (header, sum)
                }
                (IpAddr::V6(src), IpAddr::V6(dst)) => {
                    let repr = Ipv6Repr {
                        src,
                        dst,
                        next_header: NEXT_UDP,
                        hop_limit: INNER_TTL,
                        router_alert: false,
                        payload_len: udp_len,
                    };
                    let mut header = vec![0u8; repr.header_len()];
                    repr.emit(&mut header).map_err(|_| too_long.clone())?;
                    let sum =
                        checksum::ipv6_pseudo_header_sum(&src, &dst, udp_len as u32, NEXT_UDP);
                    (header, sum)
                }
                (s, g) => return Err(TemplateError::MixedFamilies(s, g)),
            };
            let mut udp_header = [0u8; UDP_HEADER_LEN];
            udp_header[0..2].copy_from_slice(&port.to_be_bytes());
            udp_header[2..4].copy_from_slice(&port.to_be_bytes());
            udp_header[4..6].copy_from_slice(&udp_len16.to_be_bytes());
            let mut bytes =
                Vec::with_capacity(MULTICAST_DATA_HEADER.len() + ip_header.len() + udp_len);
            bytes.extend_from_slice(&MULTICAST_DATA_HEADER);
            bytes.extend_from_slice(&ip_header);
            let udp_offset = bytes.len();
            bytes.extend_from_slice(&udp_header);
            bytes.resize(udp_offset + udp_len, 0);
            Ok(Self {
                bytes,
                probe_offset: udp_offset + UDP_HEADER_LEN,
                udp_checksum_offset: udp_offset + 6,
                fixed_sum: checksum::accumulate(pseudo_sum, &udp_header),
            })
        }

        /// The whole datagram (probe header zero, UDP checksum not yet set).
        pub fn bytes(&self) -> &[u8] {
            &self.bytes
        }

        /// Length of the inner IP packet (what a gateway delivers).
        pub fn packet_len(&self) -> usize {
            self.bytes.len() - MULTICAST_DATA_HEADER.len()
        }

        /// Writes the probe header into `datagram` (a copy of [`Self::bytes`])
        /// and sets the UDP checksum; only 18 bytes change per packet.
        pub fn stamp(&self, datagram: &mut [u8], sequence: u64, sent_unix_ns: u64) {
            let mut probe = [0u8; PAYLOAD_HEADER_LEN];
            probe[..8].copy_from_slice(&sequence.to_be_bytes());
            probe[8..].copy_from_slice(&sent_unix_ns.to_be_bytes());
            let sum = match checksum::finish(checksum::accumulate(self.fixed_sum, &probe)) {
                // RFC 768: a computed zero is sent as all ones.
                0 => 0xffff,
                s => s,
            };
            if let Some(p) = datagram.get_mut(self.probe_offset..self.probe_offset + probe.len()) {
                p.copy_from_slice(&probe);
            }
            if let Some(c) =
                datagram.get_mut(self.udp_checksum_offset..self.udp_checksum_offset + 2)
            {
                c.copy_from_slice(&sum.to_be_bytes());
            }
        }
    }

    /// A fixed-rate schedule: packet k is due at `start + k / rate`. A
    /// backlog beyond `max_backlog` (after a stall) is skipped and counted,
    /// so a stalled sender never bursts more than that at once.
    #[derive(Debug, Clone)]
    pub struct Pacer {
        rate: u64,
        start: Instant,
        limit: Option<u64>,
        max_backlog: u64,
        taken: u64,
        skipped: u64,
    }

    impl Pacer {
        pub fn new(rate: u64, start: Instant, limit: Option<u64>, max_backlog: Duration) -> Self {
            let rate = rate.max(1);
            let max_backlog =
                ((u128::from(rate) * max_backlog.as_nanos() / 1_000_000_000) as u64).max(1);
            Self {
                rate,
                start,
                limit,
                max_backlog,
                taken: 0,
                skipped: 0,
            }
        }

        fn scheduled_by(&self, now: Instant) -> u64 {
            if now < self.start {
                return 0;
            }
            let elapsed = now.duration_since(self.start).as_nanos();
            let due = (elapsed * u128::from(self.rate) / 1_000_000_000) as u64 + 1;
            self.limit.map_or(due, |l| due.min(l))
        }

        /// Packets due at `now` and not yet taken or skipped.
        pub fn due(&mut self, now: Instant) -> u64 {
            let due = self
                .scheduled_by(now)
                .saturating_sub(self.taken + self.skipped);
            if due > self.max_backlog {
                self.skipped += due - self.max_backlog;
                self.max_backlog
            } else {
                due
            }
        }

        /// `n` packets were sent.
        pub fn take(&mut self, n: u64) {
            self.taken += n;
        }

        pub fn taken(&self) -> u64 {
            self.taken
        }

        pub fn skipped(&self) -> u64 {
            self.skipped
        }

        /// Every packet of a limited schedule was sent or skipped.
        pub fn finished(&self) -> bool {
            self.limit.is_some_and(|l| self.taken + self.skipped >= l)
        }

        /// When the next packet is due (None when finished).
        pub fn next_due(&self) -> Option<Instant> {
            if self.finished() {
                return None;
            }
            let k = u128::from(self.taken + self.skipped);
            let ns = k * 1_000_000_000 / u128::from(self.rate);
            Some(self.start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
        }
    }

    /// Up to `batch` copies of a template, sent with one `sendmmsg(2)`.
    pub struct BatchSender {
        template: DataTemplate,
        slots: Vec<u8>,
        slot_len: usize,
        batch: usize,
    }

    impl BatchSender {
        pub fn new(template: DataTemplate, batch: usize) -> Self {
            let batch = batch.max(1);
            let slot_len = template.bytes().len();
            let mut slots = Vec::with_capacity(slot_len * batch);
            for _ in 0..batch {
                slots.extend_from_slice(template.bytes());
            }
            Self {
                template,
                slots,
                slot_len,
                batch,
            }
        }

        pub fn batch(&self) -> usize {
            self.batch
        }

        pub fn datagram_len(&self) -> usize {
            self.slot_len
        }

        pub fn packet_len(&self) -> usize {
            self.template.packet_len()
        }

        /// Stamps slots `0..count` with sequences `first..first + count`.
        pub fn stamp(&mut self, first: u64, count: usize, sent_unix_ns: u64) {
            for (i, slot) in self
                .slots
                .chunks_exact_mut(self.slot_len)
                .take(count)
                .enumerate()
            {
                self.template.stamp(slot, first + i as u64, sent_unix_ns);
            }
        }

        /// Sends slots `0..count` to `dest`; returns how many the kernel took
        /// (fewer when the socket buffer is full).
        pub fn send(
            &mut self,
            fd: libc::c_int,
            v6_socket: bool,
            dest: SocketAddr,
            count: usize,
        ) -> io::Result<usize> {
            let dest = match (v6_socket, dest) {
                (true, SocketAddr::V4(v4)) => {
                    SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
                }
                (_, d) => d,
            };
            let addr = SockAddr::from(dest);
            let count = count.min(self.batch);
            let base = self.slots.as_mut_ptr();
            let mut iovecs: Vec<libc::iovec> = (0..count)
                .map(|i| libc::iovec {
                    // SAFETY: i < batch, so the slot lies inside `slots`.
                    iov_base: unsafe { base.add(i * self.slot_len) }.cast(),
                    iov_len: self.slot_len,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: all-zero is a valid mmsghdr.
                    let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
                    m.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                    m.msg_hdr.msg_namelen = addr.len();
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            // SAFETY: every mmsghdr points at live buffers (slots, iovecs,
            // addr) for the duration of the call; the kernel only reads them.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc as usize)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use amt_gateway::wire::ip;
        use amt_gateway::wire::ipv4::Ipv4Header;
        use sample_network::Probe;

        fn udp_checksum_ok(datagram: &[u8], channel: SourceGroup) -> bool {
            let inner = &datagram[MULTICAST_DATA_HEADER.len()..];
            let (udp, pseudo) = match (channel.source, channel.group) {
                (IpAddr::V4(s), IpAddr::V4(g)) => {
                    let h = Ipv4Header::parse(inner).unwrap();
                    assert!(h.checksum_ok());
                    let udp = h.payload();
                    let mut sum = checksum::accumulate(0, &s.octets());
                    sum = checksum::accumulate(sum, &g.octets());
                    sum = checksum::accumulate(sum, &[0, PROTO_UDP]);
                    sum = checksum::accumulate(sum, &(udp.len() as u16).to_be_bytes());
                    (udp, sum)
                }
                (IpAddr::V6(s), IpAddr::V6(g)) => {
                    let udp = &inner[40..];
                    let sum = checksum::ipv6_pseudo_header_sum(&s, &g, udp.len() as u32, NEXT_UDP);
                    (udp, sum)
                }
                _ => unreachable!(),
            };
            checksum::finish(checksum::accumulate(pseudo, udp)) == 0
        }

        #[test]
        fn ipv4_datagram_is_valid_amt_data_with_probe() {
            let ch: SourceGroup = "10.99.0.1,232.9.9.9".parse().unwrap();
            let t = DataTemplate::new(ch, 5000, 1316).unwrap();
            assert_eq!(t.packet_len(), 20 + 8 + 1316);
            assert_eq!(t.bytes().len(), 2 + 20 + 8 + 1316);
            for seq in [0u64, 1, 0xffff, u64::MAX - 3] {
                let mut d = t.bytes().to_vec();
                t.stamp(&mut d, seq, 1_700_000_000_123_456_789);
                assert_eq!(&d[..2], &MULTICAST_DATA_HEADER);
                let info = ip::inspect(&d[2..]).unwrap();
                assert_eq!((info.src, info.dst, info.len), (ch.source, ch.group, 1344));
                assert!(udp_checksum_ok(&d, ch), "seq {seq}");
                let probe = Probe::decode(&d[2 + 28..]).unwrap();
                assert_eq!(probe.sequence, seq);
                assert_eq!(probe.sent_unix_ns, Some(1_700_000_000_123_456_789));
                assert_eq!(u16::from_be_bytes([d[24], d[25]]), 5000);
            }
        }

        #[test]
        fn ipv6_datagram_checksum_and_lengths() {
            let ch: SourceGroup = "2001:db8:99::1,ff3e::8000:1".parse().unwrap();
            let t = DataTemplate::new(ch, 5000, 100).unwrap();
            assert_eq!(t.packet_len(), 40 + 8 + 100);
            let mut d = t.bytes().to_vec();
            t.stamp(&mut d, 42, 7);
            let info = ip::inspect(&d[2..]).unwrap();
            assert_eq!((info.src, info.dst, info.len), (ch.source, ch.group, 148));
            assert!(udp_checksum_ok(&d, ch));
        }

        #[test]
        fn template_rejects_bad_sizes() {
            let ch: SourceGroup = "10.99.0.1,232.9.9.9".parse().unwrap();
            assert_eq!(
                DataTemplate::new(ch, 1, 15).unwrap_err(),
                TemplateError::PayloadTooShort(15)
            );
            assert_eq!(
                DataTemplate::new(ch, 1, 70_000).unwrap_err(),
                TemplateError::PayloadTooLong(70_000)
            );
        }

        #[test]
        fn batch_sender_stamps_consecutive_sequences() {
            let ch: SourceGroup = "10.99.0.1,232.9.9.9".parse().unwrap();
            let mut s = BatchSender::new(DataTemplate::new(ch, 5000, 100).unwrap(), 4);
            s.stamp(10, 3, 1);
            let seqs: Vec<u64> = s
                .slots
                .chunks_exact(s.datagram_len())
                .map(|d| Probe::decode(&d[30..]).unwrap().sequence)
                .collect();
            assert_eq!(seqs, vec![10, 11, 12, 0]);
        }

        #[test]
        fn pacer_follows_the_rate_and_limit() {
            let t0 = Instant::now();
            let mut p = Pacer::new(1000, t0, Some(2500), Duration::from_millis(50));
            assert_eq!(p.due(t0), 1);
            p.take(1);
            assert_eq!(p.due(t0 + Duration::from_micros(999)), 0);
            assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(1)));
            assert_eq!(p.due(t0 + Duration::from_millis(10)), 10);
            p.take(10);
            assert_eq!(p.taken(), 11);
            assert!(!p.finished());
            // A 1 s stall: only 50 ms worth is sent, the rest skipped.
            assert_eq!(p.due(t0 + Duration::from_millis(1010)), 50);
            assert_eq!(p.skipped(), 1011 - 11 - 50);
            p.take(50);
            assert!(!p.finished());
            // The limit caps the schedule (2500 packets, not 10 s worth).
            assert_eq!(p.due(t0 + Duration::from_secs(10)), 50);
            p.take(50);
            assert_eq!(p.taken() + p.skipped(), 2500);
            assert!(p.finished());
            assert_eq!(p.due(t0 + Duration::from_secs(10)), 0);
            assert_eq!(p.next_due(), None);
        }

        #[test]
        fn pacer_before_start_has_nothing_due() {
            let t0 = Instant::now();
            let mut p = Pacer::new(
                100_000,
                t0 + Duration::from_secs(1),
                None,
                Duration::from_millis(10),
            );
            assert_eq!(p.due(t0), 0);
            assert_eq!(p.due(t0 + Duration::from_millis(1001)), 101);
            p.take(101);
            assert_eq!(p.skipped(), 0);
        }
    }
}
