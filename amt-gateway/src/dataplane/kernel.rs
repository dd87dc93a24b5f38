//! The kernel data plane: loads `bpf/amt_decap.bpf.c` (built by build.rs)
//! with aya, keeps its maps in step with the tunnels, attaches it where the
//! relays' packets arrive, and reads its per-CPU counters.
//!
//! # Where things are attached
//! * `amt_decap`, ingress of every **uplink**: the output interface of
//!   the route towards a tunnel's relay (RTM_GETROUTE in the namespace of
//!   the calling thread, which must be the namespace of the tunnel sockets),
//!   attached when the first tunnel using that interface gets its relay and
//!   detached when the last one leaves or moves (reference-counted). Only
//!   interfaces with an Ethernet header (Ethernet, veth, loopback) are
//!   supported; a tunnel whose relay is behind another kind (TUN,
//!   WireGuard, PPP) stays on the userspace path. Packets that arrive on
//!   another interface than the route's (asymmetric routing, ECMP) simply
//!   reach the socket: the userspace path is always there underneath.
//! * [`DeliveryTarget::SameNamespace`] (variant B): `amt_decap` redirects
//!   straight into the TUN's ingress.
//! * [`DeliveryTarget::OtherNamespace`] (variant D): a veth pair is created,
//!   one end here (IPv6 off, no address, up), the other in the target
//!   namespace (same), `amt_decap` hands packets to the far end with
//!   `bpf_redirect_peer`, and `amt_to_tun` on that end's ingress
//!   redirects them into the TUN's ingress there. `bpf_redirect` alone
//!   cannot cross namespaces.
//!
//! "Ingress" is a TCX link where the kernel has TCX (Linux >= 6.6) and a
//! `bpf` filter on a `clsact` qdisc otherwise ("tc legacy", e.g. Debian
//! 12's 6.1); see [`super::attach`] for the choice
//! ([`AttachPreference`], `AMT_DATAPLANE_ATTACH`) and the cleanup rules.
//!
//! # Lifetime
//! Programs, maps and TCX links are file descriptors of this process: the
//! kernel removes them when the process exits, however it exits. Legacy
//! tc filters, the `clsact` qdisc we added and the veth pair are interface
//! state and would survive a crash: [`KernelDataPlane::open`] removes
//! stale filters of ours (and a `clsact` qdisc they leave empty) in its
//! namespace and deletes a leftover veth pair of the same names first, and
//! dropping the [`KernelDataPlane`] removes its filters, its empty `clsact`
//! qdiscs and the pair. Dropping a [`KernelTunnel`] removes the tunnel's
//! map entries and releases its uplink.
//!
//! # Capabilities (measured as a non-root user with `setpriv`)
//! CAP_BPF (map creation, program load, map access) and CAP_NET_ADMIN
//! (SCHED_CLS program type, TCX links or qdiscs and filters, the veth
//! pair); CAP_PERFMON is not
//! needed. [`DeliveryTarget::OtherNamespace`] also needs CAP_SYS_ADMIN
//! (setns into the target namespace to configure the far veth end and
//! attach to it), which frr-ingestd already has for creating `amt0` there.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aya::maps::{
    HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader, Pod};
use thiserror::Error;
use tracing::{info, warn};

use super::attach::{
    self, ATTACH_ENV, AttachInfo, AttachMode, AttachPreference, ParseAttachError, TcFilter,
};
use super::netlink::{LinkInfo, Netlink};
use ingest_types::SourceGroup;

/// The object compiled by build.rs (empty when it could not be built).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/amt_decap.bpf.o"));
/// "built" or "not built: <why>" (set by build.rs).
const BUILD_STATUS: &str = env!("AMT_GATEWAY_BPF_STATUS");

/// Why the kernel data plane was not built into this binary, if it was not.
pub fn not_built_reason() -> Option<&'static str> {
    if OBJECT.is_empty() {
        Some(
            BUILD_STATUS
                .strip_prefix("not built: ")
                .unwrap_or(BUILD_STATUS),
        )
    } else {
        None
    }
}

const MAX_TUNNELS: u32 = 1024;
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const TUNNEL_HAS_LOCAL_ADDR: u32 = 1;

