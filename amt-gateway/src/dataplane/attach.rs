//! How the kernel data plane hooks its programs into an interface's
//! ingress, and how it cleans up after itself.
//!
//! * **TCX** (Linux >= 6.6): a BPF link per program and interface. The link
//!   is a file descriptor of this process: the kernel removes it when the
//!   process exits, however it exits.
//! * **tc legacy** (any kernel with `cls_bpf` and `clsact`, e.g. Debian
//!   12's 6.1): a `bpf` filter in direct-action mode on the ingress hook of
//!   a `clsact` qdisc. Filters and qdiscs are interface state: they outlive
//!   the process. So every filter of ours has the fixed priority
//!   [`TC_PRIORITY`] and a name that says which program it runs and which
//!   process attached it (`amt_decap:pid=1234,start=5678`: pid and start
//!   time, so a reused pid is no match); closing the data plane removes its
//!   filters, and [`remove_stale_filters`] (called when a data plane opens)
//!   removes filters whose process is gone (a `kill -9`, a crash). The
//!   `clsact` qdisc is removed when it is ours and empty: ours means a
//!   gateway added it, i.e. we added it, or it held nothing but gateway
//!   filters when we came (another instance's, live or stale). A `clsact`
//!   or `ingress` qdisc someone else added stays.
//!
//! [`AttachPreference::Auto`] (the default) uses TCX when the kernel has it
//! (probed with a side-effect-free `BPF_PROG_QUERY` for TCX ingress on
//! `lo`; an attachment that still fails with an "unsupported" error falls
//! back too) and tc legacy otherwise. `AMT_DATAPLANE_ATTACH=tcx|tc|auto`
//! overrides it (for tests of the legacy path on new kernels).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::str::FromStr;
use std::sync::OnceLock;

use aya::programs::SchedClassifier;
use tracing::{info, warn};

use super::kernel::KernelError;
use super::netlink::{FilterInfo, Netlink, TC_PARENT_EGRESS, TC_PARENT_INGRESS};

/// Priority (`pref` in `tc filter show`) of every legacy filter of ours.
/// High numbers run late: filters others put there (automatic priorities
/// are 49152 and below) see the packets first, as TCX links attached
/// "last" do.
pub const TC_PRIORITY: u16 = 0xFF00;

/// The environment variable [`AttachPreference::from_env`] reads.
pub const ATTACH_ENV: &str = "AMT_DATAPLANE_ATTACH";

/// The programs whose filters are ours.
const PROGRAMS: [&str; 2] = ["amt_decap", "amt_to_tun"];

/// How programs are attached to an interface's ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// TCX links (Linux >= 6.6), gone with the process.
    Tcx,
    /// `bpf` filters (direct action) on a `clsact` qdisc; removed by
    /// closing the data plane, or by the next start after a crash.
    TcLegacy,
}

impl AttachMode {
    /// `tcx` or `tc` (JSON, the values of `AMT_DATAPLANE_ATTACH`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::TcLegacy => "tc",
        }
    }

    /// `TCX` or `tc legacy` (for people).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Tcx => "TCX",
            Self::TcLegacy => "tc legacy",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Which attach mode the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttachPreference {
    /// TCX when the kernel has it, tc legacy otherwise.
    #[default]
    Auto,
    /// TCX or fail.
    Tcx,
    /// tc legacy even where TCX exists.
    Tc,
}

impl AttachPreference {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Tc => "tc",
        }
    }

    /// [`ATTACH_ENV`] (`auto` when unset or empty).
    pub fn from_env() -> Result<Self, ParseAttachError> {
        match std::env::var(ATTACH_ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Self::Auto),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(ParseAttachError(v.to_string_lossy().into_owned()))
            }
        }
    }
}

impl fmt::Display for AttachPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown attach mode {0:?} (expected auto, tcx or tc)")]
pub struct ParseAttachError(String);

impl FromStr for AttachPreference {
    type Err = ParseAttachError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "tcx" => Ok(Self::Tcx),
            "tc" => Ok(Self::Tc),
            other => Err(ParseAttachError(other.to_string())),
        }
    }
}

/// How the data plane attaches, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttachInfo {
    pub mode: AttachMode,
    pub requested: AttachPreference,
    /// `uname -r`.
    pub kernel_release: String,
    /// Why `mode`: "requested", "the kernel has TCX", "TCX not available:
    /// <probe error>", ...
    pub reason: String,
}

