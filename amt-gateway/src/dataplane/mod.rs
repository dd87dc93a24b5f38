//! Data planes: where AMT Multicast Data is decapsulated and handed to the
//! stack.
//!
//! * **userspace** (always there): the tunnel's socket receives every
//!   datagram (recvmmsg), the sans-IO [`Tunnel`] checks it, and the driver
//!   writes the inner packet into the TUN.
//! * **kernel** ([`KernelDataPlane`]): a BPF program at TC ingress of the
//!   uplink decapsulates the Multicast Data of subscribed (S,G)s from the
//!   tunnel's relay and redirects it into the TUN's ingress (directly, or
//!   through a veth pair into another namespace). Everything else (control
//!   messages, forged or unsubscribed data, fragments, anything odd) still
//!   reaches the socket, so the userspace path runs underneath as the
//!   fallback for those packets. Counters come from per-CPU BPF maps and are
//!   fed into the [`Tunnel`] (`record_offloaded_data`), so its per-(S,G)
//!   statistics, stall probe and NoData detection work as before.
//!
//! Choosing: [`select`] turns a [`DataPlaneMode`] (`auto|kernel|userspace`)
//! into a [`DataPlaneSelection`]: the loaded kernel data plane, if any, and
//! a [`DataPlaneStatus`] that says which data plane runs and why, and for
//! the kernel one how its programs are attached ([`AttachInfo`]: TCX on
//! Linux >= 6.6, tc legacy = clsact + bpf filter before; `auto` by default,
//! `AMT_DATAPLANE_ATTACH=tcx|tc` or [`select_with_attach`] to force one).
//!
//! Using it (the daemon): `select` once with the TUN's [`DeliveryTarget`],
//! then put the `Arc<KernelDataPlane>` into every
//! [`DriverConfig::kernel`](crate::DriverConfig::kernel); the driver
//! registers each tunnel ([`KernelDataPlane::add_tunnel`]), mirrors its
//! relay address and subscriptions, and removes it when the tunnel ends.
//! The same calls can be made directly with a [`KernelTunnel`].

pub mod attach;
pub mod kernel;
pub mod netlink;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

pub use attach::{ATTACH_ENV, AttachInfo, AttachMode, AttachPreference, ParseAttachError};
pub use kernel::{
    AttachedInterface, AttachmentRole, ChannelCounters, DeliveryTarget, KernelConfig,
    KernelDataPlane, KernelError, KernelTunnel, PassReason, TunnelCounters,
};

use crate::gateway::Tunnel;
use ingest_types::SourceGroup;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DataPlaneMode {
    /// Kernel when it loads, else userspace (with the reason).
    #[default]
    Auto,
    /// Kernel or fail.
    Kernel,
    /// Userspace only.
    Userspace,
}

impl DataPlaneMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        }
    }
}

impl fmt::Display for DataPlaneMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown data plane {0:?} (expected auto, kernel or userspace)")]
pub struct ParseModeError(String);

impl FromStr for DataPlaneMode {
    type Err = ParseModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kernel" => Ok(Self::Kernel),
            "userspace" => Ok(Self::Userspace),
            other => Err(ParseModeError(other.to_string())),
        }
    }
}

/// The data plane that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataPlaneKind {
    Kernel,
    Userspace,
}

impl DataPlaneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        }
    }
}

/// Why the kernel data plane is not running.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KernelUnavailable {
    /// The BPF object is not in this binary (no clang at build time, ...).
    NotBuilt(String),
    /// A capability is missing (CAP_BPF, CAP_NET_ADMIN; CAP_SYS_ADMIN for
    /// another namespace).
    NoPermission(String),
    /// Nowhere to deliver (no TUN) or another prerequisite is missing.
    NoTarget(String),
    /// Loading or attaching failed otherwise (old kernel, verifier, ...).
    Failed(String),
}

impl fmt::Display for KernelUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotBuilt(why) => write!(f, "kernel data plane not built: {why}"),
            Self::NoPermission(why) => write!(
                f,
                "kernel data plane not permitted (needs CAP_BPF and CAP_NET_ADMIN, and CAP_SYS_ADMIN to reach another namespace): {why}"
            ),
            Self::NoTarget(why) => write!(f, "kernel data plane has no target: {why}"),
            Self::Failed(why) => write!(f, "kernel data plane failed to load: {why}"),
        }
    }
}

