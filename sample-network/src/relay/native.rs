//! Native reception: raw UDP sockets holding the source-specific joins of
//! the channels gateways subscribed (see the module documentation of
//! [`crate::relay`] for why raw sockets).
//!
//! Joins are spread over as many raw sockets as the kernel's per-socket
//! limits need: `net.ipv4.igmp_max_memberships` groups per IPv4 socket
//! (default 20), `net.ipv4.igmp_max_msf` sources per group per IPv4 socket
//! (default 10), `net.ipv6.mld_max_msf` per IPv6 socket (default 64), and
//! the socket option memory `net.core.optmem_max` for both. The limits are
//! read at start; a join the kernel still refuses for want of room
//! (ENOBUFS/ENOMEM) marks that socket (or that group on it) full and goes to
//! another socket, a new one if needed. Each raw socket carries a socket
//! filter that passes only multicast destinations: a raw UDP socket also
//! gets a copy of every unicast UDP datagram to the host (the relay's own
//! AMT traffic included), which many sockets would otherwise copy many times.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use ingest_types::SourceGroup;
use serde_json::json;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use super::output::{IoStats, event};
use super::udp::receive_drops;
use crate::iface::Interface;
use crate::mcast::{force_recv_buffer, join_ssm, leave_ssm, set_int};

/// Why the raw sockets could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("raw IPv4 socket (needs CAP_NET_RAW)")]
    RawSocket(#[source] io::Error),
    #[error(transparent)]
    Setup(#[from] io::Error),
}

/// Address family of a raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(group: IpAddr) -> Self {
        match group {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// Per-socket join limits of the kernel (sysctls of this namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinLimits {
    /// Groups per IPv4 socket (`net.ipv4.igmp_max_memberships`).
    pub groups_v4: usize,
    /// Sources per group per IPv4 socket (`net.ipv4.igmp_max_msf`).
    pub sources_v4: usize,
    /// Sources per group per IPv6 socket (`net.ipv6.mld_max_msf`); IPv6
    /// has no group count limit but option memory.
    pub sources_v6: usize,
}

impl JoinLimits {
    /// The limits in force (Linux defaults where a sysctl is unreadable).
    pub fn read() -> Self {
        let read = |path: &str, default: usize| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(default)
        };
        Self {
            groups_v4: read("/proc/sys/net/ipv4/igmp_max_memberships", 20),
            sources_v4: read("/proc/sys/net/ipv4/igmp_max_msf", 10),
            sources_v6: read("/proc/sys/net/ipv6/mld_max_msf", 64),
        }
    }

    fn groups(&self, family: Family) -> usize {
        match family {
            Family::V4 => self.groups_v4.max(1),
            Family::V6 => usize::MAX,
        }
    }

    fn sources(&self, family: Family) -> usize {
        match family {
            Family::V4 => self.sources_v4.max(1),
            Family::V6 => self.sources_v6.max(1),
        }
    }
}

/// One raw socket and the joins it holds.
pub struct RawSocket {
    socket: Socket,
    family: Family,
    /// Joined groups and how many sources each.
    groups: HashMap<IpAddr, usize>,
    /// Groups for which the kernel refused one more source here.
    full_groups: HashSet<IpAddr>,
    /// The kernel refused one more group here.
    full: bool,
}

