//! Southbound toward the kernel: the ingest TUN, routes, PIM on the TUN.

pub mod netlink;
pub mod pim;
pub mod tun;