impl From<&KernelError> for KernelUnavailable {
    fn from(e: &KernelError) -> Self {
        match e {
            KernelError::NotBuilt(why) => Self::NotBuilt((*why).to_string()),
            KernelError::NoTarget(why) => Self::NoTarget(why.clone()),
            e if e.is_permission() => Self::NoPermission(e.to_string()),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// Why [`DataPlaneStatus::running`] is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DataPlaneReason {
    /// The mode asked for exactly this data plane.
    Requested,
    /// `auto`, and the kernel data plane loaded.
    KernelLoaded,
    /// `auto`, and the kernel data plane could not be used.
    Fallback(KernelUnavailable),
}

/// Which data plane runs and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataPlaneStatus {
    pub requested: DataPlaneMode,
    pub running: DataPlaneKind,
    pub reason: DataPlaneReason,
    /// The kernel data plane's attach mode (when it runs), as decided when
    /// it was opened ([`KernelDataPlane::attach_info`] has the current one).
    pub attach: Option<AttachInfo>,
}

impl fmt::Display for DataPlaneStatus {
    /// `kernel (tc legacy, kernel 6.1.0-28-amd64; requested auto: kernel
    /// data plane loaded)`, `userspace (requested auto: <why not kernel>)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.running.as_str())?;
        if let Some(attach) = &self.attach {
            write!(f, "{attach}; ")?;
        }
        write!(f, "requested {}", self.requested)?;
        match &self.reason {
            DataPlaneReason::Requested => write!(f, ")"),
            DataPlaneReason::KernelLoaded => write!(f, ": kernel data plane loaded)"),
            DataPlaneReason::Fallback(why) => write!(f, ": {why})"),
        }
    }
}

impl DataPlaneStatus {
    /// The reason as one line of text (for logs and JSON).
    pub fn reason_text(&self) -> String {
        match &self.reason {
            DataPlaneReason::Requested => format!("{} requested", self.requested),
            DataPlaneReason::KernelLoaded => "kernel data plane loaded".into(),
            DataPlaneReason::Fallback(why) => why.to_string(),
        }
    }
}

/// What [`select`] decided.
#[derive(Debug)]
pub struct DataPlaneSelection {
    pub status: DataPlaneStatus,
    /// Present when the kernel data plane runs.
    pub kernel: Option<Arc<KernelDataPlane>>,
}

/// Opens the data plane `mode` asks for. `target` is where packets must go
/// (`None`: there is no TUN, so only userspace can run). `Kernel` returns
/// the error when the kernel data plane cannot load; `Auto` falls back to
/// userspace and says why. The attach mode follows `AMT_DATAPLANE_ATTACH`
/// (`auto|tcx|tc`, `auto` when unset; an invalid value is an error of the
/// kernel data plane like any other).
pub fn select(
    mode: DataPlaneMode,
    target: Option<DeliveryTarget>,
    min_inner_ttl: Option<u8>,
) -> Result<DataPlaneSelection, KernelError> {
    select_impl(mode, target, min_inner_ttl, KernelDataPlane::open)
}

/// [`select`] with an explicit attach preference (instead of
/// `AMT_DATAPLANE_ATTACH`).
pub fn select_with_attach(
    mode: DataPlaneMode,
    target: Option<DeliveryTarget>,
    min_inner_ttl: Option<u8>,
    attach: AttachPreference,
) -> Result<DataPlaneSelection, KernelError> {
    select_impl(mode, target, min_inner_ttl, |config| {
        KernelDataPlane::open_with_attach(config, attach)
    })
}

fn select_impl(
    mode: DataPlaneMode,
    target: Option<DeliveryTarget>,
    min_inner_ttl: Option<u8>,
    open: impl FnOnce(KernelConfig) -> Result<KernelDataPlane, KernelError>,
) -> Result<DataPlaneSelection, KernelError> {
    let userspace = |reason| DataPlaneSelection {
        status: DataPlaneStatus {
            requested: mode,
            running: DataPlaneKind::Userspace,
            reason,
            attach: None,
        },
        kernel: None,
    };
    if mode == DataPlaneMode::Userspace {
        return Ok(userspace(DataPlaneReason::Requested));
    }
    let Some(target) = target else {
        let why = "no TUN to deliver into".to_string();
        if mode == DataPlaneMode::Kernel {
            return Err(KernelError::NoTarget(why));
        }
        return Ok(userspace(DataPlaneReason::Fallback(
            KernelUnavailable::NoTarget(why),
        )));
    };
    match open(KernelConfig {
        target,
        min_inner_ttl,
    }) {
        Ok(plane) => Ok(DataPlaneSelection {
            status: DataPlaneStatus {
                requested: mode,
                running: DataPlaneKind::Kernel,
                reason: if mode == DataPlaneMode::Kernel {
                    DataPlaneReason::Requested
                } else {
                    DataPlaneReason::KernelLoaded
                },
                attach: Some(plane.attach_info()),
            },
            kernel: Some(Arc::new(plane)),
        }),
        Err(e) if mode == DataPlaneMode::Auto => Ok(userspace(DataPlaneReason::Fallback(
            KernelUnavailable::from(&e),
        ))),
        Err(e) => Err(e),
    }
}