impl RawSocket {
    pub fn family(&self) -> Family {
        self.family
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn channel_count(&self) -> usize {
        self.groups.values().sum()
    }

    /// Datagrams the kernel dropped for this socket (receive buffer full).
    pub fn drops(&self) -> Option<u64> {
        receive_drops(&self.socket)
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Room for `channel` without a new membership (its group is here).
    fn has_source_room(&self, channel: &SourceGroup, limits: &JoinLimits) -> bool {
        self.groups
            .get(&channel.group)
            .is_some_and(|n| *n < limits.sources(self.family))
            && !self.full_groups.contains(&channel.group)
    }

    /// Room for a new group membership.
    fn has_group_room(&self, channel: &SourceGroup, limits: &JoinLimits) -> bool {
        !self.full
            && !self.groups.contains_key(&channel.group)
            && self.groups.len() < limits.groups(self.family)
    }
}

/// The raw sockets and the (S,G) joins they hold.
pub struct Native {
    sockets: Vec<RawSocket>,
    /// Sockets `..registered` were handed out by [`Self::new_sockets`].
    registered: usize,
    iface: Option<Interface>,
    recv_buffer: usize,
    limits: JoinLimits,
    /// Joined channels and the socket holding each.
    joined: BTreeMap<SourceGroup, usize>,
    /// Wanted channels whose join failed.
    failed: BTreeSet<SourceGroup>,
    /// IPv6 raw sockets cannot be opened here.
    no_ipv6: Option<String>,
}

/// Placement attempts for one join before it counts as failed.
const MAX_PLACEMENTS: usize = 8;

impl Native {
    /// Opens the first IPv4 raw socket (required) and the first IPv6 one
    /// (a warning without it).
    pub fn open(iface: Option<Interface>, recv_buffer: usize) -> Result<Self, NativeError> {
        let mut native = Self {
            sockets: Vec::new(),
            registered: 0,
            iface,
            recv_buffer,
            limits: JoinLimits::read(),
            joined: BTreeMap::new(),
            failed: BTreeSet::new(),
            no_ipv6: None,
        };
        let raw4 = open_raw(Family::V4, recv_buffer).map_err(|e| match e {
            RawOpenError::Socket(e) => NativeError::RawSocket(e),
            RawOpenError::Setup(e) => NativeError::Setup(e),
        })?;
        native.sockets.push(raw4);
        match open_raw(Family::V6, recv_buffer) {
            Ok(raw6) => native.sockets.push(raw6),
            Err(RawOpenError::Socket(e)) => {
                event(
                    "warning",
                    json!({ "message": format!("no IPv6 native reception: {e}") }),
                );
                native.no_ipv6 = Some(e.to_string());
            }
            Err(RawOpenError::Setup(e)) => return Err(e.into()),
        }
        Ok(native)
    }

    pub fn limits(&self) -> JoinLimits {
        self.limits
    }

    pub fn sockets(&self) -> &[RawSocket] {
        &self.sockets
    }

    /// Channels joined.
    pub fn joined(&self) -> impl Iterator<Item = &SourceGroup> {
        self.joined.keys()
    }

    /// Sockets opened since the last call (index, fd), to watch them.
    pub fn new_sockets(&mut self) -> Vec<(usize, RawFd)> {
        let new = (self.registered..self.sockets.len())
            .map(|i| (i, self.sockets[i].fd()))
            .collect();
        self.registered = self.sockets.len();
        new
    }

    /// Joins `channel` (a gateway wants it); a failure is counted,
    /// reported and retried by [`Self::retry_failed`].
    pub fn join(&mut self, channel: SourceGroup, stats: &mut IoStats) {
        let (s, g) = (channel.source, channel.group);
        let result = match SourceGroup::new(s, g) {
            Ok(ch) => self.place(ch),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                self.failed.remove(&channel);
                event("native_join", json!({ "source": s, "group": g }));
            }
            Err(e) => {
                stats.join_errors += 1;
                self.failed.insert(channel);
                event(
                    "native_join_failed",
                    json!({ "source": s, "group": g, "error": e }),
                );
            }
        }
    }

    /// Joins `channel` on a socket with room, opening one if none has.
    fn place(&mut self, channel: SourceGroup) -> Result<(), String> {
        let family = Family::of(channel.group);
        if let (Family::V6, Some(e)) = (family, &self.no_ipv6) {
            return Err(format!("no IPv6 socket: {e}"));
        }
        for _ in 0..MAX_PLACEMENTS {
            let index = match self.socket_with_room(&channel, family) {
                Some(i) => i,
                None => {
                    let raw = open_raw(family, self.recv_buffer).map_err(|e| e.to_string())?;
                    self.sockets.push(raw);
                    self.sockets.len() - 1
                }
            };
            let raw = &mut self.sockets[index];
            match join_ssm(&raw.socket, &channel, self.iface.as_ref()) {
                Ok(()) => {
                    *raw.groups.entry(channel.group).or_default() += 1;
                    self.joined.insert(channel, index);
                    return Ok(());
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM)) => {
                    // Out of room on this socket: mark it, try another.
                    if raw.groups.contains_key(&channel.group) {
                        raw.full_groups.insert(channel.group);
                    } else {
                        raw.full = true;
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "no room after {MAX_PLACEMENTS} sockets refused the join (ENOBUFS)"
        ))
    }

    /// A socket of `family` that can take `channel`: one holding its group
    /// first (no new membership), then one with room for a group.
    fn socket_with_room(&self, channel: &SourceGroup, family: Family) -> Option<usize> {
        let of_family = || {
            self.sockets
                .iter()
                .enumerate()
                .filter(move |(_, s)| s.family == family)
        };
        of_family()
            .find(|(_, s)| s.has_source_room(channel, &self.limits))
            .or_else(|| of_family().find(|(_, s)| s.has_group_room(channel, &self.limits)))
            .map(|(i, _)| i)
    }

    /// Leaves `channel` (no gateway wants it any more).
    pub fn leave(&mut self, channel: SourceGroup) {
        if self.failed.remove(&channel) {
            return;
        }
        let Some(index) = self.joined.remove(&channel) else {
            return;
        };
        let raw = &mut self.sockets[index];
        let _ = leave_ssm(&raw.socket, &channel, self.iface.as_ref());
        raw.full = false;
        raw.full_groups.remove(&channel.group);
        if let Some(n) = raw.groups.get_mut(&channel.group) {
            *n -= 1;
            if *n == 0 {
                raw.groups.remove(&channel.group);
            }
        }
        event(
            "native_leave",
            json!({ "source": channel.source, "group": channel.group }),
        );
    }

    /// Tries the joins that failed again (after a change of channels, as
    /// a failure may have been for want of room that a leave freed).
    pub fn retry_failed(&mut self, stats: &mut IoStats) {
        let failed: Vec<SourceGroup> = self.failed.iter().copied().collect();
        for channel in failed {
            self.join(channel, stats);
        }
    }

    /// Receives one packet from socket `index` into `buf`, whole IP header
    /// included; `Ok(None)` for a datagram to skip, an error (WouldBlock)
    /// when nothing is queued.
    pub fn recv(&self, index: usize, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(raw) = self.sockets.get(index) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        match raw.family {
            Family::V4 => recv_whole(&raw.socket, buf).map(Some),
            Family::V6 => recv_v6(&raw.socket, buf),
        }
    }
}

enum RawOpenError {
    /// The socket itself (no CAP_NET_RAW, no IPv6).
    Socket(io::Error),
    Setup(io::Error),
}

impl std::fmt::Display for RawOpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawOpenError::Socket(e) => write!(f, "raw socket: {e}"),
            RawOpenError::Setup(e) => write!(f, "raw socket setup: {e}"),
        }
    }
}

