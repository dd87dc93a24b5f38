//! The relay's event loop: one non-blocking thread that waits on the AMT
//! sockets (one per listen address, each with its own relay core) and the
//! native raw sockets, feeds the cores, forwards native packets, runs the
//! synthetic source and reports status. Every step costs what changed, not
//! what exists: readiness comes from epoll, timers from an ordered set,
//! subscription changes from the cores' channel events.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amt_gateway::relay::{ChannelEvent, RelayConfig, RemoveReason};
use amt_gateway::wire::ip;
use ingest_types::SourceGroup;
use serde_json::json;

use super::listener::Listener;
use super::native::{Native, NativeError};
use super::output::{IoStats, event, print_line, status_object, write_status_file};
use super::poll::{Poller, Token};
use super::synthetic::{SyntheticOptions, SyntheticRun};
use super::udp::send_data;
use crate::iface::Interface;
use crate::signal;

/// Datagrams read from one AMT socket per loop round (then the other
/// sockets get their turn).
const CONTROL_BURST: usize = 256;
/// Native packets read per raw socket per loop round.
const NATIVE_BURST: usize = 1024;
/// Longest sleep of the loop (it rechecks the stop flag at least this often).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Everything the relay needs, checked by the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// AMT addresses and ports ([::]:PORT is dual-stack); each is a relay
    /// of its own as gateways see it. At least one.
    pub listen: Vec<SocketAddr>,
    /// LAN interface for native joins (None: the kernel's choice by route).
    pub iface: Option<Interface>,
    /// The cores' configuration; `advertised` None means each listener
    /// advertises its own address (or the Discovery's local address).
    pub config: RelayConfig,
    /// Status line period (None: only on SIGUSR1).
    pub status_interval: Option<Duration>,
    /// Also written here, atomically.
    pub status_file: Option<PathBuf>,
    /// Write the status only to `status_file`, not to stdout (the status
    /// of a relay holding thousands of channels is megabytes; events still
    /// go to stdout).
    pub status_file_only: bool,
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

/// Each listener's next timer, in order.
#[derive(Default)]
struct Timers {
    due: BTreeSet<(Instant, usize)>,
    of: Vec<Option<Instant>>,
}

impl Timers {
    fn set(&mut self, listener: usize, at: Option<Instant>) {
        if self.of.len() <= listener {
            self.of.resize(listener + 1, None);
        }
        if let Some(old) = self.of[listener].take() {
            self.due.remove(&(old, listener));
        }
        if let Some(at) = at {
            self.due.insert((at, listener));
        }
        self.of[listener] = at;
    }

    fn first(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// A listener whose timer is due at `now` (its timer is cleared).
    fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(at, listener) = self.due.first()?;
        if at > now {
            return None;
        }
        self.set(listener, None);
        Some(listener)
    }
}