// ---- map layouts (must match bpf/amt_decap.bpf.c) -------------------------

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TunnelKey {
    relay_addr: [u8; 16],
    /// Network byte order, as in the packet.
    relay_port: [u8; 2],
    local_port: [u8; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TunnelInfo {
    id: u32,
    flags: u32,
    local_addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ChannelKey {
    tunnel_id: u32,
    source: [u8; 16],
    group: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChannelStatsRaw {
    packets: u64,
    bytes: u64,
    last_seen_ns: u64,
}

const PASS_REASONS: usize = 6;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TunnelStatsRaw {
    packets: u64,
    bytes: u64,
    passed: [u64; PASS_REASONS],
    ttl_raised: u64,
}

// SAFETY: plain #[repr(C)] structs of integers and byte arrays without
// padding (checked by the layout test); any bit pattern is valid.
unsafe impl Pod for TunnelKey {}
unsafe impl Pod for TunnelInfo {}
unsafe impl Pod for ChannelKey {}
unsafe impl Pod for ChannelStatsRaw {}
unsafe impl Pod for TunnelStatsRaw {}

/// 16-byte form used in the maps: IPv4 (and IPv4-mapped IPv6) as
/// `::ffff:a.b.c.d`, so one key type serves both families.
pub(crate) fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

pub(crate) fn tunnel_key(relay: SocketAddr, local_port: u16) -> TunnelKey {
    TunnelKey {
        relay_addr: addr16(relay.ip()),
        relay_port: relay.port().to_be_bytes(),
        local_port: local_port.to_be_bytes(),
    }
}

pub(crate) fn tunnel_info(id: u32, local: IpAddr) -> TunnelInfo {
    if local.to_canonical().is_unspecified() {
        TunnelInfo {
            id,
            flags: 0,
            local_addr: [0; 16],
        }
    } else {
        TunnelInfo {
            id,
            flags: TUNNEL_HAS_LOCAL_ADDR,
            local_addr: addr16(local),
        }
    }
}

pub(crate) fn channel_key(tunnel_id: u32, sg: SourceGroup) -> ChannelKey {
    ChannelKey {
        tunnel_id,
        source: addr16(sg.source),
        group: addr16(sg.group),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns` and of `Instant`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The `Instant` of a `bpf_ktime_get_ns` reading, given a pair of clock
/// readings taken together (`now` and `now_ns`). 0 means "never".
pub(crate) fn ktime_to_instant(ktime_ns: u64, now: Instant, now_ns: u64) -> Option<Instant> {
    if ktime_ns == 0 {
        return None;
    }
    let age = Duration::from_nanos(now_ns.saturating_sub(ktime_ns));
    Some(now.checked_sub(age).unwrap_or(now))
}

fn sum_channel(values: &[ChannelStatsRaw]) -> ChannelStatsRaw {
    values
        .iter()
        .fold(ChannelStatsRaw::default(), |acc, v| ChannelStatsRaw {
            packets: acc.packets.wrapping_add(v.packets),
            bytes: acc.bytes.wrapping_add(v.bytes),
            last_seen_ns: acc.last_seen_ns.max(v.last_seen_ns),
        })
}

fn sum_tunnel(values: &[TunnelStatsRaw]) -> TunnelStatsRaw {
    values.iter().fold(TunnelStatsRaw::default(), |mut acc, v| {
        acc.packets = acc.packets.wrapping_add(v.packets);
        acc.bytes = acc.bytes.wrapping_add(v.bytes);
        acc.ttl_raised = acc.ttl_raised.wrapping_add(v.ttl_raised);
        for (a, b) in acc.passed.iter_mut().zip(v.passed) {
            *a = a.wrapping_add(b);
        }
        acc
    })
}

// ---- public types ------------------------------------------------------------

/// Where decapsulated packets must enter the stack: the ingress of the TUN
/// that the (S,G)s' incoming interface is (FRR's `amt0`, amtgw's `--tun`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryTarget {
    /// The TUN is in the namespace of the tunnel sockets (variant B).
    SameNamespace { tun_ifindex: u32 },
    /// The TUN is in another namespace (variant D): a veth pair
    /// `veth_local` (here) / `veth_remote` (there) carries the packets.
    /// When `netns` turns out to be the caller's own namespace, this is
    /// treated as [`DeliveryTarget::SameNamespace`].
    OtherNamespace {
        /// e.g. `/run/netns/frr`.
        netns: PathBuf,
        /// The TUN's ifindex inside `netns`.
        tun_ifindex: u32,
        veth_local: String,
        veth_remote: String,
    },
}

impl DeliveryTarget {
    /// [`DeliveryTarget::OtherNamespace`] with the default veth names
    /// (`amtdp-gw` here, `amtdp-frr` there).
    pub fn other_namespace(netns: impl Into<PathBuf>, tun_ifindex: u32) -> Self {
        Self::OtherNamespace {
            netns: netns.into(),
            tun_ifindex,
            veth_local: "amtdp-gw".into(),
            veth_remote: "amtdp-frr".into(),
        }
    }
}

/// Parameters of [`KernelDataPlane::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    pub target: DeliveryTarget,
    /// Raise the inner TTL/hop limit to at least this (the driver's
    /// `min_inner_ttl`, default 2); `None` leaves it alone.
    pub min_inner_ttl: Option<u8>,
}

/// Why a packet of a known tunnel went to the socket instead (BPF
/// `enum pass_reason`, same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassReason {
    /// Not Multicast Data (control messages: Advertisement, Query, ...).
    Control,
    /// Data for an (S,G) this tunnel has not subscribed.
    NotSubscribed,
    /// Truncated or inconsistent lengths, bad inner header.
    Malformed,
    /// A GRO/GSO aggregate (the kernel cannot strip headers of those).
    Gso,
    /// `bpf_skb_adjust_room` refused the packet.
    AdjustFailed,
    /// Sent to another local address than the tunnel's.
    WrongLocalAddress,
}

impl PassReason {
    pub const ALL: [PassReason; PASS_REASONS] = [
        PassReason::Control,
        PassReason::NotSubscribed,
        PassReason::Malformed,
        PassReason::Gso,
        PassReason::AdjustFailed,
        PassReason::WrongLocalAddress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::NotSubscribed => "not_subscribed",
            Self::Malformed => "malformed",
            Self::Gso => "gso",
            Self::AdjustFailed => "adjust_failed",
            Self::WrongLocalAddress => "wrong_local_address",
        }
    }
}

/// Counters of one tunnel in the kernel (summed over CPUs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    /// Packets decapsulated and delivered by the kernel.
    pub packets: u64,
    /// Bytes of the inner IP packets delivered.
    pub bytes: u64,
    /// Delivered packets whose TTL/hop limit was raised.
    pub ttl_raised: u64,
    /// Packets of this tunnel passed to the socket, by [`PassReason`]
    /// (same order as [`PassReason::ALL`]).
    pub passed: [u64; PASS_REASONS],
}

impl TunnelCounters {
    pub fn passed(&self, reason: PassReason) -> u64 {
        self.passed[reason as usize]
    }
    pub fn passed_total(&self) -> u64 {
        self.passed.iter().sum()
    }
}

/// Counters of one subscribed (S,G) in the kernel (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounters {
    pub packets: u64,
    /// Bytes of the inner IP packets.
    pub bytes: u64,
    /// When the kernel last delivered a packet of this (S,G).
    pub last_seen: Option<Instant>,
}

/// What an interface is attached for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentRole {
    /// `amt_decap` on ingress, for this many tunnels.
    Uplink { tunnels: usize },
    /// Our end of the veth pair (no program; `bpf_redirect_peer` target).
    VethLocal,
    /// The far end of the veth pair, in `netns`, with `amt_to_tun`.
    VethRemote { netns: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub role: AttachmentRole,
    /// How the program is attached there (`None`: no program, the local
    /// veth end).
    pub attach: Option<AttachMode>,
}

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("not built: {0}")]
    NotBuilt(&'static str),
    #[error("cannot load the BPF object: {0}")]
    Load(String),
    #[error("BPF map {map}: {error}")]
    Map { map: &'static str, error: String },
    #[error("cannot attach {program} to {interface}: {error}")]
    Attach {
        program: &'static str,
        interface: String,
        error: String,
    },
    #[error("no usable route towards relay {relay}: {error}")]
    Route { relay: IpAddr, error: io::Error },
    #[error(
        "relay {relay} is reached through {interface}, which has no Ethernet header (link type {link_type}); its tunnels stay on the userspace path"
    )]
    UnsupportedUplink {
        relay: IpAddr,
        interface: String,
        link_type: u16,
    },
    #[error("network namespace {path}: {error}")]
    Namespace { path: PathBuf, error: io::Error },
    #[error("veth pair {local}/{remote}: {what}: {error}")]
    Veth {
        local: String,
        remote: String,
        what: &'static str,
        error: io::Error,
    },
    #[error("nowhere to deliver: {0}")]
    NoTarget(String),
    #[error("at most {MAX_TUNNELS} tunnels can use the kernel data plane")]
    TooManyTunnels,
    #[error("another tunnel already uses relay {relay} and local port {local_port}")]
    DuplicateTunnel { relay: SocketAddr, local_port: u16 },
    #[error("internal: {0}")]
    Internal(&'static str),
    #[error("{ATTACH_ENV}: {0}")]
    AttachSetting(ParseAttachError),
}