impl fmt::Display for AttachInfo {
    /// `tc legacy, kernel 6.1.0-28-amd64`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, kernel {}", self.mode, self.kernel_release)
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Decides the attach mode for `requested` (probing the kernel for `Auto`).
pub(crate) fn decide(requested: AttachPreference) -> AttachInfo {
    let (mode, reason) = match requested {
        AttachPreference::Tcx => (AttachMode::Tcx, format!("{} requested", requested)),
        AttachPreference::Tc => (AttachMode::TcLegacy, format!("{} requested", requested)),
        AttachPreference::Auto => match probe_tcx() {
            Ok(()) => (AttachMode::Tcx, "the kernel has TCX".to_string()),
            // Both ways need CAP_NET_ADMIN: tc legacy then fails with the
            // permission error, which is what gets reported.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => (
                AttachMode::TcLegacy,
                format!("could not probe for TCX: {e}"),
            ),
            Err(e) => (
                AttachMode::TcLegacy,
                format!("TCX not available (needs Linux 6.6): {e}"),
            ),
        },
    };
    AttachInfo {
        mode,
        requested,
        kernel_release: kernel_release(),
        reason,
    }
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;

/// `union bpf_attr` as BPF_PROG_QUERY reads it (Linux 6.6 layout; older
/// kernels accept it as long as the fields they do not know are zero).
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Asks the kernel how many programs are on `lo`'s TCX ingress: kernels
/// without TCX refuse the attach type (EINVAL). Changes nothing.
fn probe_tcx() -> io::Result<()> {
    let lo = Netlink::open()?.link_by_name("lo")?;
    let mut attr = ProgQueryAttr {
        target_ifindex: lo.ifindex,
        attach_type: BPF_TCX_INGRESS,
        ..Default::default()
    };
    // SAFETY: bpf(2) with a zero-initialised attribute struct we own and
    // its size; prog_ids is NULL, so the kernel writes only count/revision
    // into the struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgQueryAttr,
            std::mem::size_of::<ProgQueryAttr>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("BPF_PROG_QUERY for TCX ingress: {e}"),
        ));
    }
    Ok(())
}

/// An error of a TCX attachment that means "this kernel has no TCX".
pub(crate) fn tcx_unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // kernel-internal, leaks to user space
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(ENOTSUPP) | Some(libc::E2BIG)
    )
}

// ---- filter names and owners ---------------------------------------------------

/// The process that attached a filter: pid and start time (clock ticks
/// after boot, field 22 of /proc/PID/stat), so that a reused pid does not
/// pass for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pid: u32,
    start: u64,
}

impl Owner {
    /// This process.
    pub(crate) fn current() -> Owner {
        static CURRENT: OnceLock<Owner> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                pid,
                start: start_time(pid).unwrap_or(0),
            }
        })
    }

    /// The owner still runs (an unreadable /proc counts as running: never
    /// remove what might be in use).
    fn is_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => parse_start_time(&stat) == Some(self.start),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(_) => true,
        }
    }
}

fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of /proc/PID/stat (the command name, field 2, may contain
/// spaces and parentheses: count from the last ')').
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The filter name of `program` attached by `owner`.
pub(crate) fn filter_name(program: &str, owner: Owner) -> String {
    format!("{program}:pid={},start={}", owner.pid, owner.start)
}

/// A filter of ours: its program and (when the name carries it) owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OurFilter {
    pub(crate) program: &'static str,
    pub(crate) owner: Option<Owner>,
}

/// Recognises a gateway filter: `bpf`, priority [`TC_PRIORITY`], named
/// after one of our programs (with or without the owner part).
pub(crate) fn our_filter(f: &FilterInfo) -> Option<OurFilter> {
    if f.kind != "bpf" || f.priority != TC_PRIORITY {
        return None;
    }
    let name = f.bpf_name.as_deref()?;
    let (program, tail) = name.split_once(':').unwrap_or((name, ""));
    let program = *PROGRAMS.iter().find(|p| **p == program)?;
    let owner = (|| {
        let tail = tail.strip_prefix("pid=")?;
        let (pid, start) = tail.split_once(",start=")?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    })();
    Some(OurFilter { program, owner })
}

// ---- legacy attachment ---------------------------------------------------------

/// One legacy filter of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcFilter {
    pub(crate) ifindex: u32,
    pub(crate) handle: u32,
    pub(crate) name: String,
    /// The `clsact` qdisc is a gateway's: remove it when it is empty.
    pub(crate) clsact_ours: bool,
}

