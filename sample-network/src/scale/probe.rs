//! Measuring a running scale lab: a process's CPU time and memory, HTTP in
//! another network namespace, Prometheus text, and the relay's channel
//! events and status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ingest_types::SourceGroup;
use serde_json::Value;

/// Milliseconds since the Unix epoch (the relay's event clock).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Scheduler figures of a process: time on CPU and time runnable but
/// waiting for a CPU (run-queue delay), summed over its threads, from the
/// first two fields of each `/proc/PID/task/TID/schedstat` (the
/// scheduler's own accounting, exact on VMs where tick-sampled
/// `/proc/stat` figures are not). A thread that exits takes its time with
/// it; the daemon's runtime threads live as long as it does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedTimes {
    pub cpu_ns: u64,
    pub wait_ns: u64,
}

impl SchedTimes {
    pub fn since(self, earlier: SchedTimes) -> SchedTimes {
        SchedTimes {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
        }
    }
}

pub fn sched_times(pid: u32) -> io::Result<SchedTimes> {
    let mut total = SchedTimes::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut fields = text
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            total.cpu_ns += fields.next().unwrap_or(0);
            total.wait_ns += fields.next().unwrap_or(0);
        }
    }
    Ok(total)
}

/// Time on CPU of every thread of `pid`, in ns (see [`sched_times`]).
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    Ok(sched_times(pid)?.cpu_ns)
}

/// CPU use of `pid` over `window` (percent of one core), by schedstat.
pub fn cpu_percent_over(pid: u32, window: Duration) -> io::Result<f64> {
    let (c0, t0) = (cpu_ns(pid)?, Instant::now());
    std::thread::sleep(window);
    let (c1, elapsed) = (cpu_ns(pid)?, t0.elapsed());
    Ok(c1.saturating_sub(c0) as f64 / elapsed.as_nanos() as f64 * 100.0)
}

/// The 1-minute load average (how busy the machine was: these labs share
/// it with whatever else runs).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of a process, MiB: now (VmRSS) and its peak (VmHWM).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rss {
    pub now_mib: f64,
    pub peak_mib: f64,
}

pub fn rss(pid: u32) -> io::Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Rss {
        now_mib: kib("VmRSS:") / 1024.0,
        peak_mib: kib("VmHWM:") / 1024.0,
    })
}

/// Sum of the `drops` column of `/proc/PID/net/udp` (the UDP sockets of
/// the network namespace `pid` is in): datagrams the kernel dropped for a
/// socket, mostly for a full receive buffer.
pub fn udp_drops(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/udp"))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum())
}

/// A TCP connection made from inside network namespace `ns` (a
/// `/var/run/netns` name): a thread enters it (setns affects only that
/// thread) and connects; the socket stays in that namespace.
pub fn connect_in_netns(ns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let path = PathBuf::from("/var/run/netns").join(ns);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path)?;
                // SAFETY: setns on an open namespace file; only this thread moves.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&addr, timeout)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("connect thread panicked")))
    })
}

/// `GET path` over HTTP/1.0 (no chunked body) from inside `ns`: the body
/// and the time from connecting to the last byte.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> io::Result<(Vec<u8>, Duration)> {
    let start = Instant::now();
    let mut stream = connect_in_netns(ns, addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let elapsed = start.elapsed();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("HTTP response without a header end"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let ok = head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200");
    if !ok {
        let first = head.lines().next().unwrap_or("").to_owned();
        return Err(io::Error::other(format!("GET {path}: {first}")));
    }
    Ok((response[split + 4..].to_vec(), elapsed))
}

/// The samples of metric `name` in Prometheus text: label text (`{...}`,
/// empty without labels) to value.
pub fn metric_samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if rest.starts_with('{') {
            match rest.find('}') {
                Some(end) => (&rest[..=end], &rest[end + 1..]),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // another metric with this name as prefix
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(labels.to_owned(), v);
        }
    }
    out
}

/// `frr_ingest_flows` by state: `{state="forwarding"}` -> "forwarding".
pub fn flows_by_state(metrics: &str) -> BTreeMap<String, u64> {
    metric_samples(metrics, "frr_ingest_flows")
        .into_iter()
        .filter_map(|(labels, v)| {
            let state = labels
                .strip_prefix("{state=\"")?
                .strip_suffix("\"}")?
                .to_owned();
            Some((state, v as u64))
        })
        .collect()
}

