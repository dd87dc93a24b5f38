//! The ingest TUN (`amt0`): one interface through which every ingested
//! packet enters FRR's namespace, whatever relay it came from (Linux allows
//! only 32 multicast VIFs, so one device per relay would not scale).
//!
//! The sidecar creates the TUN directly inside FRR's network namespace (a
//! helper thread `setns`es into it, so the rest of the process stays in its
//! own namespace with its AMT, DNS and HTTPS sockets), addresses it as a
//! point-to-point link (`local peer neighbor/32`; pimd needs an IPv4
//! address to make it a VIF; and for pim6d a link-local pair
//! `local6 peer neighbor6/128`), and installs per-source routes via the
//! neighbour (IPv6 sources: via the link-local neighbour, which pim6d's RPF
//! needs) so pimd's RPF check resolves to amt0. With `Ipv4Rpf::Mroute`
//! (FRR >= 10.3 with one static `ip mroute` toward the neighbour) IPv4
//! sources need no route of their own. The TUN disappears with
//! the process (it is not persistent), taking its routes with it, so a
//! crash leaves nothing stale in FRR's namespace.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::netlink::{self, Netlink, SourceRoute};

#[derive(Debug, Clone)]
pub struct TunConfig {
    pub name: String,
    /// FRR's network namespace (e.g. `/var/run/netns/ingest`); `None` = ours.
    pub netns: Option<PathBuf>,
    /// Our side of the point-to-point link (what pimd sees as its address).
    pub local: IpAddr,
    /// The sidecar's PIM neighbour address: the RPF next hop for sources.
    pub neighbor: IpAddr,
    /// Link-local IPv6 pair for pim6d (None: no IPv6 on the TUN).
    pub ipv6: Option<TunIpv6>,
    /// How pimd's RPF for IPv4 sources points at the TUN.
    pub ipv4_rpf: Ipv4Rpf,
    pub mtu: u32,
}

/// The TUN's IPv6 side: pim6d's link-local address and the sidecar's
/// (the PIMv6 neighbour and next hop of IPv6 source routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunIpv6 {
    pub local: Ipv6Addr,
    pub neighbor: Ipv6Addr,
}

/// How pimd's RPF lookup for an IPv4 source is made to point at the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Rpf {
    /// A /32 route per ingested source via the neighbour (every FRR).
    SourceRoutes,
    /// Nothing per source: FRR (>= 10.3) has `ip mroute 0.0.0.0/0
    /// <neighbour>` in its configuration, which its RPF lookup honours.
    Mroute,
}

/// The io::Error is part of each message (not an error `source`), so a
/// `{:#}` chain does not print it twice.
#[derive(Debug, Error)]
pub enum TunError {
    #[error("cannot open network namespace {path}: {error}")]
    Netns { path: PathBuf, error: io::Error },
    #[error("cannot enter network namespace {path} (needs CAP_SYS_ADMIN): {error}")]
    Setns { path: PathBuf, error: io::Error },
    #[error("cannot create TUN {name}: {error}{hint}")]
    Create {
        name: String,
        hint: &'static str,
        error: io::Error,
    },
    #[error("cannot configure {name}: {what}: {error}")]
    Configure {
        name: String,
        what: String,
        error: io::Error,
    },
    #[error("internal: namespace thread failed")]
    Thread,
}

/// The TUN device, its netlink socket (both in FRR's namespace) and index.
pub struct IngestTun {
    fd: Arc<OwnedFd>,
    name: String,
    ifindex: u32,
    netlink: Mutex<Netlink>,
    neighbor: IpAddr,
    neighbor6: Option<Ipv6Addr>,
    ipv4_rpf: Ipv4Rpf,
}

/// Opens the TUN (in the calling thread's namespace) with the workspace's
/// one TUN opener, naming what the operator must fix when it fails.
fn create_tun(name: &str) -> Result<OwnedFd, TunError> {
    amt_gateway::tun::open_tun(name).map_err(|error| {
        let hint = match error.raw_os_error() {
            Some(libc::EBUSY) => {
                " (it exists and is held by another process: is another frr-ingestd running?)"
            }
            Some(libc::EINVAL) => " (an interface with that name exists and is not a TUN)",
            Some(libc::EPERM) => " (needs CAP_NET_ADMIN)",
            Some(libc::ENOENT | libc::EACCES) => {
                " (cannot open /dev/net/tun: needs CAP_NET_ADMIN and read/write access to the device)"
            }
            _ => "",
        };
        TunError::Create {
            name: name.to_string(),
            hint,
            error,
        }
    })
}

fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
}

/// Run `f` on a thread that has entered `netns` (if any). Sockets and
/// devices created there belong to that namespace for their whole life.
fn in_netns<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, TunError> + Send + 'static,
) -> Result<T, TunError> {
    let netns = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(path) = &netns {
            let file = File::open(path).map_err(|error| TunError::Netns {
                path: path.clone(),
                error,
            })?;
            // SAFETY: setns on a namespace fd; affects only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r < 0 {
                return Err(TunError::Setns {
                    path: path.clone(),
                    error: io::Error::last_os_error(),
                });
            }
        }
        f()
    })
    .join()
    .map_err(|_| TunError::Thread)?
}

