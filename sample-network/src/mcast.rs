//! Sockets for SSM receivers and sources, IPv4 and IPv6.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::iface::Interface;
use ingest_types::SourceGroup;

/// SO_RCVBUFFORCE (asm-generic value, used by x86 and arm): lets root exceed rmem_max.
const SO_RCVBUFFORCE: libc::c_int = 33;

/// A UDP socket of the channel's address family.
fn udp_socket(channel: &SourceGroup) -> io::Result<Socket> {
    let domain = if channel.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
}

/// A non-blocking UDP socket bound to (G, port) that joined (S,G) on `iface`
/// (the kernel's choice by route when `None`) and receives only that channel.
pub fn open_receiver(
    channel: &SourceGroup,
    iface: Option<&Interface>,
    port: u16,
    recv_buffer: usize,
) -> io::Result<Socket> {
    let socket = udp_socket(channel)?;
    socket.set_reuse_address(true)?;
    if recv_buffer > 0 {
        force_recv_buffer(&socket, recv_buffer)?;
    }
    // Without this, Linux delivers every group joined by any socket on the port.
    match channel.group {
        IpAddr::V4(_) => socket.set_multicast_all_v4(false)?,
        IpAddr::V6(_) => socket.set_multicast_all_v6(false)?,
    }
    socket.bind(&SocketAddr::new(channel.group, port).into())?;
    join_ssm(&socket, channel, iface)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// IGMPv3 / MLDv2 source-specific join of `channel` on `iface`.
pub fn join_ssm(
    socket: &Socket,
    channel: &SourceGroup,
    iface: Option<&Interface>,
) -> io::Result<()> {
    ssm_membership(socket, channel, iface, Membership::Join)
}

/// Leaves what [`join_ssm`] joined (closing the socket does the same).
pub fn leave_ssm(
    socket: &Socket,
    channel: &SourceGroup,
    iface: Option<&Interface>,
) -> io::Result<()> {
    ssm_membership(socket, channel, iface, Membership::Leave)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Membership {
    Join,
    Leave,
}

fn ssm_membership(
    socket: &Socket,
    channel: &SourceGroup,
    iface: Option<&Interface>,
    change: Membership,
) -> io::Result<()> {
    match (channel.source, channel.group) {
        (IpAddr::V4(source), IpAddr::V4(group)) => {
            let local = match iface {
                Some(i) => i.first_ipv4().map_err(io::Error::other)?,
                None => Ipv4Addr::UNSPECIFIED,
            };
            match change {
                Membership::Join => socket.join_ssm_v4(&source, &group, &local),
                Membership::Leave => socket.leave_ssm_v4(&source, &group, &local),
            }
        }
        _ => {
            let option = match change {
                Membership::Join => libc::MCAST_JOIN_SOURCE_GROUP,
                Membership::Leave => libc::MCAST_LEAVE_SOURCE_GROUP,
            };
            source_group_request(socket, channel, iface, option)
        }
    }
}

/// MCAST_JOIN/LEAVE_SOURCE_GROUP (RFC 3678), which socket2 does not wrap.
fn source_group_request(
    socket: &Socket,
    channel: &SourceGroup,
    iface: Option<&Interface>,
    option: libc::c_int,
) -> io::Result<()> {
    let level = if channel.is_ipv4() {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    };
    // SAFETY: group_source_req is plain old data; all-zero is a valid value.
    let mut request: libc::group_source_req = unsafe { mem::zeroed() };
    request.gsr_interface = iface.map_or(0, |i| i.index);
    write_storage(&mut request.gsr_group, channel.group);
    write_storage(&mut request.gsr_source, channel.source);
    set_option(socket, level, option, &request)
}

fn write_storage(storage: &mut libc::sockaddr_storage, addr: IpAddr) {
    let sockaddr = socket2::SockAddr::from(SocketAddr::new(addr, 0));
    let len = (sockaddr.len() as usize).min(mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: both are plain byte buffers; len is bounded by the destination size
    // and by the source's own length.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sockaddr.as_ptr().cast::<u8>(),
            (storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
}

/// SO_RCVBUFFORCE (root) with a fallback to SO_RCVBUF (capped at rmem_max).
pub fn force_recv_buffer(socket: &Socket, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int(socket, libc::SOL_SOCKET, SO_RCVBUFFORCE, value)
        .or_else(|_| socket.set_recv_buffer_size(bytes))
}

/// `setsockopt` of an int option socket2 does not wrap.
pub fn set_int(
    socket: &Socket,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set_option(socket, level, option, &value)
}

/// `setsockopt` with `value` (a C struct or int the option expects).
fn set_option<T>(
    socket: &Socket,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: value points at a live T and the length is its size; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A UDP socket sending from `channel.source` to (G, port): bound to S, connected
/// to G, multicast interface and TTL/hop limit set, loopback off.
pub fn open_sender(
    channel: &SourceGroup,
    iface: Option<&Interface>,
    port: u16,
    ttl: u32,
) -> io::Result<Socket> {
    let socket = udp_socket(channel)?;
    socket
        .bind(&SocketAddr::new(channel.source, 0).into())
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot send from {} (is it an address of this host?): {e}",
                    channel.source
                ),
            )
        })?;
    match channel.group {
        IpAddr::V4(_) => {
            if let Some(i) = iface {
                socket.set_multicast_if_v4(&i.first_ipv4().map_err(io::Error::other)?)?;
            }
            socket.set_multicast_ttl_v4(ttl)?;
            socket.set_multicast_loop_v4(false)?;
        }
        IpAddr::V6(_) => {
            if let Some(i) = iface {
                socket.set_multicast_if_v6(i.index)?;
            }
            socket.set_multicast_hops_v6(ttl)?;
            socket.set_multicast_loop_v6(false)?;
        }
    }
    socket.connect(&SocketAddr::new(channel.group, port).into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_holds_the_address_family_and_bytes() {
        // SAFETY: sockaddr_storage is plain old data.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        write_storage(&mut storage, IpAddr::V4(Ipv4Addr::new(232, 1, 1, 1)));
        assert_eq!(i32::from(storage.ss_family), libc::AF_INET);
        // SAFETY: the family is AF_INET, so the storage holds a sockaddr_in.
        let sin =
            unsafe { &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        assert_eq!(
            u32::from_be(sin.sin_addr.s_addr),
            u32::from(Ipv4Addr::new(232, 1, 1, 1))
        );
    }
}