impl KernelError {
    /// The failure is a missing privilege (EPERM/EACCES somewhere in it).
    pub fn is_permission(&self) -> bool {
        let io_perm = |e: &io::Error| {
            matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
                || e.kind() == io::ErrorKind::PermissionDenied
        };
        match self {
            Self::Route { error, .. }
            | Self::Namespace { error, .. }
            | Self::Veth { error, .. } => io_perm(error),
            Self::Load(text) | Self::Map { error: text, .. } | Self::Attach { error: text, .. } => {
                text.contains("Operation not permitted") || text.contains("Permission denied")
            }
            _ => false,
        }
    }
}

/// Full error chain of an aya error (its Display omits the io::Error).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        // Some aya errors repeat their source in their own text.
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

// ---- the data plane ------------------------------------------------------------

/// A program attached to an interface's ingress.
enum Hook {
    Tcx(SchedClassifierLinkId),
    Tc(TcFilter),
}

impl Hook {
    fn mode(&self) -> AttachMode {
        match self {
            Self::Tcx(_) => AttachMode::Tcx,
            Self::Tc(_) => AttachMode::TcLegacy,
        }
    }
}

struct Uplink {
    name: String,
    hook: Option<Hook>,
    tunnels: usize,
}

struct Veth {
    local: String,
    local_ifindex: u32,
    remote: String,
    remote_ifindex: u32,
    netns: PathBuf,
    /// `amt_to_tun` on the remote end (a legacy filter goes with the pair).
    hook: Option<Hook>,
}

struct Slot {
    key: Option<TunnelKey>,
    uplink: Option<u32>,
    local: SocketAddr,
}

struct Inner {
    // Field order is drop order: links (inside the programs of `ebpf`) go
    // before the veth is deleted in Drop for KernelDataPlane.
    ebpf: Ebpf,
    tunnels: BpfHashMap<MapData, TunnelKey, TunnelInfo>,
    channels: PerCpuHashMap<MapData, ChannelKey, ChannelStatsRaw>,
    stats: PerCpuArray<MapData, TunnelStatsRaw>,
    nr_cpus: usize,
    uplinks: BTreeMap<u32, Uplink>,
    slots: Vec<Option<Slot>>,
    veth: Option<Veth>,
    redirect_peer: bool,
    attach: AttachInfo,
}

/// The loaded kernel data plane, shared by every tunnel (wrap it in an
/// `Arc`). See the module documentation.
pub struct KernelDataPlane {
    inner: Mutex<Inner>,
    config: KernelConfig,
}