/// A non-blocking raw UDP socket that receives only its own joins' multicast.
fn open_raw(family: Family, recv_buffer: usize) -> Result<RawSocket, RawOpenError> {
    let domain = match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    };
    let socket =
        Socket::new(domain, Type::RAW, Some(Protocol::UDP)).map_err(RawOpenError::Socket)?;
    let setup = || -> io::Result<()> {
        match family {
            Family::V4 => socket.set_multicast_all_v4(false)?,
            Family::V6 => {
                let _ = socket.set_multicast_all_v6(false);
                for opt in [
                    libc::IPV6_RECVPKTINFO,
                    libc::IPV6_RECVHOPLIMIT,
                    libc::IPV6_RECVTCLASS,
                ] {
                    set_int(&socket, libc::IPPROTO_IPV6, opt, 1)?;
                }
            }
        }
        let _ = force_recv_buffer(&socket, recv_buffer);
        // Best effort: without the filter the relay skips unicast itself.
        let _ = attach_multicast_filter(&socket, family);
        socket.set_nonblocking(true)
    };
    setup().map_err(RawOpenError::Setup)?;
    Ok(RawSocket {
        socket,
        family,
        groups: HashMap::new(),
        full_groups: HashSet::new(),
        full: false,
    })
}

/// Classic BPF: `SKF_NET_OFF`, loads relative to the network header (an
/// IPv6 raw socket's filter sees the packet from the UDP header on).
const SKF_NET_OFF: i32 = -0x100000;

