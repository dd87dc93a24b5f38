//! RFC 7450 Automatic Multicast Tunneling (AMT) gateway.
//!
//! * [`wire`]: AMT, IPv4/IPv6, IGMPv3 and MLDv2 formats (checked views,
//!   typed errors, encode and decode side by side).

pub mod gateway;
pub mod relay;
pub mod wire;

pub use gateway::{
    DropCounters, DropReason, Family, LossReason, Received, SubscribeError, SubscriptionStats,
    Transmit, Tunnel, TunnelConfig, TunnelEvent, TunnelState, TunnelStats,
};
pub mod driver;
pub mod tun;

pub use driver::{
    DriverConfig, DriverError, DriverStats, RelayEvent, SubscriptionSnapshot, TunnelHandle,
    TunnelSnapshot, spawn_tunnel,
};
pub use tun::{DiscardSink, PacketSink, TunDevice, TunWriter};
