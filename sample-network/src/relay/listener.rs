//! One AMT address of the relay: its UDP socket and its own relay core.
//! Each address is a relay identity of its own as gateways see it (own
//! secret, nonces and subscriptions); answers and data leave from the
//! address the gateway sent to, because they go out on that socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use amt_gateway::relay::{Relay, RelayConfig};
use socket2::{Domain, Protocol, Socket, Type};

use super::udp::{receive_drops, send_data, socket_destination};

/// Most addresses one `--listen-range` may name (a typo like a /8 range
/// must not open millions of sockets).
pub const MAX_RANGE_ADDRESSES: u128 = 65_536;

pub struct Listener {
    pub address: SocketAddr,
    socket: UdpSocket,
    /// An IPv6 socket (IPv4 gateways through v4-mapped addresses).
    v6: bool,
    pub relay: Relay,
}

impl Listener {
    /// Binds `address` (dual-stack for `[::]`); the core advertises
    /// `config.advertised`, else `address` when it is specific.
    pub fn open(
        address: SocketAddr,
        config: &RelayConfig,
        now: Instant,
        seed: u64,
    ) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        if address.is_ipv6() && address.ip().is_unspecified() {
            let _ = socket.set_only_v6(false);
        }
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.set_nonblocking(true)?;
        let config = RelayConfig {
            advertised: config
                .advertised
                .or((!address.ip().is_unspecified()).then_some(address.ip())),
            ..config.clone()
        };
        Ok(Self {
            address,
            socket: socket.into(),
            v6: address.is_ipv6(),
            relay: Relay::new(config, now, seed),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// One datagram; `None` when none is queued (or on a receive error).
    pub fn recv(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        loop {
            match self.socket.recv_from(buf) {
                Ok((n, from)) => {
                    return Some((n, SocketAddr::new(from.ip().to_canonical(), from.port())));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn send_to(&self, payload: &[u8], dest: SocketAddr) -> io::Result<usize> {
        self.socket
            .send_to(payload, socket_destination(self.v6, dest))
    }

    /// Sends a native packet as Multicast Data to `gateway`.
    pub fn send_data(&self, gateway: SocketAddr, packet: &[u8]) -> io::Result<()> {
        send_data(self.fd(), self.v6, gateway, packet)
    }

    /// The local address for a Discovery from `from` (Advertisements name
    /// it when no address is configured).
    pub fn local_ip(&self, from: SocketAddr) -> IpAddr {
        let listen = self.address.ip();
        if listen.is_unspecified() {
            route_source(from).unwrap_or(listen)
        } else {
            listen
        }
    }

    /// Datagrams the kernel dropped for this socket (full receive buffer).
    pub fn drops(&self) -> Option<u64> {
        receive_drops(&self.socket)
    }
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

/// Why a `--listen-range` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{0:?} is not FIRST-LAST (two addresses joined by '-')")]
    Syntax(String),
    #[error("{0:?}: FIRST and LAST are of different address families")]
    MixedFamilies(String),
    #[error("{0:?}: LAST is below FIRST")]
    Reversed(String),
    #[error("{0:?} names {1} addresses, more than {MAX_RANGE_ADDRESSES}")]
    TooLarge(String, u128),
}

/// The addresses FIRST..=LAST of `FIRST-LAST` (IPv4 or IPv6).
pub fn parse_address_range(text: &str) -> Result<Vec<IpAddr>, RangeError> {
    let syntax = || RangeError::Syntax(text.to_string());
    let (first, last) = text.split_once('-').ok_or_else(syntax)?;
    let first: IpAddr = first.trim().parse().map_err(|_| syntax())?;
    let last: IpAddr = last.trim().parse().map_err(|_| syntax())?;
    let (first, last, v4) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (u128::from(u32::from(a)), u128::from(u32::from(b)), true)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), false),
        _ => return Err(RangeError::MixedFamilies(text.to_string())),
    };
    if last < first {
        return Err(RangeError::Reversed(text.to_string()));
    }
    let count = last - first + 1;
    if count > MAX_RANGE_ADDRESSES {
        return Err(RangeError::TooLarge(text.to_string(), count));
    }
    Ok((first..=last)
        .map(|n| {
            if v4 {
                IpAddr::V4(Ipv4Addr::from(n as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(n))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_both_families() {
        let v4 = parse_address_range("192.0.2.254-192.0.3.1").unwrap();
        assert_eq!(
            v4,
            ["192.0.2.254", "192.0.2.255", "192.0.3.0", "192.0.3.1"]
                .map(|a| a.parse::<IpAddr>().unwrap())
        );
        let v6 = parse_address_range("2001:db8::ff - 2001:db8::100").unwrap();
        assert_eq!(v6.len(), 2);
        assert_eq!(parse_address_range("10.0.0.1-10.0.0.1").unwrap().len(), 1);
    }

    #[test]
    fn bad_ranges_name_the_input() {
        assert_eq!(
            parse_address_range("10.0.0.1").unwrap_err(),
            RangeError::Syntax("10.0.0.1".into())
        );
        assert_eq!(
            parse_address_range("10.0.0.9-10.0.0.1").unwrap_err(),
            RangeError::Reversed("10.0.0.9-10.0.0.1".into())
        );
        assert_eq!(
            parse_address_range("10.0.0.1-2001:db8::1").unwrap_err(),
            RangeError::MixedFamilies("10.0.0.1-2001:db8::1".into())
        );
        assert_eq!(
            parse_address_range("10.0.0.0-10.255.255.255").unwrap_err(),
            RangeError::TooLarge("10.0.0.0-10.255.255.255".into(), 1 << 24)
        );
        assert!(
            parse_address_range("10.0.0.0-10.255.255.255")
                .unwrap_err()
                .to_string()
                .contains("10.0.0.0-10.255.255.255")
        );
    }
}