impl IngestTun {
    pub fn create(cfg: &TunConfig) -> Result<Self, TunError> {
        let c = cfg.clone();
        let (fd, netlink, ifindex) = in_netns(cfg.netns.as_deref(), move || {
            let fd = create_tun(&c.name)?;
            let conf = |what: &str, error| TunError::Configure {
                name: c.name.clone(),
                what: what.to_string(),
                error,
            };
            let mut nl = Netlink::open().map_err(|e| conf("netlink socket", e))?;
            let idx = nl
                .link_index(&c.name)
                .map_err(|e| conf("find ifindex", e))?;
            // Decapsulated packets arrive on amt0 from sources routed back
            // through amt0 (our routes), but strict rp_filter would still
            // drop them when the kernel's view differs; pimd does RPF itself.
            if c.local.is_ipv4() {
                let _ = write_sysctl(
                    &format!("/proc/sys/net/ipv4/conf/{}/rp_filter", c.name),
                    "0",
                );
            }
            let prefix = if c.local.is_ipv4() { 32 } else { 128 };
            nl.add_address(idx, c.local, Some(c.neighbor), prefix)
                .map_err(|e| conf(&format!("add address {} peer {}", c.local, c.neighbor), e))?;
            if let Some(v6) = c.ipv6 {
                // A TUN (NOARP, point-to-point) runs no duplicate address
                // detection and gets no link-local of its own: this pair is
                // pim6d's address and its PIMv6 neighbour on the link.
                let _ = write_sysctl(
                    &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", c.name),
                    "0",
                );
                nl.add_address(
                    idx,
                    IpAddr::V6(v6.local),
                    Some(IpAddr::V6(v6.neighbor)),
                    128,
                )
                .map_err(|e| conf(&format!("add address {} peer {}", v6.local, v6.neighbor), e))?;
            }
            nl.set_link_up(idx, Some(c.mtu))
                .map_err(|e| conf("set link up", e))?;
            Ok((fd, nl, idx))
        })?;
        Ok(Self {
            fd: Arc::new(fd),
            name: cfg.name.clone(),
            ifindex,
            netlink: Mutex::new(netlink),
            neighbor: cfg.neighbor,
            neighbor6: cfg.ipv6.map(|v6| v6.neighbor),
            ipv4_rpf: cfg.ipv4_rpf,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The device fd, shared with whatever writes packets (AMT driver,
    /// PIM Hellos, injector).
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }

    /// Write one IP packet into FRR's namespace as if received on the TUN.
    pub fn write_packet(&self, packet: &[u8]) -> io::Result<()> {
        amt_gateway::tun::write_packet(&*self.fd, packet)
    }

    fn route_for(&self, source: IpAddr) -> SourceRoute {
        match source {
            IpAddr::V4(_) => SourceRoute {
                destination: source,
                prefix_len: 32,
                gateway: self.neighbor.is_ipv4().then_some(self.neighbor),
            },
            // An IPv6 source routes via the link-local neighbour: pim6d's
            // RPF needs a PIMv6 neighbour at the next hop (research note
            // frr10-and-ipv6.md), not our IPv4 one.
            IpAddr::V6(_) => SourceRoute {
                destination: source,
                prefix_len: 128,
                gateway: self.neighbor6.map(IpAddr::V6),
            },
        }
    }

    fn netlink(&self) -> std::sync::MutexGuard<'_, Netlink> {
        // A poisoned lock only means another thread panicked mid-call; the
        // socket itself is still usable.
        self.netlink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `source` gets a route of its own (see [`Ipv4Rpf`]).
    fn routed_per_source(&self, source: IpAddr) -> bool {
        source.is_ipv6() || self.ipv4_rpf == Ipv4Rpf::SourceRoutes
    }

    /// Route `source` through the TUN so pimd's RPF for it resolves here.
    pub fn add_source_route(&self, source: IpAddr) -> io::Result<()> {
        if !self.routed_per_source(source) {
            return Ok(());
        }
        if source.is_ipv6() && self.neighbor6.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the TUN has no IPv6 (tun.ipv6 = false): IPv6 sources cannot be ingested",
            ));
        }
        let r = self.route_for(source);
        self.netlink().add_route(&r, self.ifindex)
    }

    pub fn del_source_route(&self, source: IpAddr) -> io::Result<()> {
        if !self.routed_per_source(source) {
            return Ok(());
        }
        let r = self.route_for(source);
        self.netlink().del_route(&r, self.ifindex)
    }

    /// Source routes currently installed by us (for status and cleanup).
    pub fn own_routes(&self) -> io::Result<Vec<IpAddr>> {
        let mut nl = self.netlink();
        let mut v: Vec<IpAddr> = nl
            .list_own_routes(false)?
            .into_iter()
            .chain(nl.list_own_routes(true)?)
            .filter(|(_, oif)| *oif == self.ifindex)
            .map(|(r, _)| r.destination)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Remove routes we tagged that point at interfaces other than our TUN
    /// (left by an instance that died before its TUN went away).
    pub fn remove_stale_routes(&self) -> io::Result<usize> {
        let mut nl = self.netlink();
        let mut n = 0;
        for v6 in [false, true] {
            for (r, oif) in nl.list_own_routes(v6)? {
                if oif != self.ifindex {
                    nl.del_route(&r, oif)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Open a netlink socket in FRR's namespace subscribed to MFC changes.
    pub fn open_mroute_monitor(netns: Option<&Path>) -> Result<OwnedFd, TunError> {
        in_netns(netns, || {
            netlink::open_mroute_monitor().map_err(|error| TunError::Configure {
                name: "netlink".into(),
                what: "subscribe to multicast route events".into(),
                error,
            })
        })
    }
}

impl amt_gateway::tun::PacketSink for IngestTun {
    fn write_packet(&self, packet: &[u8]) -> io::Result<()> {
        amt_gateway::tun::write_packet(&*self.fd, packet)
    }
}
