//! Native reception: raw UDP sockets holding the source-specific joins of
//! the channels gateways subscribed (see the module documentation of
//! [`crate::relay`] for why raw sockets).

use std::collections::BTreeSet;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;

use ingest_types::SourceGroup;
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

use super::output::{IoStats, event};
use super::udp::set_int;
use crate::iface::Interface;
use crate::mcast::{force_recv_buffer, join_ssm, leave_ssm};

/// Why the raw sockets could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("raw IPv4 socket (needs CAP_NET_RAW)")]
    RawSocket(#[source] io::Error),
    #[error(transparent)]
    Setup(#[from] io::Error),
}

/// The raw sockets and the (S,G) joins they hold.
pub struct Native {
    pub raw4: Socket,
    pub raw6: Option<Socket>,
    iface: Option<Interface>,
    pub joined: BTreeSet<SourceGroup>,
    /// Wanted channels whose join failed.
    failed: BTreeSet<SourceGroup>,
}

impl Native {
    pub fn open(iface: Option<Interface>, recv_buffer: usize) -> Result<Self, NativeError> {
        let raw4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
            .map_err(NativeError::RawSocket)?;
        raw4.set_multicast_all_v4(false)?;
        let _ = force_recv_buffer(&raw4, recv_buffer);
        raw4.set_nonblocking(true)?;
        let raw6 = match Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::UDP)) {
            Ok(s) => {
                let _ = s.set_multicast_all_v6(false);
                let _ = force_recv_buffer(&s, recv_buffer);
                for opt in [
                    libc::IPV6_RECVPKTINFO,
                    libc::IPV6_RECVHOPLIMIT,
                    libc::IPV6_RECVTCLASS,
                ] {
                    set_int(&s, libc::IPPROTO_IPV6, opt, 1)?;
                }
                s.set_nonblocking(true)?;
                Some(s)
            }
            Err(e) => {
                event(
                    "warning",
                    json!({ "message": format!("no IPv6 native reception: {e}") }),
                );
                None
            }
        };
        Ok(Self {
            raw4,
            raw6,
            iface,
            joined: BTreeSet::new(),
            failed: BTreeSet::new(),
        })
    }

    /// Joins `channel` (a gateway wants it); a failure is counted,
    /// reported and retried by [`Self::retry_failed`].
    pub fn join(&mut self, channel: SourceGroup, stats: &mut IoStats) {
        let (s, g) = (channel.source, channel.group);
        let result = match (SourceGroup::new(s, g), self.socket_for(g)) {
            (Ok(ch), Some(sock)) => {
                join_ssm(sock, &ch, self.iface.as_ref()).map_err(|e| e.to_string())
            }
            (Err(e), _) => Err(e.to_string()),
            (_, None) => Err("no IPv6 socket".to_string()),
        };
        match result {
            Ok(()) => {
                self.failed.remove(&channel);
                self.joined.insert(channel);
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

    /// Leaves `channel` (no gateway wants it any more).
    pub fn leave(&mut self, channel: SourceGroup) {
        if self.failed.remove(&channel) || !self.joined.remove(&channel) {
            return;
        }
        let (s, g) = (channel.source, channel.group);
        if let (Ok(ch), Some(sock)) = (SourceGroup::new(s, g), self.socket_for(g)) {
            let _ = leave_ssm(sock, &ch, self.iface.as_ref());
        }
        event("native_leave", json!({ "source": s, "group": g }));
    }

    /// Tries the joins that failed again (after a change of channels, as
    /// a failure may have been for want of room that a leave freed).
    pub fn retry_failed(&mut self, stats: &mut IoStats) {
        let failed: Vec<SourceGroup> = self.failed.iter().copied().collect();
        for channel in failed {
            self.join(channel, stats);
        }
    }

    fn socket_for(&self, group: IpAddr) -> Option<&Socket> {
        match group {
            IpAddr::V4(_) => Some(&self.raw4),
            IpAddr::V6(_) => self.raw6.as_ref(),
        }
    }

    /// Receives one IPv4 packet (whole, header included) into `buf`;
    /// `None` when nothing is queued.
    pub fn recv_v4(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: recv into our buffer; MSG_DONTWAIT keeps it non-blocking.
        let n = unsafe {
            libc::recv(
                self.raw4.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).ok()
    }
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
