//! I/O tasks beside the watcher: PIM on the TUN (Hellos out, pimd's Hellos
//! and Join/Prunes in) and the kernel multicast-route event monitor. Both
//! only nudge the watcher; neither is a source of truth.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::pipeline::Shared;
use amt_gateway::wire::pim::{HelloRepr, hello_packet};

use crate::southbound::pim::{TunPacket, parse_tun_packet};
use crate::southbound::tun::IngestTun;

struct FdRef(Arc<OwnedFd>);
impl AsRawFd for FdRef {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

fn read_fd(fd: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends our Hellos on the TUN every `interval` from each of `neighbors`
/// (the IPv4 neighbour address for pimd, a link-local IPv6 one for pim6d),
/// and at once when pimd or pim6d appears or restarts, so its RPF check
/// finds us without waiting; reads what they send out of the TUN, and
/// triggers a join poll on Join/Prune.
pub async fn run_pim(
    shared: Shared,
    tun: Arc<IngestTun>,
    neighbors: Vec<IpAddr>,
    interval: Duration,
    trigger: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let generation_id: u32 = rand::random();
    let holdtime = u16::try_from(interval.as_secs().saturating_mul(7) / 2).unwrap_or(u16::MAX);
    // Hellos from every neighbour address of `family` (None: all).
    let send_hellos = |holdtime: u16, family: Option<bool>| {
        let hello = HelloRepr {
            holdtime,
            dr_priority: 1,
            generation_id,
        };
        for from in neighbors
            .iter()
            .filter(|a| family.is_none_or(|v4| a.is_ipv4() == v4))
        {
            let sent = hello_packet(*from, &hello)
                .map_err(std::io::Error::other)
                .and_then(|pkt| tun.write_packet(&pkt));
            match sent {
                Ok(()) => {
                    shared.counters.hellos_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => warn!(%from, "cannot send PIM Hello on {}: {e}", tun.name()),
            }
        }
    };
    // SAFETY: the Arc keeps the TUN fd open for the AsyncFd's whole life.
    let afd = match unsafe { AsyncFd::register_with_interest(FdRef(tun.fd()), Interest::READABLE) }
        .map_err(std::io::Error::from)
    {
        Ok(a) => a,
        Err(e) => {
            warn!("cannot watch the TUN for pimd's packets: {e}; Hellos still sent");
            loop {
                send_hellos(holdtime, None);
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => { send_hellos(0, None); return; }
                }
            }
        }
    };
    send_hellos(holdtime, None);
    let mut next_hello = tokio::time::Instant::now() + interval;
    // Generation ids of pimd (IPv4) and pim6d (IPv6) as last seen.
    let mut daemon_genid: [Option<u32>; 2] = [None, None];
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_hello) => {
                send_hellos(holdtime, None);
                next_hello = tokio::time::Instant::now() + interval;
            }
            r = afd.readable() => {
                let Ok(mut guard) = r else { continue };
                // Drain what is queued; the fd is non-blocking.
                loop {
                    match read_fd(guard.get_inner(), &mut buf) {
                        Ok(n) => match parse_tun_packet(&buf[..n]) {
                            TunPacket::Hello { from, hello } => {
                                let daemon = if from.is_ipv4() { "pimd" } else { "pim6d" };
                                let seen = &mut daemon_genid[usize::from(from.is_ipv6())];
                                if hello.holdtime == Some(0) {
                                    info!(%from, "{daemon} said goodbye on the TUN");
                                    *seen = None;
                                } else if *seen != hello.generation_id {
                                    // New or restarted daemon: answer at once
                                    // (RFC 7761 triggered Hello) so it has a
                                    // neighbour for RPF right away.
                                    info!(%from, "{daemon} is up on the TUN (generation {:?}); sending Hello", hello.generation_id);
                                    *seen = hello.generation_id;
                                    send_hellos(holdtime, Some(from.is_ipv4()));
                                    trigger.notify_one();
                                }
                            }
                            TunPacket::JoinPrune { from, join_prune } => {
                                shared.counters.joinprunes_seen.fetch_add(1, Ordering::Relaxed);
                                debug!(%from, joins = ?join_prune.joins, prunes = ?join_prune.prunes, "PIM Join/Prune");
                                trigger.notify_one();
                            }
                            TunPacket::Malformed(why) => {
                                shared.counters.pim_malformed.fetch_add(1, Ordering::Relaxed);
                                debug!("malformed PIM from the TUN: {why}");
                            }
                            TunPacket::Other => {
                                shared.counters.tun_read_other.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => {
                            warn!("reading the TUN failed: {e}");
                            guard.clear_ready();
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                }
            }
            _ = stop.changed() => {
                // Goodbye: the daemons drop us as neighbour at once.
                send_hellos(0, None);
                return;
            }
        }
    }
}

/// Reads kernel MFC change notifications and triggers a join poll.
pub async fn run_mroute_monitor(fd: OwnedFd, shared: Shared, trigger: Arc<Notify>) {
    // SAFETY: F_SETFL O_NONBLOCK on a socket we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    // SAFETY: the AsyncFd owns the OwnedFd, so it stays open while registered.
    let afd = match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(std::io::Error::from)
    {
        Ok(a) => a,
        Err(e) => {
            warn!("multicast-route monitor unavailable: {e}; polling only");
            return;
        }
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        let mut any = false;
        loop {
            match read_fd(guard.get_inner(), &mut buf) {
                Ok(_) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    // ENOBUFS: events were lost; a poll catches up anyway.
                    debug!("mroute monitor: {e}");
                    any = true;
                    guard.clear_ready();
                    break;
                }
            }
        }
        if any {
            shared
                .counters
                .mroute_events
                .fetch_add(1, Ordering::Relaxed);
            trigger.notify_one();
        }
    }
}

/// How often [`run_memory_trim`] looks at the number of open tunnels.
const TRIM_CHECK: Duration = Duration::from_secs(2);

/// Gives the heap memory closed tunnels and their flows freed back to the
/// kernel. glibc keeps freed memory in its arenas: the scale benchmark's
/// daemon held 70 MB after emptying 10,000 flows over 1,000 tunnels (15 MB
/// at its start). Every [`TRIM_CHECK`], when fewer tunnels are open than at
/// the last look, `malloc_trim` returns the free pages (a few ms at most;
/// nothing when there is nothing to return).
pub async fn run_memory_trim(shared: Shared, mut stop: watch::Receiver<bool>) {
    let open_tunnels = || {
        shared
            .tunnels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    };
    let mut last = open_tunnels();
    let mut tick = tokio::time::interval(TRIM_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = open_tunnels();
        if now < last {
            crate::memory::trim_heap();
            debug!(
                tunnels_before = last,
                tunnels = now,
                "heap trimmed after tunnels closed"
            );
        }
        last = now;
    }
}