impl fmt::Debug for KernelDataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelDataPlane")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> KernelError {
    move |e| KernelError::Map {
        map,
        error: chain(&e),
    }
}

/// Runs `f` on a thread that entered the network namespace at `path`.
fn in_netns<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, KernelError> + Send,
) -> Result<T, KernelError> {
    let file = File::open(path).map_err(|error| KernelError::Namespace {
        path: path.to_path_buf(),
        error,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace fd; affects only this thread,
            // which ends with the scope.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(KernelError::Namespace {
                    path: path.to_path_buf(),
                    error: io::Error::last_os_error(),
                });
            }
            f()
        })
        .join()
        .unwrap_or(Err(KernelError::Internal("namespace thread panicked")))
    })
}

/// True if `path` is the network namespace of the calling thread.
fn is_own_netns(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(path)?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
}

fn disable_ipv6(name: &str) {
    // Absent when IPv6 is off altogether: nothing to disable then.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, KernelError> {
    ebpf.program_mut(name)
        .ok_or(KernelError::Internal("program missing from the BPF object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| KernelError::Load(chain(&e)))
}

/// Attaches `program` to the ingress of `link` (an interface of the
/// calling thread's namespace) the way `attach` says. With
/// [`AttachPreference::Auto`], a TCX attachment refused as unsupported
/// switches the data plane to tc legacy (for this and later attachments).
fn attach_ingress(
    ebpf: &mut Ebpf,
    attach: &mut AttachInfo,
    program: &'static str,
    link: &LinkInfo,
) -> Result<Hook, KernelError> {
    let prog = classifier(ebpf, program)?;
    if attach.mode == AttachMode::Tcx {
        match prog.attach_with_options(
            &link.name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(id) => return Ok(Hook::Tcx(id)),
            Err(e) => {
                let unsupported = matches!(&e, ProgramError::SyscallError(s) if attach::tcx_unsupported(&s.io_error));
                let error = chain(&e);
                if !unsupported || attach.requested != AttachPreference::Auto {
                    return Err(KernelError::Attach {
                        program,
                        interface: link.name.clone(),
                        error,
                    });
                }
                warn!(interface = %link.name, %error, "kernel data plane: TCX attachment refused, falling back to tc legacy (clsact + bpf filter)");
                attach.mode = AttachMode::TcLegacy;
                attach.reason = format!("TCX attachment refused: {error}");
            }
        }
    }
    attach::attach_tc(prog, program, link.ifindex, &link.name).map(Hook::Tc)
}

/// Undoes `hook` on the uplink `name` (in the calling thread's namespace).
fn detach_uplink(ebpf: &mut Ebpf, hook: Hook, name: &str) {
    match hook {
        Hook::Tcx(id) => {
            if let Ok(prog) = classifier(ebpf, "amt_decap") {
                let _ = prog.detach(id);
            }
        }
        Hook::Tc(filter) => attach::detach_tc(&filter, name),
    }
}

impl KernelDataPlane {
    /// Loads the programs, creates the maps and, for
    /// [`DeliveryTarget::OtherNamespace`], the veth pair with `amt_to_tun`
    /// on its far end. Uplinks are attached later, per tunnel. Must be
    /// called from a thread in the namespace of the tunnel sockets.
    ///
    /// How programs are attached follows `AMT_DATAPLANE_ATTACH`
    /// (`auto` when unset; see [`KernelDataPlane::open_with_attach`]).
    pub fn open(config: KernelConfig) -> Result<Self, KernelError> {
        let attach = AttachPreference::from_env().map_err(KernelError::AttachSetting)?;
        Self::open_with_attach(config, attach)
    }

    /// [`KernelDataPlane::open`] with an explicit attach preference:
    /// `Auto` uses TCX when the kernel has it (Linux >= 6.6) and tc legacy
    /// (clsact + direct-action bpf filter) otherwise; `Tcx` and `Tc` force
    /// one. First removes stale legacy filters of ours from this namespace
    /// (left by a process that was killed), whatever the mode.
    pub fn open_with_attach(
        config: KernelConfig,
        attach: AttachPreference,
    ) -> Result<Self, KernelError> {
        if let Some(why) = not_built_reason() {
            return Err(KernelError::NotBuilt(why));
        }
        let stale = attach::remove_stale_filters()?;
        if !stale.filters.is_empty() {
            warn!(
                filters = stale.filters.len(),
                qdiscs = stale.qdiscs.len(),
                "kernel data plane: removed tc filters left by a gateway that did not stop cleanly"
            );
        }
        let attach = attach::decide(attach);
        info!(attach = %attach, reason = %attach.reason, "kernel data plane: attach mode");
        let target = match &config.target {
            DeliveryTarget::OtherNamespace {
                netns, tun_ifindex, ..
            } if is_own_netns(netns).map_err(|error| KernelError::Namespace {
                path: netns.clone(),
                error,
            })? =>
            {
                DeliveryTarget::SameNamespace {
                    tun_ifindex: *tun_ifindex,
                }
            }
            t => t.clone(),
        };
        match target {
            DeliveryTarget::SameNamespace { tun_ifindex } => {
                let inner = Self::load(&config, tun_ifindex, false, 0, attach)?;
                Ok(Self {
                    inner: Mutex::new(inner),
                    config,
                })
            }
            DeliveryTarget::OtherNamespace {
                netns,
                tun_ifindex,
                veth_local,
                veth_remote,
            } => {
                let veth = create_veth(&netns, &veth_local, &veth_remote)?;
                let plane = Self::load(&config, veth.local_ifindex, true, tun_ifindex, attach).map(
                    |inner| Self {
                        inner: Mutex::new(inner),
                        config: config.clone(),
                    },
                );
                let plane = match plane {
                    Ok(p) => p,
                    Err(e) => {
                        delete_veth(&veth.local, veth.local_ifindex);
                        return Err(e);
                    }
                };
                {
                    let mut inner = plane.lock();
                    inner.veth = Some(veth);
                    let Inner {
                        ebpf, veth, attach, ..
                    } = &mut *inner;
                    let veth = veth.as_mut().ok_or(KernelError::Internal("veth"))?;
                    let remote = LinkInfo {
                        ifindex: veth.remote_ifindex,
                        name: veth.remote.clone(),
                        link_type: ARPHRD_ETHER,
                    };
                    // On failure, dropping `plane` deletes the pair.
                    let hook = in_netns(&veth.netns, || {
                        attach_ingress(ebpf, attach, "amt_to_tun", &remote)
                    })?;
                    veth.hook = Some(hook);
                }
                Ok(plane)
            }
        }
    }

    fn load(
        config: &KernelConfig,
        redirect_ifindex: u32,
        redirect_peer: bool,
        tun_ifindex: u32,
        attach: AttachInfo,
    ) -> Result<Inner, KernelError> {
        let mode: u32 = u32::from(redirect_peer);
        let min_ttl: u8 = config.min_inner_ttl.unwrap_or(0);
        let mut ebpf = EbpfLoader::new()
            .override_global("redirect_ifindex", &redirect_ifindex, true)
            .override_global("redirect_mode", &mode, true)
            .override_global("min_ttl", &min_ttl, true)
            .override_global("tun_ifindex", &tun_ifindex, true)
            .load(OBJECT)
            .map_err(|e| KernelError::Load(chain(&e)))?;
        for name in ["amt_decap", "amt_to_tun"] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|e| KernelError::Load(format!("{name}: {}", chain(&e))))?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(KernelError::Internal("map missing from the BPF object"))
        };
        let tunnels = BpfHashMap::try_from(take(&mut ebpf, "amt_tunnels")?)
            .map_err(map_err("amt_tunnels"))?;
        let channels = PerCpuHashMap::try_from(take(&mut ebpf, "amt_channels")?)
            .map_err(map_err("amt_channels"))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, "amt_tunnel_stats")?)
            .map_err(map_err("amt_tunnel_stats"))?;
        let nr_cpus =
            aya::util::nr_cpus().map_err(|(what, e)| KernelError::Load(format!("{what}: {e}")))?;
        Ok(Inner {
            ebpf,
            tunnels,
            channels,
            stats,
            nr_cpus,
            uplinks: BTreeMap::new(),
            slots: Vec::new(),
            veth: None,
            redirect_peer,
            attach,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent maps
        // (every update is one syscall): keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// True when packets cross into another namespace through the veth pair.
    pub fn crosses_namespace(&self) -> bool {
        self.lock().redirect_peer
    }

    /// How programs are attached (TCX or tc legacy), on which kernel, and
    /// why. Decided by [`KernelDataPlane::open`]; with `auto` it can still
    /// change from TCX to tc legacy if the kernel refuses a TCX attachment.
    pub fn attach_info(&self) -> AttachInfo {
        self.lock().attach.clone()
    }

    /// Registers a tunnel whose socket is bound to `local` (a specific
    /// address is matched exactly; an unspecified one matches any). Its
    /// packets are handled once it has a relay (now or by
    /// [`KernelTunnel::set_relay`]).
    pub fn add_tunnel(
        self: &Arc<Self>,
        local: SocketAddr,
        relay: Option<SocketAddr>,
    ) -> Result<KernelTunnel, KernelError> {
        let id = {
            let mut inner = self.lock();
            let id = match inner.slots.iter().position(Option::is_none) {
                Some(i) => i,
                None if inner.slots.len() < MAX_TUNNELS as usize => {
                    inner.slots.push(None);
                    inner.slots.len() - 1
                }
                None => return Err(KernelError::TooManyTunnels),
            } as u32;
            let zeros = PerCpuValues::try_from(vec![TunnelStatsRaw::default(); inner.nr_cpus])
                .map_err(|e| KernelError::Map {
                    map: "amt_tunnel_stats",
                    error: e.to_string(),
                })?;
            inner
                .stats
                .set(id, zeros, 0)
                .map_err(map_err("amt_tunnel_stats"))?;
            inner.slots[id as usize] = Some(Slot {
                key: None,
                uplink: None,
                local,
            });
            id
        };
        let mut tunnel = KernelTunnel {
            plane: self.clone(),
            id,
            relay: None,
            channels: HashSet::new(),
        };
        if let Some(relay) = relay {
            tunnel.set_relay(relay)?;
        }
        Ok(tunnel)
    }

    /// Interfaces this data plane has attached to or created.
    pub fn attached_interfaces(&self) -> Vec<AttachedInterface> {
        let inner = self.lock();
        let mut out: Vec<AttachedInterface> = inner
            .uplinks
            .iter()
            .map(|(ifindex, u)| AttachedInterface {
                name: u.name.clone(),
                ifindex: *ifindex,
                role: AttachmentRole::Uplink { tunnels: u.tunnels },
                attach: u.hook.as_ref().map(Hook::mode),
            })
            .collect();
        if let Some(v) = &inner.veth {
            out.push(AttachedInterface {
                name: v.local.clone(),
                ifindex: v.local_ifindex,
                role: AttachmentRole::VethLocal,
                attach: None,
            });
            out.push(AttachedInterface {
                name: v.remote.clone(),
                ifindex: v.remote_ifindex,
                role: AttachmentRole::VethRemote {
                    netns: v.netns.clone(),
                },
                attach: v.hook.as_ref().map(Hook::mode),
            });
        }
        out
    }
}

impl Drop for KernelDataPlane {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        // Detach before the veth goes, so that no packet is redirected to a
        // half-deleted pair.
        for uplink in inner.uplinks.values_mut() {
            if let Some(hook) = uplink.hook.take() {
                detach_uplink(&mut inner.ebpf, hook, &uplink.name);
            }
        }
        if let Some(veth) = inner.veth.take() {
            // A legacy filter (and its clsact) on the remote end goes with
            // the device.
            if let (Some(Hook::Tcx(link)), Ok(prog)) =
                (veth.hook, classifier(&mut inner.ebpf, "amt_to_tun"))
            {
                let _ = prog.detach(link);
            }
            delete_veth(&veth.local, veth.local_ifindex);
        }
    }
}