struct Server {
    options: Options,
    listeners: Vec<Listener>,
    poller: Poller,
    ready: Vec<Token>,
    timers: Timers,
    /// (S,G) → listeners with a gateway subscribed to it.
    subscribers: HashMap<SourceGroup, Vec<usize>>,
    /// Subscriptions changed this round (retry failed joins, synthetic).
    channels_changed: bool,
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
        // One socket per listen address: thousands in a scale lab.
        crate::raise_open_file_limit();
        let started = Instant::now();
        let seed = random_seed();
        let mut listeners = Vec::with_capacity(options.listen.len());
        for (i, address) in options.listen.iter().enumerate() {
            let listener = Listener::open(*address, &options.config, started, seed ^ i as u64)
                .map_err(|source| ServeError::Bind {
                    address: *address,
                    source,
                })?;
            listeners.push(listener);
        }
        let mut native = Native::open(options.iface.clone(), options.recv_buffer)?;
        let mut poller = Poller::new()?;
        let mut timers = Timers::default();
        for (i, listener) in listeners.iter().enumerate() {
            poller.add(listener.fd(), Token::Control(i))?;
            timers.set(i, listener.relay.poll_timeout());
        }
        for (i, fd) in native.new_sockets() {
            poller.add(fd, Token::Native(i))?;
        }
        let limits = native.limits();
        event(
            "started",
            json!({
                "listen": options.listen.first().map(|a| a.to_string()),
                "listen_count": options.listen.len(),
                "lan_interface": options.iface.as_ref().map(|i| i.name.clone()),
                "qqi_s": options.config.qqi.as_secs(),
                "qrv": options.config.qrv,
                "refuse": options.config.refuse,
                "join_limits": {
                    "igmp_max_memberships": limits.groups_v4,
                    "igmp_max_msf": limits.sources_v4,
                    "mld_max_msf": limits.sources_v6,
                },
            }),
        );
        Ok(Self {
            next_status: options.status_interval.map(|d| started + d),
            synthetic: options.synthetic.clone().map(SyntheticRun::new),
            options,
            listeners,
            poller,
            ready: Vec::new(),
            timers,
            subscribers: HashMap::new(),
            channels_changed: false,
            native,
            io_stats: IoStats::default(),
            started,
            native_buf: vec![0u8; 65_536 + 64],
            ctrl_buf: vec![0u8; 65_536],
        })
    }

    fn run(&mut self) -> Result<(), ServeError> {
        while !signal::stop_requested() {
            let now = Instant::now();
            let timeout = self
                .deadline(now)
                .saturating_duration_since(now)
                .min(MAX_WAIT);
            let mut ready = std::mem::take(&mut self.ready);
            self.poller
                .wait(timeout, &mut ready)
                .map_err(ServeError::Poll)?;
            let now = Instant::now();
            for token in &ready {
                if let Token::Control(i) = *token {
                    self.receive_control(i, now);
                }
            }
            self.expire(now);
            self.after_channel_changes(now)?;
            if let Some(syn) = self.synthetic.as_mut() {
                syn.run(now, &mut self.listeners);
            }
            for token in &ready {
                if let Token::Native(i) = *token {
                    self.forward_native(i);
                }
            }
            self.ready = ready;
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

    /// The next timer of a core, the status or the synthetic source.
    fn deadline(&self, now: Instant) -> Instant {
        let mut deadline = self.timers.first().unwrap_or(now + MAX_WAIT);
        if let Some(ns) = self.next_status {
            deadline = deadline.min(ns);
        }
        if let Some(t) = self.synthetic.as_ref().and_then(|s| s.next_wakeup(now)) {
            deadline = deadline.min(t);
        }
        deadline
    }

    /// Feeds a burst of datagrams from listener `index` to its core and
    /// sends the answers (Advertisements, Queries) from the same socket.
    fn receive_control(&mut self, index: usize, now: Instant) {
        let listener = &mut self.listeners[index];
        for _ in 0..CONTROL_BURST {
            let Some((len, from)) = listener.recv(&mut self.ctrl_buf) else {
                break;
            };
            let payload = &self.ctrl_buf[..len];
            // Only a Discovery needs the local address (for the Advertisement).
            let local_ip =
                if payload.first() == Some(&0x01) && listener.relay.config().advertised.is_none() {
                    listener.local_ip(from)
                } else {
                    listener.address.ip()
                };
            listener.relay.handle_datagram(now, from, local_ip, payload);
            while let Some(tx) = listener.relay.poll_transmit() {
                if listener.send_to(&tx.payload, tx.destination).is_err() {
                    self.io_stats.send_errors += 1;
                }
            }
        }
        self.timers.set(index, listener.relay.poll_timeout());
        self.apply_channel_events(index);
    }

    /// Runs the due timers of the cores (expiry, secret rotation).
    fn expire(&mut self, now: Instant) {
        while let Some(index) = self.timers.pop_due(now) {
            let relay = &mut self.listeners[index].relay;
            relay.handle_timeout(now);
            self.timers.set(index, relay.poll_timeout());
            self.apply_channel_events(index);
        }
    }

    /// Reports listener `index`'s subscription changes and keeps the
    /// native joins on the channels some listener's gateway wants.
    fn apply_channel_events(&mut self, index: usize) {
        let relay_address = self.listeners[index].address;
        // The core queues Unwanted right after the Removed that caused it.
        let mut last_removal_expired = false;
        while let Some(change) = self.listeners[index].relay.poll_channel_event() {
            self.channels_changed = true;
            match change {
                ChannelEvent::Added { gateway, channel } => {
                    channel_event("channel_added", relay_address, Some(gateway), channel);
                }
                ChannelEvent::Removed {
                    gateway,
                    channel,
                    reason,
                } => {
                    // Expiry is reported per channel (below), not per gateway.
                    last_removal_expired = reason == RemoveReason::Expired;
                    if !last_removal_expired {
                        channel_event("channel_removed", relay_address, Some(gateway), channel);
                    }
                }
                ChannelEvent::Wanted(channel) => {
                    let listeners = self.subscribers.entry(channel).or_default();
                    listeners.push(index);
                    if listeners.len() == 1 {
                        self.native.join(channel, &mut self.io_stats);
                    }
                }
                ChannelEvent::Unwanted(channel) => {
                    if last_removal_expired {
                        channel_event("channel_expired", relay_address, None, channel);
                    }
                    self.unsubscribe(index, channel);
                }
            }
        }
    }

    /// Listener `index` no longer wants `channel`; the last one leaves it.
    fn unsubscribe(&mut self, index: usize, channel: SourceGroup) {
        let Some(listeners) = self.subscribers.get_mut(&channel) else {
            return;
        };
        listeners.retain(|l| *l != index);
        if listeners.is_empty() {
            self.subscribers.remove(&channel);
            self.native.leave(channel);
        }
    }

    /// After subscriptions changed: retries failed joins, watches the raw
    /// sockets joins opened, tells the synthetic source.
    fn after_channel_changes(&mut self, now: Instant) -> Result<(), ServeError> {
        if !std::mem::take(&mut self.channels_changed) {
            return Ok(());
        }
        self.native.retry_failed(&mut self.io_stats);
        for (i, fd) in self.native.new_sockets() {
            self.poller.add(fd, Token::Native(i))?;
        }
        if let Some(syn) = self.synthetic.as_mut() {
            syn.set_subscribed(self.subscribers.contains_key(&syn.channel()), now);
        }
        Ok(())
    }

    /// Forwards a burst of packets from native socket `index`.
    fn forward_native(&mut self, index: usize) {
        for _ in 0..NATIVE_BURST {
            match self.native.recv(index, &mut self.native_buf) {
                Ok(Some(len)) => self.forward_packet(len),
                Ok(None) => continue,
                Err(_) => break,
            }
        }
    }

    /// Tunnels the native packet `native_buf[..len]` to every gateway
    /// subscribed to its (S,G), from the address each gateway uses.
    fn forward_packet(&mut self, len: usize) {
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
        let Some(listeners) = self.subscribers.get(&channel) else {
            self.io_stats.native_unmatched += 1;
            return;
        };
        let packet = packet.get(..info.len).unwrap_or(packet);
        for &index in listeners {
            let listener = &mut self.listeners[index];
            let (fd, v6) = (listener.fd(), listener.is_v6());
            for gateway in listener.relay.forward(channel, info.len) {
                match send_data(fd, v6, *gateway, packet) {
                    Ok(()) => self.io_stats.forwarded += 1,
                    Err(_) => self.io_stats.send_errors += 1,
                }
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
            &self.listeners,
            &self.native,
            &self.io_stats,
            self.started,
            now,
        );
        if !(self.options.status_file_only && self.options.status_file.is_some()) {
            print_line(&status);
        }
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

/// A `channel_added` / `channel_removed` / `channel_expired` event line.
fn channel_event(kind: &str, relay: SocketAddr, gateway: Option<SocketAddr>, channel: SourceGroup) {
    let mut fields = json!({
        "relay": relay.to_string(),
        "source": channel.source,
        "group": channel.group,
    });
    if let Some(gateway) = gateway {
        fields["gateway"] = json!(gateway.to_string());
    }
    event(kind, fields);
}

/// Seed of the cores' secrets: differs per run and per process.
fn random_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id())
}
