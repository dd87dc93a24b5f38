//! RFC 7450 Automatic Multicast Tunneling (AMT) gateway.
//!
//! * [`wire`]: AMT, IPv4/IPv6, IGMPv3 and MLDv2 formats (checked views,
//!   typed errors, encode and decode side by side).

pub mod gateway;
pub mod wire;

pub use gateway::{
    DropCounters, DropReason, Family, LossReason, Received, SubscribeError, SubscriptionStats,
    Transmit, Tunnel, TunnelConfig, TunnelEvent, TunnelState, TunnelStats,
};
