//! The relay's event loop: one non-blocking thread that waits on the AMT
//! socket and the native raw sockets, feeds the core, forwards native
//! packets, runs the synthetic source and reports status.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amt_gateway::relay::{ChannelEvent, Relay, RelayConfig, RelayInput, RemoveReason};
use amt_gateway::wire::ip;
use ingest_types::SourceGroup;
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

use super::native::{Native, NativeError, recv_v6};
use super::output::{IoStats, event, print_line, status_object, write_status_file};
use super::synthetic::{SyntheticOptions, SyntheticRun};
use super::udp::{send_data, socket_destination};
use crate::iface::Interface;
use crate::signal;

/// Datagrams read from the AMT socket per loop round (then the other
/// sockets get their turn).
const CONTROL_BURST: usize = 256;
/// Native packets read per raw socket per loop round.
const NATIVE_BURST: usize = 1024;
/// Longest sleep of the loop (it rechecks the stop flag at least this often).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Everything the relay needs, checked by the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// AMT address and port ([::]:PORT is dual-stack).
    pub listen: SocketAddr,
    /// LAN interface for native joins (None: the kernel's choice by route).
    pub iface: Option<Interface>,
    pub config: RelayConfig,
    /// Status line period (None: only on SIGUSR1).
    pub status_interval: Option<Duration>,
    /// Also written here, atomically.
    pub status_file: Option<PathBuf>,
    /// Receive buffer of the native raw sockets (bytes).
    pub recv_buffer: usize,
    pub synthetic: Option<SyntheticOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("poll")]
    Poll(#[source] io::Error),
    #[error(transparent)]
    Native(#[from] NativeError),
    #[error(transparent)]
    Socket(#[from] io::Error),
}

/// Runs the relay until SIGINT/SIGTERM (the caller installs the handlers).
pub fn serve(options: Options) -> Result<(), ServeError> {
    let mut server = Server::open(options)?;
    server.run()?;
    server.finish();
    Ok(())
}

struct Server {
    options: Options,
    relay: Relay,
    ctrl: UdpSocket,
    ctrl_v6: bool,
    native: Native,
    synthetic: Option<SyntheticRun>,
    io_stats: IoStats,
    started: Instant,
    next_status: Option<Instant>,
    /// Native packets (room for a rebuilt IPv6 header in front).
    native_buf: Vec<u8>,
    ctrl_buf: Vec<u8>,
}

impl Server {
    fn open(options: Options) -> Result<Self, ServeError> {
        let ctrl = open_control_socket(options.listen)?;
        let native = Native::open(options.iface.clone(), options.recv_buffer)?;
        let synthetic = options.synthetic.clone().map(SyntheticRun::new);
        let started = Instant::now();
        let relay = Relay::new(options.config.clone(), started, random_seed());
        event(
            "started",
            json!({
                "listen": options.listen.to_string(),
                "lan_interface": options.iface.as_ref().map(|i| i.name.clone()),
                "qqi_s": options.config.qqi.as_secs(),
                "qrv": options.config.qrv,
                "refuse": options.config.refuse,
            }),
        );
        Ok(Self {
            next_status: options.status_interval.map(|d| started + d),
            ctrl_v6: options.listen.is_ipv6(),
            options,
            relay,
            ctrl,
            native,
            synthetic,
            io_stats: IoStats::default(),
            started,
            native_buf: vec![0u8; 65_536 + 64],
            ctrl_buf: vec![0u8; 65_536],
        })
    }

    fn run(&mut self) -> Result<(), ServeError> {
        while !signal::stop_requested() {
            self.wait(Instant::now())?;
            let now = Instant::now();
            let mut changed = self.receive_control(now);
            changed |= self.expire(now);
            if changed {
                self.sync_channels(now);
            }
            if let Some(syn) = self.synthetic.as_mut() {
                syn.run(now, &mut self.relay, self.ctrl.as_raw_fd(), self.ctrl_v6);
            }
            self.forward_native_v4();
            self.forward_native_v6();
            self.report_status(now);
        }
        Ok(())
    }

    fn finish(&self) {
        if let Some(syn) = self.synthetic.as_ref()
            && syn.is_sending()
        {
            println!("{}", syn.summary("signal"));
        }
        event("stopped", json!({ "signal": signal::stop_signal_name() }));
    }

    /// The next timer of the core, the status or the synthetic source.
    fn deadline(&self, now: Instant) -> Instant {
        let mut deadline = self.relay.poll_timeout().unwrap_or(now + MAX_WAIT);
        if let Some(ns) = self.next_status {
            deadline = deadline.min(ns);
        }
        if let Some(t) = self.synthetic.as_ref().and_then(|s| s.next_wakeup(now)) {
            deadline = deadline.min(t);
        }
        deadline
    }

    /// Sleeps until a socket is readable, a deadline passes or a signal
    /// arrives. ppoll for sub-millisecond wakeups (the synthetic source's
    /// pacing).
    fn wait(&self, now: Instant) -> Result<(), ServeError> {
        let wait = self
            .deadline(now)
            .saturating_duration_since(now)
            .min(MAX_WAIT);
        let wait = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        let readable = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [
            readable(self.ctrl.as_raw_fd()),
            readable(self.native.raw4.as_raw_fd()),
            readable(self.native.raw6.as_ref().map_or(-1, |s| s.as_raw_fd())),
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
                return Err(ServeError::Poll(e));
            }
        }
        Ok(())
    }

    /// Reads a burst of control datagrams; true when subscriptions changed.
    fn receive_control(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for _ in 0..CONTROL_BURST {
            let (n, from) = match self.ctrl.recv_from(&mut self.ctrl_buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            changed |= self.handle_control(now, from, n);
            self.send_transmits();
        }
        changed
    }

    /// Feeds one datagram (`ctrl_buf[..len]`) to the core; true when
    /// subscriptions changed.
    fn handle_control(&mut self, now: Instant, from: SocketAddr, len: usize) -> bool {
        let payload = &self.ctrl_buf[..len];
        let listen = self.options.listen.ip();
        // Only a Discovery needs the local address (for the Advertisement).
        let local_ip = if payload.first() == Some(&0x01) && self.relay.config().advertised.is_none()
        {
            route_source(from).unwrap_or(listen)
        } else {
            listen
        };
        let input = self.relay.handle_datagram(now, from, local_ip, payload);
        matches!(input, RelayInput::Control { changed: true })
    }

    /// Sends what the core queued (Advertisements, Queries).
    fn send_transmits(&mut self) {
        while let Some(tx) = self.relay.poll_transmit() {
            let dest = socket_destination(self.ctrl_v6, tx.destination);
            if self.ctrl.send_to(&tx.payload, dest).is_err() {
                self.io_stats.send_errors += 1;
            }
        }
    }

    /// Runs the core's timers; true when channels expired.
    fn expire(&mut self, now: Instant) -> bool {
        if self.relay.poll_timeout().is_none_or(|t| t > now) {
            return false;
        }
        self.relay.handle_timeout(now)
    }

    /// Reports the core's subscription changes and makes the native joins
    /// (and the synthetic source) follow them.
    fn sync_channels(&mut self, now: Instant) {
        // The core queues Unwanted right after the Removed that caused it.
        let mut last_removal_expired = false;
        while let Some(change) = self.relay.poll_channel_event() {
            match change {
                ChannelEvent::Added { gateway, channel } => {
                    channel_event("channel_added", Some(gateway), channel);
                }
                ChannelEvent::Removed {
                    gateway,
                    channel,
                    reason,
                } => {
                    // Expiry is reported per channel (below), not per gateway.
                    last_removal_expired = reason == RemoveReason::Expired;
                    if !last_removal_expired {
                        channel_event("channel_removed", Some(gateway), channel);
                    }
                }
                ChannelEvent::Wanted(channel) => self.native.join(channel, &mut self.io_stats),
                ChannelEvent::Unwanted(channel) => {
                    if last_removal_expired {
                        channel_event("channel_expired", None, channel);
                    }
                    self.native.leave(channel);
                }
            }
        }
        self.native.retry_failed(&mut self.io_stats);
        if let Some(syn) = self.synthetic.as_mut() {
            syn.set_subscribed(self.relay.wants(syn.channel()), now);
        }
    }

    fn forward_native_v4(&mut self) {
        for _ in 0..NATIVE_BURST {
            let Some(n) = self.native.recv_v4(&mut self.native_buf) else {
                break;
            };
            self.forward_native(n);
        }
    }

    fn forward_native_v6(&mut self) {
        for _ in 0..NATIVE_BURST {
            let Some(raw6) = self.native.raw6.as_ref() else {
                return;
            };
            match recv_v6(raw6, &mut self.native_buf) {
                Ok(Some(len)) => self.forward_native(len),
                Ok(None) => continue,
                Err(_) => break,
            }
        }
    }

    /// Tunnels the native packet `native_buf[..len]` to every gateway
    /// subscribed to its (S,G).
    fn forward_native(&mut self, len: usize) {
        let packet = &self.native_buf[..len];
        let Ok(info) = ip::inspect(packet) else {
            return;
        };
        if !info.dst.is_multicast() {
            return;
        }
        self.io_stats.native_packets += 1;
        let channel = SourceGroup {
            source: info.src,
            group: info.dst,
        };
        let gateways = self.relay.forward(channel, info.len);
        if gateways.is_empty() {
            self.io_stats.native_unmatched += 1;
        }
        let packet = packet.get(..info.len).unwrap_or(packet);
        for gw in gateways {
            match send_data(self.ctrl.as_raw_fd(), self.ctrl_v6, *gw, packet) {
                Ok(()) => self.io_stats.forwarded += 1,
                Err(_) => self.io_stats.send_errors += 1,
            }
        }
    }

    /// Prints (and writes) the status when due or asked for by SIGUSR1.
    fn report_status(&mut self, now: Instant) {
        let due = self.next_status.is_some_and(|t| t <= now);
        if !(due || signal::status_requested()) {
            return;
        }
        let status = status_object(
            &self.relay,
            &self.native.joined,
            &self.io_stats,
            self.started,
            now,
        );
        print_line(&status);
        if let Some(path) = &self.options.status_file
            && let Err(e) = write_status_file(path, &status)
        {
            eprintln!("amt-relay: writing {}: {e}", path.display());
        }
        if due {
            self.next_status = self.options.status_interval.map(|d| now + d);
        }
    }
}

/// The AMT socket: bound to `listen`, dual-stack for `[::]`, non-blocking.
fn open_control_socket(listen: SocketAddr) -> Result<UdpSocket, ServeError> {
    let ctrl = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() && listen.ip().is_unspecified() {
        let _ = ctrl.set_only_v6(false);
    }
    ctrl.set_reuse_address(true)?;
    ctrl.bind(&listen.into())
        .map_err(|source| ServeError::Bind {
            address: listen,
            source,
        })?;
    ctrl.set_nonblocking(true)?;
    Ok(ctrl.into())
}

/// A `channel_added` / `channel_removed` / `channel_expired` event line.
fn channel_event(kind: &str, gateway: Option<SocketAddr>, channel: SourceGroup) {
    let mut fields = json!({ "source": channel.source, "group": channel.group });
    if let Some(gateway) = gateway {
        fields["gateway"] = json!(gateway.to_string());
    }
    event(kind, fields);
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

/// Seed of the core's secrets: differs per run and per process.
fn random_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id())
}
