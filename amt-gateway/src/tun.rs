//! Where decapsulated packets go: the [`PacketSink`] trait, and the one
//! place in the workspace that opens a TUN device ([`open_tun`]; the `tun`
//! crate issues the TUNSETIFF ioctl with IFF_TUN | IFF_NO_PI, single queue,
//! so every write is one bare IP packet).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

/// Receives inner IP packets from tunnels. Called from the tunnel tasks
/// (possibly several at once), once per packet: implementations must not
/// block for long and should not allocate.
pub trait PacketSink: Send + Sync + 'static {
    fn write_packet(&self, packet: &[u8]) -> io::Result<()>;
}

/// A sink that discards everything (counting-only use).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardSink;

impl PacketSink for DiscardSink {
    fn write_packet(&self, _packet: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Opens (creates, or attaches to an existing persistent) TUN device
/// `name` in the calling thread's network namespace: layer 3, no packet
/// information header, one queue, non-blocking (a full queue then drops the
/// packet with `WouldBlock` instead of stalling a tunnel), close-on-exec.
/// The device is left as it is (down, unaddressed when new): configuring
/// it is the caller's job. It disappears when the fd is closed unless
/// someone made it persistent. Needs CAP_NET_ADMIN.
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface names are 1-15 bytes, no '/'",
        ));
    }
    // Only the name and the layer: no address, MTU or up flag is set
    // through the crate, and its default is no packet information header
    // (IFF_NO_PI) and one queue (no IFF_MULTI_QUEUE).
    let mut config = tun::Configuration::default();
    config.tun_name(name).layer(tun::Layer::L3);
    let device = tun::create(&config).map_err(|e| match e {
        tun::Error::Io(e) => e,
        other => io::Error::other(other),
    })?;
    device.set_nonblock()?;
    // SAFETY: into_raw_fd hands over ownership of the open device fd.
    Ok(unsafe { OwnedFd::from_raw_fd(device.into_raw_fd()) })
}

/// Writes one IP packet to a TUN fd, as if received on the device.
pub fn write_packet(fd: &impl AsRawFd, packet: &[u8]) -> io::Result<()> {
    // SAFETY: the fd is open for the duration of the call; the pointer and
    // length describe a valid slice.
    let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != packet.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to TUN",
        ));
    }
    Ok(())
}

/// Writes packets to a TUN file descriptor. The kernel accepts concurrent
/// writes on one TUN fd, so one `TunWriter` can be shared by every tunnel
/// task.
#[derive(Debug)]
pub struct TunWriter {
    fd: OwnedFd,
}

impl TunWriter {
    /// Wraps an already configured TUN fd (e.g. the daemon's `amt0`). It
    /// should be non-blocking (see [`open_tun`]).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }
}

impl AsFd for TunWriter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PacketSink for TunWriter {
    fn write_packet(&self, packet: &[u8]) -> io::Result<()> {
        write_packet(&self.fd, packet)
    }
}

/// A TUN device owned by this process, for `amtgw --tun`.
#[derive(Debug)]
pub struct TunDevice {
    writer: TunWriter,
    name: String,
    ifindex: u32,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl TunDevice {
    /// Opens TUN `name` (see [`open_tun`]).
    pub fn create(name: &str) -> io::Result<Self> {
        let fd = open_tun(name)?;
        let cname = std::ffi::CString::new(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a NUL-terminated interface name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            writer: TunWriter { fd },
            name: name.to_owned(),
            ifindex,
        })
    }

    /// Creates the TUN (see [`TunDevice::create`]) inside the network
    /// namespace at `netns` (e.g. `/run/netns/frr`) and sets it up there;
    /// the rest of the process stays where it is. Needs CAP_SYS_ADMIN
    /// (setns) besides CAP_NET_ADMIN. [`TunDevice::ifindex`] is the index
    /// in that namespace.
    pub fn create_in_netns(name: &str, netns: &std::path::Path) -> io::Result<Self> {
        let ns = std::fs::File::open(netns)?;
        let name = name.to_string();
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let dev = Self::create(&name)?;
            dev.set_up()?;
            Ok(dev)
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Interface index (in the namespace the device was created in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sets IFF_UP on the device (writes to a down TUN fail with EIO).
    /// Addresses and routes remain the caller's job.
    pub fn set_up(&self) -> io::Result<()> {
        // SAFETY: plain socket(2) call; the fd is wrapped immediately.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: freshly created fd that we own.
        let ctl = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(self.name.bytes()) {
            *dst = src as libc::c_char;
        }
        let flags_ioctl = |request: libc::Ioctl, req: &mut IfReqFlags| {
            // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write the name and flags
            // of a struct ifreq, which IfReqFlags mirrors (same size, see test).
            if unsafe { libc::ioctl(ctl.as_raw_fd(), request, req as *mut IfReqFlags) } < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        flags_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        req.flags |= libc::IFF_UP as libc::c_short;
        flags_ioctl(libc::SIOCSIFFLAGS, &mut req)?;
        Ok(())
    }

    /// Splits off the writer (to share it as a [`PacketSink`]); the device
    /// lives as long as the writer does.
    pub fn into_writer(self) -> TunWriter {
        self.writer
    }
}

impl AsFd for TunDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.writer.as_fd()
    }
}

impl PacketSink for TunDevice {
    fn write_packet(&self, packet: &[u8]) -> io::Result<()> {
        self.writer.write_packet(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(
            std::mem::size_of::<IfReqFlags>(),
            std::mem::size_of::<libc::ifreq>()
        );
    }

    #[test]
    fn name_length_is_checked() {
        assert!(TunDevice::create("").is_err());
        assert!(TunDevice::create("a-name-that-is-too-long").is_err());
        assert!(open_tun("a/b").is_err());
    }
}
