//! A small rtnetlink client: exactly the link, address and route operations
//! the sidecar needs, with synchronous request/ACK. Kept in-house (instead of
//! the rtnetlink crate) because the socket must be opened inside FRR's
//! network namespace and used from a plain fd, and because the handful of
//! messages is simpler to own than a large generic API.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;

const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// Routing protocol number tagged on the source routes the sidecar installs
/// (`ip route show proto 240`). Outside iproute2's and FRR's assigned
/// numbers; zebra imports such routes as kernel ("K") routes, which is what
/// pimd's RPF lookup needs.
pub const RTPROT_FRR_INGEST: u8 = 240;

/// A route to one source through the ingest TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRoute {
    pub destination: IpAddr,
    pub prefix_len: u8,
    /// Next hop on the TUN (the sidecar's PIM neighbour address), if any.
    pub gateway: Option<IpAddr>,
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn family(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// Iterate (type, payload) over the rtattrs in `data`; stops at malformed ones.
fn attrs(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let hdr = data.get(off..off + 4)?;
        let len = u16::from_ne_bytes([hdr[0], hdr[1]]) as usize;
        let kind = u16::from_ne_bytes([hdr[2], hdr[3]]);
        if len < 4 {
            return None;
        }
        let payload = data.get(off + 4..off + len)?;
        off += (len + 3) & !3;
        Some((kind & 0x3fff, payload))
    })
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