/// Kernel-side counters of one tunnel as the driver reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPathStats {
    /// Interface whose ingress hook handles this tunnel's packets.
    pub uplink: Option<String>,
    pub counters: TunnelCounters,
    /// Kernel map updates that failed (the affected (S,G)s stay on the
    /// userspace path).
    pub errors: u64,
}

/// Last counter reading of one (S,G), to turn totals into increments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reading {
    packets: u64,
    bytes: u64,
    last_seen: Option<Instant>,
}

/// Glue between a driver task and its [`KernelTunnel`]: mirrors the relay
/// and the subscriptions into the maps and feeds the kernel's per-(S,G)
/// counters into the sans-IO [`Tunnel`]. Map errors are logged (once per
/// 10 s) and counted; the packets concerned then take the userspace path.
pub(crate) struct KernelOffload {
    tunnel: KernelTunnel,
    readings: HashMap<SourceGroup, Reading>,
    /// A relay the kernel could not follow (no route, unsupported uplink):
    /// not retried until the relay changes (the check runs on every
    /// wakeup of the driver).
    failed_relay: Option<SocketAddr>,
    errors: u64,
    last_warning: Option<Instant>,
}

/// How often the driver feeds kernel counters into the tunnel (besides
/// before every timer and snapshot) while a subscription made within
/// [`FEED_EAGER_FOR`] waits for its first data: its DataFlowing edge (the
/// flow's "forwarding") is seen within this.
pub(crate) const FEED_INTERVAL: Duration = Duration::from_millis(500);
/// How long after a subscription its first data is watched for eagerly.
pub(crate) const FEED_EAGER_FOR: Duration = Duration::from_secs(10);
/// The feed otherwise: data that starts late on a quiet channel is seen
/// within this (the kernel forwards it from the first packet; only the
/// flow's state and counters lag). Flowing data needs no periodic feed (the
/// tunnel's activity timer feeds before it looks), nor do the NoData and
/// DataStopped deadlines (fed before they are checked). With 1,000 tunnels
/// a 500 ms feed everywhere was 2,000 wakeups a second and 7 % of a core
/// with no data at all; 5 s still cost 0.8 %.
pub(crate) const FEED_IDLE_INTERVAL: Duration = Duration::from_secs(15);

impl KernelOffload {
    pub(crate) fn new(tunnel: KernelTunnel) -> Self {
        Self {
            tunnel,
            readings: HashMap::new(),
            failed_relay: None,
            errors: 0,
            last_warning: None,
        }
    }