fn create_veth(netns: &Path, local: &str, remote: &str) -> Result<Veth, KernelError> {
    let err = |what: &'static str| {
        move |error: io::Error| KernelError::Veth {
            local: local.to_string(),
            remote: remote.to_string(),
            what,
            error,
        }
    };
    let ns = File::open(netns).map_err(|error| KernelError::Namespace {
        path: netns.to_path_buf(),
        error,
    })?;
    let mut nl = Netlink::open().map_err(err("netlink socket"))?;
    // A pair left by a process that crashed: deleting either end deletes both.
    if let Ok(old) = nl.link_by_name(local) {
        nl.delete_link(old.ifindex)
            .map_err(err("delete the leftover local end"))?;
    }
    let remote_name = remote.to_string();
    in_netns(netns, move || {
        let mut nl = Netlink::open().map_err(err("netlink socket in the namespace"))?;
        if let Ok(old) = nl.link_by_name(&remote_name) {
            nl.delete_link(old.ifindex)
                .map_err(err("delete the leftover remote end"))?;
        }
        Ok(())
    })?;
    nl.create_veth(local, remote, Some(ns.as_raw_fd()))
        .map_err(err("create"))?;
    let result = (|| {
        let here = nl.link_by_name(local).map_err(err("find the local end"))?;
        // No IPv6 (no link-local address, no MLD/ND of its own), no IPv4
        // address: the pair carries nothing but redirected packets.
        disable_ipv6(local);
        nl.set_up(here.ifindex)
            .map_err(err("set the local end up"))?;
        let remote_name = remote.to_string();
        let there: LinkInfo = in_netns(netns, move || {
            let mut nl = Netlink::open().map_err(err("netlink socket in the namespace"))?;
            let there = nl
                .link_by_name(&remote_name)
                .map_err(err("find the remote end"))?;
            disable_ipv6(&remote_name);
            nl.set_up(there.ifindex)
                .map_err(err("set the remote end up"))?;
            Ok(there)
        })?;
        Ok(Veth {
            local: local.to_string(),
            local_ifindex: here.ifindex,
            remote: remote.to_string(),
            remote_ifindex: there.ifindex,
            netns: netns.to_path_buf(),
            hook: None,
        })
    })();
    if result.is_err()
        && let Ok(here) = nl.link_by_name(local)
    {
        let _ = nl.delete_link(here.ifindex);
    }
    result
}