impl Netlink {
    /// Open a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid (pid 0 = kernel assigns).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setting SO_RCVTIMEO with a valid timeval; a stuck kernel
        // reply must not hang the daemon forever.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Self { fd, seq: 1 })
    }

    fn send(&mut self, msg_type: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = NLMSG_HDRLEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: msg is a valid buffer of msg.len() bytes.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(seq)
    }

    /// Receive replies for `seq` until ACK/DONE; collect data messages.
    fn recv_until_done(&mut self, seq: u32) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let data = &buf[..n as usize];
            let mut off = 0usize;
            while off + NLMSG_HDRLEN <= data.len() {
                let h = &data[off..off + NLMSG_HDRLEN];
                let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let kind = u16::from_ne_bytes([h[4], h[5]]);
                let flags = u16::from_ne_bytes([h[6], h[7]]);
                let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if len < NLMSG_HDRLEN || off + len > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &data[off + NLMSG_HDRLEN..off + len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push((kind, payload.to_vec()));
                        if flags & NLM_F_MULTI == 0 {
                            // A single reply to a non-dump GET.
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    fn request(&mut self, msg_type: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        let seq = self.send(msg_type, flags | NLM_F_ACK, body)?;
        self.recv_until_done(seq).map(|_| ())
    }

    /// Interface index of `name` in this socket's namespace.
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut body = vec![0u8; 16];
        push_attr(&mut body, IFLA_IFNAME, &[name.as_bytes(), &[0]].concat());
        let seq = self.send(RTM_GETLINK, 0, &body)?;
        let replies = self.recv_until_done(seq)?;
        for (kind, p) in replies {
            if kind == RTM_NEWLINK && p.len() >= 16 {
                let idx = i32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
                if idx > 0 {
                    return Ok(idx as u32);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name}"),
        ))
    }

    /// Set a link up (and its MTU when given).
    pub fn set_link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut body = Vec::with_capacity(32);
        body.push(libc::AF_UNSPEC as u8);
        body.push(0);
        body.extend_from_slice(&0u16.to_ne_bytes());
        body.extend_from_slice(&(index as i32).to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        if let Some(mtu) = mtu {
            push_attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(RTM_NEWLINK, 0, &body)
    }

    /// Add `local` (with `peer` as point-to-point destination when given)
    /// to the link. Existing identical address is not an error.
    pub fn add_address(
        &mut self,
        index: u32,
        local: IpAddr,
        peer: Option<IpAddr>,
        prefix_len: u8,
    ) -> io::Result<()> {
        let mut body = Vec::with_capacity(48);
        body.push(family(local));
        body.push(prefix_len);
        body.push(0);
        body.push(RT_SCOPE_UNIVERSE);
        body.extend_from_slice(&index.to_ne_bytes());
        push_attr(&mut body, IFA_LOCAL, &addr_bytes(local));
        push_attr(&mut body, IFA_ADDRESS, &addr_bytes(peer.unwrap_or(local)));
        match self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    fn route_body(route: &SourceRoute, oif: u32) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        body.push(family(route.destination));
        body.push(route.prefix_len);
        body.push(0); // src_len
        body.push(0); // tos
        body.push(RT_TABLE_MAIN);
        body.push(RTPROT_FRR_INGEST);
        body.push(if route.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        });
        body.push(RTN_UNICAST);
        body.extend_from_slice(&0u32.to_ne_bytes());
        push_attr(&mut body, RTA_TABLE, &(RT_TABLE_MAIN as u32).to_ne_bytes());
        push_attr(&mut body, RTA_DST, &addr_bytes(route.destination));
        push_attr(&mut body, RTA_OIF, &oif.to_ne_bytes());
        if let Some(gw) = route.gateway {
            push_attr(&mut body, RTA_GATEWAY, &addr_bytes(gw));
        }
        body
    }

    /// Install (or replace) a route through interface `oif`.
    pub fn add_route(&mut self, route: &SourceRoute, oif: u32) -> io::Result<()> {
        let body = Self::route_body(route, oif);
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body)
    }

    /// Add a route only if none exists for that prefix (EEXIST otherwise).
    pub fn add_route_exclusive(&mut self, route: &SourceRoute, oif: u32) -> io::Result<()> {
        let body = Self::route_body(route, oif);
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    /// Remove a route. A route already gone is not an error.
    pub fn del_route(&mut self, route: &SourceRoute, oif: u32) -> io::Result<()> {
        let body = Self::route_body(route, oif);
        match self.request(RTM_DELROUTE, 0, &body) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }

    /// Routes of the main table tagged with [`RTPROT_FRR_INGEST`].
    pub fn list_own_routes(&mut self, family_v6: bool) -> io::Result<Vec<(SourceRoute, u32)>> {
        let mut body = vec![0u8; 12];
        body[0] = if family_v6 {
            libc::AF_INET6 as u8
        } else {
            libc::AF_INET as u8
        };
        let seq = self.send(RTM_GETROUTE, NLM_F_DUMP, &body)?;
        let mut out = Vec::new();
        for (kind, p) in self.recv_until_done(seq)? {
            if kind != RTM_NEWROUTE
                || p.len() < 12
                || p[5] != RTPROT_FRR_INGEST
                || p[4] != RT_TABLE_MAIN
            {
                continue;
            }
            let prefix_len = p[1];
            let mut dst = None;
            let mut gw = None;
            let mut oif = 0u32;
            for (t, v) in attrs(&p[12..]) {
                match t {
                    RTA_DST => dst = ip_from(v),
                    RTA_GATEWAY => gw = ip_from(v),
                    RTA_OIF if v.len() == 4 => oif = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                    _ => {}
                }
            }
            if let Some(destination) = dst {
                out.push((
                    SourceRoute {
                        destination,
                        prefix_len,
                        gateway: gw,
                    },
                    oif,
                ));
            }
        }
        Ok(out)
    }
}

/// A netlink socket subscribed to kernel multicast-route (MFC) changes:
/// each message means "pimd changed forwarding state", a cheap trigger to
/// re-read the join state at once instead of waiting for the next poll.
pub fn open_mroute_monitor() -> io::Result<OwnedFd> {
    let nl = Netlink::open()?;
    for group in [libc::RTNLGRP_IPV4_MROUTE, libc::RTNLGRP_IPV6_MROUTE] {
        let g = group as libc::c_int;
        // SAFETY: valid int option on a netlink socket we own.
        let r = unsafe {
            libc::setsockopt(
                nl.fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                &g as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(nl.fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_padded_and_parsed_back() {
        let mut b = Vec::new();
        push_attr(&mut b, RTA_DST, &[198, 51, 100, 4]);
        push_attr(&mut b, IFLA_IFNAME, b"amt0\0");
        push_attr(&mut b, RTA_OIF, &7u32.to_ne_bytes());
        assert_eq!(b.len() % 4, 0);
        let got: Vec<_> = attrs(&b).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (RTA_DST, &[198u8, 51, 100, 4][..]));
        assert_eq!(got[1], (IFLA_IFNAME, &b"amt0\0"[..]));
        assert_eq!(ip_from(got[0].1), Some("198.51.100.4".parse().unwrap()));
    }

    #[test]
    fn malformed_attrs_stop_iteration() {
        assert_eq!(attrs(&[0xff, 0xff, 1, 0, 1]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[]).count(), 0);
    }

    #[test]
    fn route_body_layout() {
        let r = SourceRoute {
            destination: "198.51.100.4".parse().unwrap(),
            prefix_len: 32,
            gateway: Some("169.254.77.2".parse().unwrap()),
        };
        let b = Netlink::route_body(&r, 9);
        assert_eq!(b[0], libc::AF_INET as u8);
        assert_eq!(b[1], 32);
        assert_eq!(b[5], RTPROT_FRR_INGEST);
        let a: Vec<_> = attrs(&b[12..]).collect();
        assert!(a.contains(&(RTA_GATEWAY, &[169u8, 254, 77, 2][..])));
        assert!(a.contains(&(RTA_OIF, &9u32.to_ne_bytes()[..])));
    }
}