    fn failed(&mut self, what: &str, e: &KernelError) {
        self.errors += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_warning = Some(now);
            warn!(error = %e, total = self.errors, "kernel data plane: {what} failed; the userspace path handles those packets");
        }
    }

    /// Follows the tunnel's relay (None before discovery).
    pub(crate) fn sync_relay(&mut self, relay: Option<SocketAddr>) {
        let relay = relay.map(|r| SocketAddr::new(r.ip().to_canonical(), r.port()));
        if self.tunnel.relay() == relay || (relay.is_some() && relay == self.failed_relay) {
            return;
        }
        self.failed_relay = None;
        match relay {
            None => self.tunnel.clear_relay(),
            Some(r) => match self.tunnel.set_relay(r) {
                Ok(()) => {
                    // Once per tunnel: with a thousand relays, debug.
                    debug!(relay = %r, uplink = ?self.tunnel.uplink(), "kernel data plane follows the relay")
                }
                Err(e) => {
                    self.failed_relay = Some(r);
                    self.failed("following the relay", &e);
                }
            },
        }
    }

    pub(crate) fn subscribe(&mut self, sg: SourceGroup) {
        match self.tunnel.subscribe(sg) {
            Ok(()) => {
                self.readings.insert(sg, Reading::default());
            }
            Err(e) => self.failed("subscribe", &e),
        }
    }

    /// Call before `Tunnel::unsubscribe`: the last increments still count
    /// for the subscription.
    pub(crate) fn unsubscribe(&mut self, tunnel: &mut Tunnel, sg: SourceGroup) {
        match self.tunnel.unsubscribe(sg) {
            Ok(Some(last)) => self.feed_one(tunnel, sg, last),
            Ok(None) => {}
            Err(e) => self.failed("unsubscribe", &e),
        }
        self.readings.remove(&sg);
    }

    /// Call before `Tunnel::close`.
    pub(crate) fn unsubscribe_all(&mut self, tunnel: &mut Tunnel) {
        let subs: Vec<SourceGroup> = self.tunnel.subscriptions().collect();
        for sg in subs {
            self.unsubscribe(tunnel, sg);
        }
    }

    /// Feeds every subscription's new kernel counts into `tunnel`.
    pub(crate) fn feed(&mut self, tunnel: &mut Tunnel) {
        let subs: Vec<SourceGroup> = self.tunnel.subscriptions().collect();
        for sg in subs {
            match self.tunnel.channel_counters(sg) {
                Ok(Some(now)) => self.feed_one(tunnel, sg, now),
                Ok(None) => {}
                Err(e) => self.failed("reading counters", &e),
            }
        }
    }

    fn feed_one(&mut self, tunnel: &mut Tunnel, sg: SourceGroup, c: ChannelCounters) {
        let prev = self.readings.entry(sg).or_default();
        let packets = c.packets.saturating_sub(prev.packets);
        let bytes = c.bytes.saturating_sub(prev.bytes);
        *prev = Reading {
            packets: c.packets,
            bytes: c.bytes,
            last_seen: c.last_seen,
        };
        if packets > 0
            && let Some(at) = c.last_seen
        {
            tunnel.record_offloaded_data(sg, packets, bytes, at);
        }
    }

    pub(crate) fn stats(&self) -> KernelPathStats {
        KernelPathStats {
            uplink: self.tunnel.uplink(),
            counters: self.tunnel.counters().unwrap_or_default(),
            errors: self.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parsing_and_display() {
        for m in [
            DataPlaneMode::Auto,
            DataPlaneMode::Kernel,
            DataPlaneMode::Userspace,
        ] {
            assert_eq!(m.as_str().parse::<DataPlaneMode>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        let e = "xdp".parse::<DataPlaneMode>().unwrap_err();
        assert!(e.to_string().contains("\"xdp\""));
        assert_eq!(DataPlaneMode::default(), DataPlaneMode::Auto);
    }

    #[test]
    fn userspace_is_chosen_without_touching_the_kernel() {
        let sel = select(DataPlaneMode::Userspace, None, Some(2)).unwrap();
        assert!(sel.kernel.is_none());
        assert_eq!(sel.status.running, DataPlaneKind::Userspace);
        assert_eq!(sel.status.reason, DataPlaneReason::Requested);
        assert_eq!(sel.status.to_string(), "userspace (requested userspace)");
    }

    #[test]
    fn without_a_target_auto_falls_back_and_kernel_fails() {
        let sel = select(DataPlaneMode::Auto, None, Some(2)).unwrap();
        assert_eq!(sel.status.running, DataPlaneKind::Userspace);
        assert!(matches!(
            sel.status.reason,
            DataPlaneReason::Fallback(KernelUnavailable::NoTarget(_))
        ));
        assert!(sel.status.reason_text().contains("no TUN"));
        assert!(select(DataPlaneMode::Kernel, None, Some(2)).is_err());
    }

    #[test]
    fn error_classification() {
        let e = KernelError::NotBuilt("clang not found");
        assert_eq!(
            KernelUnavailable::from(&e),
            KernelUnavailable::NotBuilt("clang not found".into())
        );
        let e = KernelError::Load("bpf_prog_load: Operation not permitted (os error 1)".into());
        assert!(matches!(
            KernelUnavailable::from(&e),
            KernelUnavailable::NoPermission(_)
        ));
        let e = KernelError::Load("verifier says no".into());
        assert!(matches!(
            KernelUnavailable::from(&e),
            KernelUnavailable::Failed(_)
        ));
        let status = DataPlaneStatus {
            requested: DataPlaneMode::Auto,
            running: DataPlaneKind::Userspace,
            reason: DataPlaneReason::Fallback(KernelUnavailable::from(&KernelError::NotBuilt(
                "clang not found",
            ))),
            attach: None,
        };
        assert_eq!(
            status.to_string(),
            "userspace (requested auto: kernel data plane not built: clang not found)"
        );
        let e = KernelError::AttachSetting("tcxx".parse::<AttachPreference>().unwrap_err());
        assert_eq!(
            e.to_string(),
            "AMT_DATAPLANE_ATTACH: unknown attach mode \"tcxx\" (expected auto, tcx or tc)"
        );
        assert!(matches!(
            KernelUnavailable::from(&e),
            KernelUnavailable::Failed(_)
        ));
    }

    #[test]
    fn kernel_status_names_the_attach_mode_and_kernel() {
        let status = DataPlaneStatus {
            requested: DataPlaneMode::Auto,
            running: DataPlaneKind::Kernel,
            reason: DataPlaneReason::KernelLoaded,
            attach: Some(AttachInfo {
                mode: AttachMode::TcLegacy,
                requested: AttachPreference::Auto,
                kernel_release: "6.1.0-28-amd64".into(),
                reason: "TCX not available".into(),
            }),
        };
        assert_eq!(
            status.to_string(),
            "kernel (tc legacy, kernel 6.1.0-28-amd64; requested auto: kernel data plane loaded)"
        );
    }
}