/// Deletes our end of the pair (the kernel deletes the other), after
/// checking that `ifindex` still is the device of that name here.
fn delete_veth(name: &str, ifindex: u32) {
    if let Ok(mut nl) = Netlink::open()
        && let Ok(link) = nl.link_by_index(ifindex)
        && link.name == name
    {
        let _ = nl.delete_link(ifindex);
    }
}

/// Output interface towards `relay`, if the data plane can hook it.
fn uplink_for(relay: IpAddr) -> Result<LinkInfo, KernelError> {
    let route_err = |error| KernelError::Route { relay, error };
    let mut nl = Netlink::open().map_err(route_err)?;
    let oif = nl.route_oif(relay.to_canonical()).map_err(route_err)?;
    let link = nl.link_by_index(oif).map_err(route_err)?;
    if link.link_type != ARPHRD_ETHER && link.link_type != ARPHRD_LOOPBACK {
        return Err(KernelError::UnsupportedUplink {
            relay,
            interface: link.name,
            link_type: link.link_type,
        });
    }
    Ok(link)
}

impl Inner {
    fn acquire_uplink(&mut self, link: &LinkInfo) -> Result<(), KernelError> {
        if let Some(u) = self.uplinks.get_mut(&link.ifindex) {
            u.tunnels += 1;
            return Ok(());
        }
        let hook = attach_ingress(&mut self.ebpf, &mut self.attach, "amt_decap", link)?;
        self.uplinks.insert(
            link.ifindex,
            Uplink {
                name: link.name.clone(),
                hook: Some(hook),
                tunnels: 1,
            },
        );
        Ok(())
    }

