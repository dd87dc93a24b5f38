//! RFC 7450 Automatic Multicast Tunneling (AMT) gateway.
//!
//! * [`wire`]: AMT, IPv4/IPv6, IGMPv3 and MLDv2 formats (checked views,
//!   typed errors, encode and decode side by side).
//! * [`gateway`]: the sans-IO [`Tunnel`] state machine (one per relay).
//! * [`driver`]: tokio driver: socket per tunnel, batched receive, packets
//!   into a shared [`PacketSink`], control through a [`TunnelHandle`].
//! * [`tun`]: the sink trait and a TUN device/writer.
//! * [`dataplane`]: the data plane choice (`auto|kernel|userspace`) and the
//!   kernel data plane (BPF decapsulation at TC ingress).
//! * [`relay`]: a sans-IO lab relay core (used by the lab `amt-relay` and
//!   by interoperability tests).

pub mod dataplane;
pub mod driver;
pub mod gateway;
pub mod relay;
pub mod tun;
pub mod wire;

pub use driver::{
    DriverConfig, DriverError, DriverStats, RelayEvent, SubscriptionSnapshot, TunnelHandle,
    TunnelSnapshot, spawn_tunnel,
};
pub use gateway::{
    DropCounters, DropReason, Family, LossReason, Received, SubscribeError, SubscriptionStats,
    Transmit, Tunnel, TunnelConfig, TunnelEvent, TunnelState, TunnelStats,
};
pub use tun::{DiscardSink, PacketSink, TunDevice, TunWriter};
