//! The lab AMT relay (`amt-relay`): the I/O around the sans-IO relay core
//! `amt_gateway::relay::Relay`, which holds all protocol logic.
//!
//! * [`server`]: the event loop: AMT sockets, timers, status.
//! * [`listener`]: one AMT address with its own relay core (a relay may
//!   answer on thousands of addresses in one process).
//! * [`native`]: native reception of the subscribed (S,G) channels.
//! * [`poll`]: readiness of many sockets (epoll).
//! * [`output`]: JSON events and the status object.
//! * [`synthetic`]: the `--synthetic` traffic generator for benchmarks.
//! * [`udp`]: socket helpers (sending, options, receive drops).
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

pub mod listener;
pub mod native;
pub mod output;
pub mod poll;
pub mod server;
pub mod synthetic;
pub mod udp;

pub use listener::{RangeError, parse_address_range};
pub use server::{Options, ServeError, serve};
pub use synthetic::SyntheticOptions;