    fn release_uplink(&mut self, ifindex: u32) {
        let Some(u) = self.uplinks.get_mut(&ifindex) else {
            return;
        };
        u.tunnels = u.tunnels.saturating_sub(1);
        if u.tunnels > 0 {
            return;
        }
        if let Some(u) = self.uplinks.remove(&ifindex)
            && let Some(hook) = u.hook
        {
            detach_uplink(&mut self.ebpf, hook, &u.name);
        }
    }
}

/// One tunnel's part of the kernel data plane. Dropping it removes the
/// tunnel's map entries and releases its uplink.
pub struct KernelTunnel {
    plane: Arc<KernelDataPlane>,
    id: u32,
    relay: Option<SocketAddr>,
    /// Subscribed (S,G)s (the map keys this tunnel owns).
    channels: HashSet<SourceGroup>,
}

impl fmt::Debug for KernelTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelTunnel")
            .field("id", &self.id)
            .field("relay", &self.relay)
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl KernelTunnel {
    /// Index of the tunnel in the BPF maps.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn data_plane(&self) -> &Arc<KernelDataPlane> {
        &self.plane
    }

    /// The relay address the kernel matches (source of Multicast Data).
    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay
    }

    /// The uplink this tunnel's packets are expected on.
    pub fn uplink(&self) -> Option<String> {
        let inner = self.plane.lock();
        let slot = inner.slots.get(self.id as usize)?.as_ref()?;
        inner.uplinks.get(&slot.uplink?).map(|u| u.name.clone())
    }

    /// Sets (or changes, after Relay Discovery or a relay restart) the
    /// relay the tunnel's data comes from, moving to the new relay's uplink.
    /// On error the tunnel is left without a relay: its packets go to the
    /// socket (the userspace path).
    pub fn set_relay(&mut self, relay: SocketAddr) -> Result<(), KernelError> {
        let relay = SocketAddr::new(relay.ip().to_canonical(), relay.port());
        if self.relay == Some(relay) {
            return Ok(());
        }
        self.clear_relay();
        let link = uplink_for(relay.ip())?;
        let mut inner = self.plane.lock();
        let local = inner
            .slots
            .get(self.id as usize)
            .and_then(Option::as_ref)
            .map(|s| s.local)
            .ok_or(KernelError::Internal("tunnel slot"))?;
        let key = tunnel_key(relay, local.port());
        if inner.tunnels.get(&key, 0).is_ok() {
            return Err(KernelError::DuplicateTunnel {
                relay,
                local_port: local.port(),
            });
        }
        inner.acquire_uplink(&link)?;
        if let Err(e) = inner
            .tunnels
            .insert(key, tunnel_info(self.id, local.ip()), 0)
        {
            inner.release_uplink(link.ifindex);
            return Err(map_err("amt_tunnels")(e));
        }
        if let Some(Some(slot)) = inner.slots.get_mut(self.id as usize) {
            slot.key = Some(key);
            slot.uplink = Some(link.ifindex);
        }
        self.relay = Some(relay);
        Ok(())
    }

    /// Stops matching the tunnel's packets (they go to the socket).
    pub fn clear_relay(&mut self) {
        let mut inner = self.plane.lock();
        let (key, uplink) = match inner.slots.get_mut(self.id as usize) {
            Some(Some(slot)) => (slot.key.take(), slot.uplink.take()),
            _ => (None, None),
        };
        if let Some(key) = key {
            let _ = inner.tunnels.remove(&key);
        }
        if let Some(ifindex) = uplink {
            inner.release_uplink(ifindex);
        }
        self.relay = None;
    }

    /// Lets the kernel deliver (S,G) for this tunnel. Idempotent (an
    /// existing entry keeps its counters).
    pub fn subscribe(&mut self, sg: SourceGroup) -> Result<(), KernelError> {
        if self.channels.contains(&sg) {
            return Ok(());
        }
        let mut inner = self.plane.lock();
        let zeros = PerCpuValues::try_from(vec![ChannelStatsRaw::default(); inner.nr_cpus])
            .map_err(|e| KernelError::Map {
                map: "amt_channels",
                error: e.to_string(),
            })?;
        inner
            .channels
            .insert(channel_key(self.id, sg), zeros, 0)
            .map_err(map_err("amt_channels"))?;
        self.channels.insert(sg);
        Ok(())
    }

    /// Stops delivering (S,G); returns its final counters (`None` if it
    /// was not subscribed).
    pub fn unsubscribe(&mut self, sg: SourceGroup) -> Result<Option<ChannelCounters>, KernelError> {
        if !self.channels.remove(&sg) {
            return Ok(None);
        }
        let mut inner = self.plane.lock();
        let key = channel_key(self.id, sg);
        let last = read_channel(&inner, &key)?;
        inner
            .channels
            .remove(&key)
            .map_err(map_err("amt_channels"))?;
        Ok(last)
    }

    /// The (S,G)s the kernel delivers for this tunnel.
    pub fn subscriptions(&self) -> impl Iterator<Item = SourceGroup> + '_ {
        self.channels.iter().copied()
    }

    /// Counters of a subscribed (S,G); `None` if not subscribed.
    pub fn channel_counters(
        &self,
        sg: SourceGroup,
    ) -> Result<Option<ChannelCounters>, KernelError> {
        if !self.channels.contains(&sg) {
            return Ok(None);
        }
        let inner = self.plane.lock();
        read_channel(&inner, &channel_key(self.id, sg))
    }

    /// The tunnel's counters (since it was added).
    pub fn counters(&self) -> Result<TunnelCounters, KernelError> {
        let inner = self.plane.lock();
        let values = inner
            .stats
            .get(&self.id, 0)
            .map_err(map_err("amt_tunnel_stats"))?;
        let raw = sum_tunnel(&values);
        Ok(TunnelCounters {
            packets: raw.packets,
            bytes: raw.bytes,
            ttl_raised: raw.ttl_raised,
            passed: raw.passed,
        })
    }
}