/// Attaches `prog` to the ingress of `ifindex` (in the namespace of the
/// calling thread), adding a `clsact` qdisc when there is none. Nothing is
/// left behind on failure.
pub(crate) fn attach_tc(
    prog: &SchedClassifier,
    program: &'static str,
    ifindex: u32,
    interface: &str,
) -> Result<TcFilter, KernelError> {
    let err = |what: &'static str| {
        move |e: io::Error| KernelError::Attach {
            program,
            interface: interface.to_string(),
            error: format!("{what}: {e}"),
        }
    };
    let fd = prog
        .fd()
        .map_err(|e| KernelError::Attach {
            program,
            interface: interface.to_string(),
            error: e.to_string(),
        })?
        .as_fd()
        .as_raw_fd();
    let mut nl = Netlink::open().map_err(err("netlink socket"))?;
    let clsact_ours = match nl.ingress_qdisc(ifindex).map_err(err("listing qdiscs"))? {
        None => match nl.add_clsact(ifindex) {
            Ok(()) => true,
            // Someone added one just now: theirs.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(err("adding the clsact qdisc")(e)),
        },
        Some(q) => {
            q.kind == "clsact"
                && only_gateway_filters(&mut nl, ifindex).map_err(err("listing filters"))?
        }
    };
    let name = filter_name(program, Owner::current());
    match nl.add_bpf_filter(ifindex, TC_PARENT_INGRESS, TC_PRIORITY, fd, &name) {
        Ok(handle) => Ok(TcFilter {
            ifindex,
            handle,
            name,
            clsact_ours,
        }),
        Err(e) => {
            if clsact_ours {
                let _ = release_clsact(&mut nl, ifindex);
            }
            Err(err("adding the bpf filter")(e))
        }
    }
}

