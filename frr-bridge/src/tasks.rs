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
use crate::southbound::pim::{HelloOptions, TunPacket, hello_v4, parse_tun_packet};
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

/// Sends our Hellos on the TUN every `interval` (and at once when pimd
/// appears or restarts, so its RPF check finds us without waiting), reads
/// what pimd sends out of the TUN, and triggers a join poll on Join/Prune.
pub async fn run_pim(
    shared: Shared,
    tun: Arc<IngestTun>,
    neighbor: IpAddr,
    interval: Duration,
    trigger: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let IpAddr::V4(our_addr) = neighbor else {
        warn!(
            "tun.neighbor {neighbor} is not IPv4: no PIM Hellos are sent (pimd would not see a neighbour)"
        );
        return;
    };
    let generation_id: u32 = rand::random();
    let holdtime = u16::try_from(interval.as_secs().saturating_mul(7) / 2).unwrap_or(u16::MAX);
    let send_hello = |holdtime: u16| {
        let pkt = hello_v4(
            our_addr,
            &HelloOptions {
                holdtime,
                dr_priority: 1,
                generation_id,
            },
        );
        match tun.write_packet(&pkt) {
            Ok(()) => {
                shared.counters.hellos_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => warn!("cannot send PIM Hello on {}: {e}", tun.name()),
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
                send_hello(holdtime);
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => { send_hello(0); return; }
                }
            }
        }
    };
    send_hello(holdtime);
    let mut next_hello = tokio::time::Instant::now() + interval;
    let mut pimd_genid: Option<u32> = None;
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_hello) => {
                send_hello(holdtime);
                next_hello = tokio::time::Instant::now() + interval;
            }
            r = afd.readable() => {
                let Ok(mut guard) = r else { continue };
                // Drain what is queued; the fd is non-blocking.
                loop {
                    match read_fd(guard.get_inner(), &mut buf) {
                        Ok(n) => match parse_tun_packet(&buf[..n]) {
                            TunPacket::Hello { from, generation_id: g, holdtime: h } => {
                                if h == Some(0) {
                                    info!(%from, "pimd said goodbye on the TUN");
                                    pimd_genid = None;
                                } else if pimd_genid != g {
                                    // New or restarted pimd: answer at once
                                    // (RFC 7761 triggered Hello) so it has a
                                    // neighbour for RPF right away.
                                    info!(%from, "pimd is up on the TUN (generation {:?}); sending Hello", g);
                                    pimd_genid = g;
                                    send_hello(holdtime);
                                    next_hello = tokio::time::Instant::now() + interval;
                                    trigger.notify_one();
                                }
                            }
                            TunPacket::JoinPrune(jp) => {
                                shared.counters.joinprunes_seen.fetch_add(1, Ordering::Relaxed);
                                debug!(joins = ?jp.joins, prunes = ?jp.prunes, "PIM Join/Prune from pimd");
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
                // Goodbye: pimd drops us as neighbour at once.
                send_hello(0);
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