fn read_channel(inner: &Inner, key: &ChannelKey) -> Result<Option<ChannelCounters>, KernelError> {
    let values = match inner.channels.get(key, 0) {
        Ok(v) => v,
        Err(MapError::KeyNotFound) => return Ok(None),
        Err(e) => return Err(map_err("amt_channels")(e)),
    };
    let raw = sum_channel(&values);
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    Ok(Some(ChannelCounters {
        packets: raw.packets,
        bytes: raw.bytes,
        last_seen: ktime_to_instant(raw.last_seen_ns, now, now_ns),
    }))
}

impl Drop for KernelTunnel {
    fn drop(&mut self) {
        self.clear_relay();
        let mut inner = self.plane.lock();
        for sg in self.channels.drain() {
            let _ = inner.channels.remove(&channel_key(self.id, sg));
        }
        if let Some(slot) = inner.slots.get_mut(self.id as usize) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn layouts_match_the_bpf_structs() {
        // Sizes from `bpftool btf dump file amt_decap.bpf.o`.
        assert_eq!(std::mem::size_of::<TunnelKey>(), 20);
        assert_eq!(std::mem::size_of::<TunnelInfo>(), 24);
        assert_eq!(std::mem::size_of::<ChannelKey>(), 36);
        assert_eq!(std::mem::size_of::<ChannelStatsRaw>(), 24);
        assert_eq!(std::mem::size_of::<TunnelStatsRaw>(), 72);
        assert_eq!(PassReason::ALL.len(), PASS_REASONS);
        for (i, r) in PassReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn keys_use_network_order_and_mapped_ipv4() {
        let relay: SocketAddr = "192.0.2.1:2268".parse().unwrap();
        let k = tunnel_key(relay, 40000);
        assert_eq!(k.relay_port, [0x08, 0xdc]);
        assert_eq!(k.local_port, 40000u16.to_be_bytes());
        assert_eq!(
            &k.relay_addr[..12],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        );
        assert_eq!(&k.relay_addr[12..], &[192, 0, 2, 1]);
        // An IPv4-mapped relay (dual-stack socket) is the same tunnel.
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
            2268,
        );
        assert_eq!(tunnel_key(mapped, 40000), k);
        let v6: SocketAddr = "[2001:db8::1]:2268".parse().unwrap();
        assert_eq!(
            tunnel_key(v6, 1).relay_addr,
            "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        let c = channel_key(3, "10.1.1.1,232.1.1.1".parse().unwrap());
        assert_eq!(c.tunnel_id, 3);
        assert_eq!(&c.group[12..], &[232, 1, 1, 1]);
    }

    #[test]
    fn unspecified_local_address_matches_any() {
        assert_eq!(tunnel_info(1, Ipv4Addr::UNSPECIFIED.into()).flags, 0);
        assert_eq!(tunnel_info(1, Ipv6Addr::UNSPECIFIED.into()).flags, 0);
        let specific = tunnel_info(2, "10.0.0.2".parse().unwrap());
        assert_eq!(specific.flags, TUNNEL_HAS_LOCAL_ADDR);
        assert_eq!(&specific.local_addr[12..], &[10, 0, 0, 2]);
    }

    #[test]
    fn ktime_conversion() {
        let now = Instant::now();
        assert_eq!(ktime_to_instant(0, now, 5_000_000_000), None);
        let t = ktime_to_instant(4_000_000_000, now, 5_000_000_000).unwrap();
        assert_eq!(now - t, Duration::from_secs(1));
        // A reading newer than our clock reading (another CPU, a race): now.
        assert_eq!(
            ktime_to_instant(6_000_000_000, now, 5_000_000_000),
            Some(now)
        );
    }

    #[test]
    fn per_cpu_sums() {
        let c = sum_channel(&[
            ChannelStatsRaw {
                packets: 2,
                bytes: 100,
                last_seen_ns: 7,
            },
            ChannelStatsRaw {
                packets: 3,
                bytes: 50,
                last_seen_ns: 9,
            },
        ]);
        assert_eq!((c.packets, c.bytes, c.last_seen_ns), (5, 150, 9));
        let mut a = TunnelStatsRaw::default();
        a.passed[PassReason::Malformed as usize] = 2;
        a.packets = 1;
        let mut b = a;
        b.ttl_raised = 4;
        let t = sum_tunnel(&[a, b]);
        assert_eq!(t.packets, 2);
        assert_eq!(t.passed[PassReason::Malformed as usize], 4);
        assert_eq!(t.ttl_raised, 4);
    }

    #[test]
    fn object_status_is_consistent() {
        assert_eq!(OBJECT.is_empty(), not_built_reason().is_some());
        if !OBJECT.is_empty() {
            assert_eq!(BUILD_STATUS, "built");
        }
    }
}