/// Follows the relay's event lines (its log: `channel_added`,
/// `channel_removed`, `channel_expired` JSON lines with `unix_ms`) and
/// keeps which (relay address, channel) pairs a gateway of `gateway_ip`
/// holds, counting those on the relay the plan expects.
pub struct RelayEvents {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    gateway_ip: IpAddr,
    /// Channel -> the relay address that must carry it.
    expected: HashMap<SourceGroup, SocketAddr>,
    held: HashSet<(SocketAddr, SourceGroup)>,
    /// Held pairs that are the expected ones.
    held_expected: usize,
    /// Channels added at a relay the plan does not give them.
    pub wrong_relay_adds: u64,
    /// unix_ms of the event after which every expected pair was held
    /// (the first time since the last [`RelayEvents::reset_marks`]).
    pub all_held_at_ms: Option<u64>,
    /// unix_ms of the event after which nothing was held (since the last
    /// reset, only after something was held).
    pub none_held_at_ms: Option<u64>,
    /// Lines that did not parse as events (other output of the relay).
    pub other_lines: u64,
}

impl RelayEvents {
    pub fn new(
        path: &Path,
        gateway_ip: IpAddr,
        expected: impl IntoIterator<Item = (SourceGroup, SocketAddr)>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            gateway_ip,
            expected: expected.into_iter().collect(),
            held: HashSet::new(),
            held_expected: 0,
            wrong_relay_adds: 0,
            all_held_at_ms: None,
            none_held_at_ms: None,
            other_lines: 0,
        }
    }

    /// Skips what the log holds so far (events of an earlier cycle).
    pub fn skip_to_end(&mut self) -> io::Result<()> {
        self.offset = std::fs::metadata(&self.path)?.len();
        self.partial.clear();
        Ok(())
    }

    pub fn reset_marks(&mut self) {
        self.all_held_at_ms = None;
        self.none_held_at_ms = None;
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn held_expected(&self) -> usize {
        self.held_expected
    }

    /// Reads the lines appended since the last call.
    pub fn poll(&mut self) -> io::Result<()> {
        let mut file = File::open(&self.path)?;
        let len = file.metadata()?.len();
        if len < self.offset {
            // Rotated or truncated: start over.
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_newline) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        for line in complete.split(|b| *b == b'\n') {
            if !line.is_empty() {
                self.line(line);
            }
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            self.other_lines += 1;
            return;
        };
        let kind = v["kind"].as_str().unwrap_or("");
        if !matches!(
            kind,
            "channel_added" | "channel_removed" | "channel_expired"
        ) {
            return;
        }
        let parsed = (|| {
            let relay: SocketAddr = v["relay"].as_str()?.parse().ok()?;
            let source: IpAddr = v["source"].as_str()?.parse().ok()?;
            let group: IpAddr = v["group"].as_str()?.parse().ok()?;
            Some((relay, SourceGroup { source, group }, v["unix_ms"].as_u64()?))
        })();
        let Some((relay, channel, at_ms)) = parsed else {
            self.other_lines += 1;
            return;
        };
        // channel_expired names no gateway: the listener's last one is gone.
        if let Some(gw) = v["gateway"].as_str() {
            let ours = gw
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip() == self.gateway_ip);
            if !ours {
                return;
            }
        }
        let is_expected = self.expected.get(&channel) == Some(&relay);
        if kind == "channel_added" {
            if self.held.insert((relay, channel)) {
                if is_expected {
                    self.held_expected += 1;
                } else {
                    self.wrong_relay_adds += 1;
                }
            }
            if self.all_held_at_ms.is_none() && self.held_expected == self.expected.len() {
                self.all_held_at_ms = Some(at_ms);
            }
        } else if self.held.remove(&(relay, channel)) {
            if is_expected {
                self.held_expected -= 1;
            }
            if self.held.is_empty() && self.none_held_at_ms.is_none() {
                self.none_held_at_ms = Some(at_ms);
            }
        }
    }
}

/// What a relay status object says about one gateway's channels.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    pub unix_ms: u64,
    /// (relay address, channel) -> packets forwarded, for the gateway.
    pub channels: HashMap<(SocketAddr, SourceGroup), u64>,
    /// Subscriptions of every listener together (any gateway).
    pub subscriptions: u64,
    pub listen_rx_drops: u64,
    pub native_rx_drops: u64,
    pub listeners: usize,
    pub native_sockets: usize,
    pub native_packets: u64,
    pub forwarded: u64,
    pub send_errors: u64,
    pub join_errors: u64,
}

