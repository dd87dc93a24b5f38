//! UDP socket helpers: destinations as a socket needs them, Multicast Data
//! without copying the packet, receive-drop counters.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use amt_gateway::wire::amt::MULTICAST_DATA_HEADER;
use socket2::SockAddr;

/// `dest` as a socket of the given family takes it: an IPv6 (dual-stack)
/// socket reaches IPv4 gateways through v4-mapped addresses.
pub fn socket_destination(v6_socket: bool, dest: SocketAddr) -> SocketAddr {
    match (v6_socket, dest) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        (_, d) => d,
    }
}

/// Sends `[Multicast Data header][packet]` to `dest` without copying.
pub fn send_data(
    ctrl_fd: libc::c_int,
    ctrl_v6: bool,
    dest: SocketAddr,
    packet: &[u8],
) -> io::Result<()> {
    let addr = SockAddr::from(socket_destination(ctrl_v6, dest));
    let mut iov = [
        libc::iovec {
            iov_base: MULTICAST_DATA_HEADER.as_ptr() as *mut libc::c_void,
            iov_len: MULTICAST_DATA_HEADER.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        },
    ];
    // SAFETY: zeroed msghdr is valid; we point it at live stack/slice data.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: msg describes valid buffers for the duration of the call; the
    // kernel only reads them (the mut casts are required by the C API).
    let n = unsafe { libc::sendmsg(ctrl_fd, &msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// SO_MEMINFO (asm-generic value, used by x86 and arm), which libc does not
/// export for Linux: the socket's memory counters, drops included.
const SO_MEMINFO: libc::c_int = 55;
/// Counters SO_MEMINFO returns (`SK_MEMINFO_VARS` of linux/sock_diag.h).
const SK_MEMINFO_VARS: usize = 9;

/// Datagrams the kernel dropped for this socket since it was opened (full
/// receive buffer, bad checksum, filter): the `drops` column of
/// /proc/net/udp (and raw), read with SO_MEMINFO. None where unsupported.
pub fn receive_drops(sock: &impl AsRawFd) -> Option<u64> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: info is a writable u32 array of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let drops = libc::SK_MEMINFO_DROPS as usize;
    (rc == 0 && (len as usize) > drops * mem::size_of::<u32>()).then(|| u64::from(info[drops]))
}