/// Removes `filter` (in the namespace of the calling thread), and its
/// `clsact` qdisc when that is ours and now empty. Only the filter of that
/// handle and exactly that name is removed: if the interface went away and
/// its index was reused, nothing of anybody else's is touched.
pub(crate) fn detach_tc(filter: &TcFilter, interface: &str) {
    let result = (|| -> io::Result<()> {
        let mut nl = Netlink::open()?;
        let present = nl
            .filters(filter.ifindex, TC_PARENT_INGRESS)?
            .iter()
            .any(|f| {
                f.priority == TC_PRIORITY
                    && f.handle == filter.handle
                    && f.bpf_name.as_deref() == Some(filter.name.as_str())
            });
        if present {
            match nl.delete_filter(
                filter.ifindex,
                TC_PARENT_INGRESS,
                TC_PRIORITY,
                filter.handle,
            ) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        if filter.clsact_ours {
            release_clsact(&mut nl, filter.ifindex)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        warn!(interface, filter = %filter.name, error = %e, "kernel data plane: could not remove its tc filter (the next start removes it)");
    }
}

/// True if `ifindex`'s clsact holds at least one filter and all of them
/// (ingress and egress) are gateway filters.
fn only_gateway_filters(nl: &mut Netlink, ifindex: u32) -> io::Result<bool> {
    let mut all = nl.filters(ifindex, TC_PARENT_INGRESS)?;
    all.extend(nl.filters(ifindex, TC_PARENT_EGRESS)?);
    Ok(!all.is_empty() && all.iter().all(|f| our_filter(f).is_some()))
}

/// Deletes the `clsact` qdisc of `ifindex` if it holds no filter at all.
fn release_clsact(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    let Some(q) = nl.ingress_qdisc(ifindex)? else {
        return Ok(());
    };
    if q.kind != "clsact"
        || !nl.filters(ifindex, TC_PARENT_INGRESS)?.is_empty()
        || !nl.filters(ifindex, TC_PARENT_EGRESS)?.is_empty()
    {
        return Ok(());
    }
    match nl.delete_clsact(ifindex) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// What [`remove_stale_filters`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StaleCleanup {
    /// (interface, filter name) of every filter removed.
    pub(crate) filters: Vec<(String, String)>,
    /// Interfaces whose `clsact` qdisc was removed with them.
    pub(crate) qdiscs: Vec<String>,
}

/// Removes, in the namespace of the calling thread, every filter of ours
/// whose process is gone, and the `clsact` qdiscs left empty by that. A
/// stale filter still runs its old program with its old maps: whatever the
/// new program passes on (cls_bpf runs the newest filter of a priority
/// first) and the old one matches, e.g. an (S,G) the old process had
/// subscribed on a tunnel with the same relay and local port (a fixed
/// --bind), would be decapsulated and sent to where the old process
/// delivered. So it goes before anything is attached.
pub(crate) fn remove_stale_filters() -> Result<StaleCleanup, KernelError> {
    let err = |interface: String, what: &'static str| {
        move |e: io::Error| KernelError::Attach {
            program: "amt_decap",
            interface,
            error: format!("removing stale filters: {what}: {e}"),
        }
    };
    let mut nl = Netlink::open().map_err(err("(all)".into(), "netlink socket"))?;
    let qdiscs = nl.qdiscs().map_err(err("(all)".into(), "listing qdiscs"))?;
    let mut done = StaleCleanup::default();
    for q in qdiscs.iter().filter(|q| q.is_ingress_side()) {
        let interface = nl
            .link_by_index(q.ifindex)
            .map(|l| l.name)
            .unwrap_or_else(|_| format!("ifindex {}", q.ifindex));
        let filters = nl
            .filters(q.ifindex, TC_PARENT_INGRESS)
            .map_err(err(interface.clone(), "listing filters"))?;
        let mut removed = 0;
        for f in &filters {
            let Some(ours) = our_filter(f) else { continue };
            if ours.owner.is_some_and(|o| o.is_alive()) {
                continue;
            }
            match nl.delete_filter(q.ifindex, TC_PARENT_INGRESS, f.priority, f.handle) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(err(interface.clone(), "deleting a filter")(e)),
            }
            let name = f.bpf_name.clone().unwrap_or_default();
            info!(interface = %interface, filter = %name, program = ours.program, "kernel data plane: removed a stale tc filter (its process is gone)");
            done.filters.push((interface.clone(), name));
            removed += 1;
        }
        if removed > 0 && q.kind == "clsact" {
            let before = nl.ingress_qdisc(q.ifindex).ok().flatten().is_some();
            release_clsact(&mut nl, q.ifindex)
                .map_err(err(interface.clone(), "deleting the empty clsact qdisc"))?;
            if before && nl.ingress_qdisc(q.ifindex).ok().flatten().is_none() {
                info!(interface = %interface, "kernel data plane: removed the clsact qdisc the stale filters were on");
                done.qdiscs.push(interface.clone());
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_parsing() {
        for p in [
            AttachPreference::Auto,
            AttachPreference::Tcx,
            AttachPreference::Tc,
        ] {
            assert_eq!(p.as_str().parse::<AttachPreference>(), Ok(p));
        }
        let e = "netlink".parse::<AttachPreference>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown attach mode \"netlink\" (expected auto, tcx or tc)"
        );
        assert_eq!(AttachMode::TcLegacy.as_str(), "tc");
        assert_eq!(AttachMode::Tcx.as_str(), "tcx");
    }

    #[test]
    fn attach_info_display() {
        let info = AttachInfo {
            mode: AttachMode::TcLegacy,
            requested: AttachPreference::Auto,
            kernel_release: "6.1.0-28-amd64".into(),
            reason: "TCX not available".into(),
        };
        assert_eq!(info.to_string(), "tc legacy, kernel 6.1.0-28-amd64");
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        // Field 22 is 98765; the command name has spaces and a ')'.
        let stat =
            "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
        let me = Owner::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
        let reused = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!reused.is_alive());
    }

    #[test]
    fn our_filters_are_recognised_by_priority_kind_and_name() {
        let owner = Owner { pid: 42, start: 7 };
        let f = |name: &str, prio: u16, kind: &str| FilterInfo {
            priority: prio,
            handle: 1,
            kind: kind.into(),
            bpf_name: Some(name.into()),
            bpf_prog_id: Some(9),
        };
        let name = filter_name("amt_decap", owner);
        assert_eq!(name, "amt_decap:pid=42,start=7");
        assert_eq!(
            our_filter(&f(&name, TC_PRIORITY, "bpf")),
            Some(OurFilter {
                program: "amt_decap",
                owner: Some(owner)
            })
        );
        // Without an owner part: ours, and stale (no owner to be alive).
        assert_eq!(
            our_filter(&f("amt_to_tun", TC_PRIORITY, "bpf")),
            Some(OurFilter {
                program: "amt_to_tun",
                owner: None
            })
        );
        assert_eq!(
            our_filter(&f("amt_to_tun:junk", TC_PRIORITY, "bpf"))
                .unwrap()
                .owner,
            None
        );
        assert_eq!(our_filter(&f(&name, 49152, "bpf")), None);
        assert_eq!(our_filter(&f(&name, TC_PRIORITY, "u32")), None);
        assert_eq!(
            our_filter(&f("amt_decapx:pid=1,start=1", TC_PRIORITY, "bpf")),
            None
        );
        assert_eq!(our_filter(&f("cilium", TC_PRIORITY, "bpf")), None);
    }

    #[test]
    fn unsupported_errors() {
        assert!(tcx_unsupported(&io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(tcx_unsupported(&io::Error::from_raw_os_error(524)));
        assert!(!tcx_unsupported(&io::Error::from_raw_os_error(libc::EPERM)));
    }

    #[test]
    fn kernel_release_is_known() {
        let r = kernel_release();
        assert!(r.chars().next().is_some_and(|c| c.is_ascii_digit()), "{r}");
    }
}