/// Reads a relay's `--status-file` (None while it is absent or half
/// written, which atomic replace rules out but a missing file does not).
pub fn read_status(path: &Path, gateway_ip: IpAddr) -> Option<StatusView> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let mut view = StatusView {
        unix_ms: v["unix_ms"].as_u64()?,
        ..StatusView::default()
    };
    for gw in v["gateways"].as_array().into_iter().flatten() {
        let ours = gw["gateway"]
            .as_str()
            .and_then(|g| g.parse::<SocketAddr>().ok())
            .is_some_and(|g| g.ip() == gateway_ip);
        let relay = gw["relay"]
            .as_str()
            .and_then(|r| r.parse::<SocketAddr>().ok());
        let (true, Some(relay)) = (ours, relay) else {
            continue;
        };
        for ch in gw["channels"].as_array().into_iter().flatten() {
            let source = ch["source"].as_str().and_then(|s| s.parse().ok());
            let group = ch["group"].as_str().and_then(|s| s.parse().ok());
            if let (Some(source), Some(group)) = (source, group) {
                view.channels.insert(
                    (relay, SourceGroup { source, group }),
                    ch["packets"].as_u64().unwrap_or(0),
                );
            }
        }
    }
    let listen = v["listen"].as_array();
    view.listeners = listen.map_or(0, Vec::len);
    view.subscriptions = listen
        .into_iter()
        .flatten()
        .map(|l| l["subscriptions"].as_u64().unwrap_or(0))
        .sum();
    view.native_sockets = v["native_sockets"].as_array().map_or(0, Vec::len);
    let stats = &v["stats"];
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    view.listen_rx_drops = n("listen_rx_drops");
    view.native_rx_drops = n("native_rx_drops");
    view.native_packets = n("native_packets");
    view.forwarded = n("forwarded");
    view.send_errors = n("send_errors");
    view.join_errors = n("join_errors");
    Some(view)
}

/// Waits (up to `timeout`) for a status written at or after `after_ms`.
pub fn read_status_after(
    path: &Path,
    gateway_ip: IpAddr,
    after_ms: u64,
    timeout: Duration,
) -> Option<StatusView> {
    let start = Instant::now();
    loop {
        if let Some(s) = read_status(path, gateway_ip)
            && s.unix_ms >= after_ms
        {
            return Some(s);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Log lines of the daemon's `--log-json` output by level, and lines that
/// are not JSON (the lab's start marker, a panic).
pub fn log_levels(path: &Path) -> io::Result<(BTreeMap<String, u64>, u64)> {
    let text = std::fs::read_to_string(path)?;
    let mut levels = BTreeMap::new();
    let mut other = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["level"].as_str().map(str::to_owned))
        {
            Some(level) => *levels.entry(level).or_insert(0) += 1,
            None => other += 1,
        }
    }
    Ok((levels, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_by_label() {
        let text = "# HELP frr_ingest_flows x\n# TYPE frr_ingest_flows gauge\n\
                    frr_ingest_flows{state=\"forwarding\"} 9998\n\
                    frr_ingest_flows{state=\"subscribed\"} 2\n\
                    frr_ingest_flows_admitted 10000\n";
        let by_state = flows_by_state(text);
        assert_eq!(by_state["forwarding"], 9998);
        assert_eq!(by_state["subscribed"], 2);
        assert_eq!(by_state.len(), 2);
        assert_eq!(
            metric_samples(text, "frr_ingest_flows_admitted")[""],
            10000.0
        );
    }

    #[test]
    fn relay_events_track_what_the_gateway_holds() {
        let dir = std::env::temp_dir().join(format!("scale-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("relay.log");
        let sg = |g: &str| SourceGroup {
            source: "198.18.0.1".parse().unwrap(),
            group: g.parse().unwrap(),
        };
        let relay: SocketAddr = "198.19.0.1:2268".parse().unwrap();
        let mut ev = RelayEvents::new(
            &log,
            "192.0.2.1".parse().unwrap(),
            [(sg("232.18.0.0"), relay), (sg("232.18.0.1"), relay)],
        );
        let line = |kind: &str, g: &str, ms: u64| {
            format!(
                "{{\"kind\":\"{kind}\",\"unix_ms\":{ms},\"relay\":\"198.19.0.1:2268\",\
                 \"source\":\"198.18.0.1\",\"group\":\"{g}\",\"gateway\":\"192.0.2.1:40000\"}}\n"
            )
        };
        let mut text = String::from("{\"kind\":\"started\"}\n");
        text += &line("channel_added", "232.18.0.0", 100);
        std::fs::write(&log, &text).unwrap();
        ev.poll().unwrap();
        assert_eq!(ev.held_expected(), 1);
        assert_eq!(ev.all_held_at_ms, None);
        // A half-written line waits for its end.
        let second = line("channel_added", "232.18.0.1", 150);
        text += &second[..20];
        std::fs::write(&log, &text).unwrap();
        ev.poll().unwrap();
        assert_eq!(ev.held_expected(), 1);
        text += &second[20..];
        text += &line("channel_removed", "232.18.0.0", 200);
        text += "{\"kind\":\"channel_expired\",\"unix_ms\":300,\"relay\":\"198.19.0.1:2268\",\
                 \"source\":\"198.18.0.1\",\"group\":\"232.18.0.1\"}\n";
        std::fs::write(&log, &text).unwrap();
        ev.poll().unwrap();
        assert_eq!(ev.all_held_at_ms, Some(150));
        assert_eq!(ev.none_held_at_ms, Some(300));
        assert_eq!(ev.held(), 0);
        assert_eq!(ev.wrong_relay_adds, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