/// A socket filter that passes only packets to a multicast destination
/// (IPv4 224/4: first byte 0xe0..=0xef; IPv6 ff00::/8).
fn attach_multicast_filter(socket: &Socket, family: Family) -> io::Result<()> {
    const LDB_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const ALU_AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // First byte of the destination address, masked; equal: accept.
    let (offset, mask, value) = match family {
        Family::V4 => (16, 0xf0, 0xe0),
        Family::V6 => (24, 0xff, 0xff),
    };
    socket.attach_filter(&[
        SockFilter::new(LDB_ABS, 0, 0, (SKF_NET_OFF + offset) as u32),
        SockFilter::new(ALU_AND, 0, 0, mask),
        SockFilter::new(JEQ, 0, 1, value),
        SockFilter::new(RET, 0, 0, u32::MAX),
        SockFilter::new(RET, 0, 0, 0),
    ])
}

/// Receives one datagram from a raw IPv4 socket (IP header included),
/// without blocking.
fn recv_whole(sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into our buffer; MSG_DONTWAIT keeps it non-blocking.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Receives one IPv6 UDP datagram from the raw socket into `buf[40..]` and
/// writes a rebuilt IPv6 header into `buf[..40]`. Returns the packet length.
pub fn recv_v6(sock: &Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
    const HDR: usize = 40;
    let mut from: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    let mut cmsg_space = [0u64; 16];
    let payload = &mut buf[HDR..];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: zeroed msghdr is valid; fields point at live buffers below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_space.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&cmsg_space) as _;
    // SAFETY: msg points at valid, writable buffers of the declared sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if msg.msg_flags & libc::MSG_TRUNC != 0 || n > u16::MAX as usize {
        return Ok(None);
    }
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut hop_limit = 64u8;
    let mut tclass = 0u8;
    // SAFETY: standard CMSG iteration over the control buffer the kernel filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    hop_limit =
                        std::ptr::read_unaligned(data.cast::<libc::c_int>()).clamp(0, 255) as u8;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                    tclass =
                        std::ptr::read_unaligned(data.cast::<libc::c_int>()).clamp(0, 255) as u8;
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = Ipv6Addr::from(from.sin6_addr.s6_addr);
    let hdr = &mut buf[..HDR];
    hdr[0] = 0x60 | (tclass >> 4);
    hdr[1] = tclass << 4;
    hdr[2] = 0;
    hdr[3] = 0;
    hdr[4..6].copy_from_slice(&(n as u16).to_be_bytes());
    hdr[6] = 17;
    hdr[7] = hop_limit;
    hdr[8..24].copy_from_slice(&src.octets());
    hdr[24..40].copy_from_slice(&dst.octets());
    Ok(Some(HDR + n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    /// Datagrams from 127.0.0.1 to `port` that `raw` receives within 200 ms.
    fn unicast_seen(raw: &Socket, port: u16) -> usize {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            sender.send_to(b"unicast", ("127.0.0.1", port)).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            // The raw socket sees every local UDP datagram; count ours.
            if recv_whole(raw, &mut buf).is_ok_and(|n| n >= 28)
                && u16::from_be_bytes([buf[22], buf[23]]) == port
            {
                seen += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    }

    /// Needs root (CAP_NET_RAW), as the relay does: fails without it.
    #[test]
    fn the_socket_filter_keeps_unicast_out_of_raw_sockets() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let open = || {
            let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
                .expect("raw socket (run the tests as root)");
            raw.set_nonblocking(true).unwrap();
            raw
        };
        let plain = open();
        assert_eq!(unicast_seen(&plain, port), 3, "without the filter");
        let filtered = open();
        attach_multicast_filter(&filtered, Family::V4).unwrap();
        assert_eq!(unicast_seen(&filtered, port), 0, "with the filter");
    }
}
