//! The few rtnetlink requests the kernel data plane needs: route lookup
//! (which interface the relay's packets use), link lookup, veth pair
//! creation across namespaces, link up, link delete, and the traffic
//! control part of the legacy attachment (kernels without TCX, < 6.6): the
//! `clsact` qdisc and `bpf` filters in direct-action mode on its ingress.
//!
//! A netlink socket belongs to the network namespace of the thread that
//! opened it, so a socket opened by a thread that `setns`ed into FRR's
//! namespace manages links there.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_ECHO: u16 = 0x8;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const TCMSG_LEN: usize = 20;
/// Parent (and handle major) of the ingress-side qdisc: `clsact` or
/// `ingress` (`TC_H_CLSACT` = `TC_H_INGRESS`).
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// Handle of the `clsact`/`ingress` qdisc (`ffff:`).
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// Parent of filters on the ingress hook of `clsact` (`ffff:fff2`; also
/// accepted by the old `ingress` qdisc).
pub const TC_PARENT_INGRESS: u32 = 0xFFFF_FFF2;
/// Parent of filters on the egress hook of `clsact` (`ffff:fff3`).
pub const TC_PARENT_EGRESS: u32 = 0xFFFF_FFF3;
/// ETH_P_ALL: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const IFINFOMSG_LEN: usize = 16;
const RTMSG_LEN: usize = 12;

/// What the data plane needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// ARPHRD_* (1 Ethernet, 772 loopback, 65534 none/TUN, ...).
    pub link_type: u16,
}

/// A qdisc as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdiscInfo {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    /// `clsact`, `ingress`, `noqueue`, `fq_codel`, ...
    pub kind: String,
}

impl QdiscInfo {
    /// The qdisc of the ingress side (`clsact` or `ingress`).
    pub fn is_ingress_side(&self) -> bool {
        self.parent == TC_H_CLSACT
    }
}

/// A tc filter as the kernel lists it (one entry per handle; the entries
/// without a handle that head each priority are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterInfo {
    pub priority: u16,
    pub handle: u32,
    /// `bpf`, `u32`, `flower`, `matchall`, ...
    pub kind: String,
    /// `bpf` filters: the name given when attaching (`TCA_BPF_NAME`).
    pub bpf_name: Option<String>,
    /// `bpf` filters: the id of the attached program.
    pub bpf_prog_id: Option<u32>,
}

/// Builds one netlink request: header, fixed body, attributes (nested
/// attributes by `begin_nested` / `end_nested`).
#[derive(Debug)]
pub(crate) struct Request {
    buf: Vec<u8>,
    flags: u16,
}

impl Request {
    pub(crate) fn new(msg_type: u16, flags: u16, body: &[u8]) -> Self {
        let mut buf = vec![0u8; NLMSG_HDR_LEN];
        buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(body);
        pad4(&mut buf);
        Self { buf, flags }
    }

    pub(crate) fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        pad4(&mut self.buf);
        self
    }

    /// Opens a nested attribute; returns its offset for `end_nested`.
    pub(crate) fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Raw bytes inside a nested attribute (e.g. the peer's ifinfomsg).
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        pad4(&mut self.buf);
        self
    }

    pub(crate) fn end_nested(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The finished message with length and sequence number filled in.
    pub(crate) fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn ifinfomsg(ifindex: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0u8; IFINFOMSG_LEN];
    // family (u8) = AF_UNSPEC, pad, type (u16) = 0
    m[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Attributes of a message body (after its fixed header): (type, value).
pub(crate) fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & !NLA_F_NESTED;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let value = &bytes[4..len];
        let next = len.div_ceil(4) * 4;
        bytes = bytes.get(next..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// One rtnetlink socket (in the namespace of the thread that opened it).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is wrapped at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero sockaddr_nl is "kernel assigns the port id".
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bind with a valid sockaddr_nl and its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 1 })
    }

    /// Sends `req` and collects the answer: the bodies (after the netlink
    /// header) of the messages of type `want`; an error answer becomes the
    /// io::Error it carries.
    fn call(&mut self, req: &mut Request, want: Option<u16>) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = req.finish(seq);
        // SAFETY: sending a valid buffer of msg.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: receiving into a buffer we own, of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink answer",
                    ));
                }
                let body = &rest[NLMSG_HDR_LEN..len];
                rest = rest.get(len.div_ceil(4) * 4..).unwrap_or(&[]);
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(out);
                    }
                    NLMSG_DONE => return Ok(out),
                    k if Some(k) == want => {
                        out.push(body.to_vec());
                        // A single answer (not a dump) ends here unless an
                        // ACK was requested too.
                        if req.flags & (NLM_F_ACK | NLM_F_DUMP) == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Output interface of the route the kernel would use towards `dest`.
    pub fn route_oif(&mut self, dest: IpAddr) -> io::Result<u32> {
        let (family, bits, addr) = match dest {
            IpAddr::V4(a) => (libc::AF_INET as u8, 32u8, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, 128u8, a.octets().to_vec()),
        };
        let mut rtm = [0u8; RTMSG_LEN];
        rtm[0] = family;
        rtm[1] = bits; // rtm_dst_len
        let mut req = Request::new(RTM_GETROUTE, NLM_F_REQUEST, &rtm);
        req.attr(RTA_DST, &addr);
        let answers = self.call(&mut req, Some(RTM_NEWROUTE))?;
        answers
            .iter()
            .filter_map(|body| body.get(RTMSG_LEN..))
            .flat_map(attributes)
            .find(|(kind, v)| *kind == RTA_OIF && v.len() == 4)
            .map(|(_, v)| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the route to {dest} has no output interface"),
                )
            })
    }

    fn get_link(&mut self, mut req: Request) -> io::Result<LinkInfo> {
        let answers = self.call(&mut req, Some(RTM_NEWLINK))?;
        let body = answers
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such link"))?;
        parse_link(body)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed link answer"))
    }

    pub fn link_by_index(&mut self, ifindex: u32) -> io::Result<LinkInfo> {
        self.get_link(Request::new(
            RTM_GETLINK,
            NLM_F_REQUEST,
            &ifinfomsg(ifindex, 0, 0),
        ))
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<LinkInfo> {
        let mut req = Request::new(RTM_GETLINK, NLM_F_REQUEST, &ifinfomsg(0, 0, 0));
        req.attr(IFLA_IFNAME, &nul_terminated(name));
        self.get_link(req)
    }

    /// Creates a veth pair `name` (here) / `peer` (in the namespace of
    /// `peer_netns`, or here when `None`). Both ends stay down.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<RawFd>,
    ) -> io::Result<()> {
        let mut req = Request::new(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        req.attr(IFLA_IFNAME, &nul_terminated(name));
        let linkinfo = req.begin_nested(IFLA_LINKINFO);
        req.attr(IFLA_INFO_KIND, b"veth");
        let data = req.begin_nested(IFLA_INFO_DATA);
        let peer_at = req.begin_nested(VETH_INFO_PEER);
        req.raw(&ifinfomsg(0, 0, 0));
        req.attr(IFLA_IFNAME, &nul_terminated(peer));
        if let Some(fd) = peer_netns {
            req.attr(IFLA_NET_NS_FD, &(fd as u32).to_ne_bytes());
        }
        req.end_nested(peer_at);
        req.end_nested(data);
        req.end_nested(linkinfo);
        self.call(&mut req, None).map(|_| ())
    }

    pub fn set_up(&mut self, ifindex: u32) -> io::Result<()> {
        let up = libc::IFF_UP as u32;
        let mut req = Request::new(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK,
            &ifinfomsg(ifindex, up, up),
        );
        self.call(&mut req, None).map(|_| ())
    }

    pub fn delete_link(&mut self, ifindex: u32) -> io::Result<()> {
        let mut req = Request::new(
            RTM_DELLINK,
            NLM_F_REQUEST | NLM_F_ACK,
            &ifinfomsg(ifindex, 0, 0),
        );
        self.call(&mut req, None).map(|_| ())
    }

    /// Every qdisc of every interface of this namespace (the kernel does
    /// not filter a qdisc dump by interface).
    pub fn qdiscs(&mut self) -> io::Result<Vec<QdiscInfo>> {
        let mut req = Request::new(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, &tcmsg(0, 0, 0, 0));
        let answers = self.call(&mut req, Some(RTM_NEWQDISC))?;
        Ok(answers.iter().filter_map(|b| parse_qdisc(b)).collect())
    }

    /// The `clsact` or `ingress` qdisc of `ifindex`, if it has one.
    pub fn ingress_qdisc(&mut self, ifindex: u32) -> io::Result<Option<QdiscInfo>> {
        Ok(self
            .qdiscs()?
            .into_iter()
            .find(|q| q.ifindex == ifindex && q.is_ingress_side()))
    }

    /// Adds a `clsact` qdisc to `ifindex`; fails with EEXIST when the
    /// interface already has a `clsact` or `ingress` qdisc.
    pub fn add_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let mut req = Request::new(
            RTM_NEWQDISC,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0),
        );
        req.attr(TCA_KIND, b"clsact\0");
        self.call(&mut req, None).map(|_| ())
    }

    /// Deletes the `clsact`/`ingress` qdisc of `ifindex` (and with it every
    /// filter it holds).
    pub fn delete_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let mut req = Request::new(
            RTM_DELQDISC,
            NLM_F_REQUEST | NLM_F_ACK,
            &tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0),
        );
        self.call(&mut req, None).map(|_| ())
    }

    /// The filters of `ifindex` under `parent` ([`TC_PARENT_INGRESS`] or
    /// [`TC_PARENT_EGRESS`]); none when there is no such qdisc.
    pub fn filters(&mut self, ifindex: u32, parent: u32) -> io::Result<Vec<FilterInfo>> {
        let mut req = Request::new(
            RTM_GETTFILTER,
            NLM_F_REQUEST | NLM_F_DUMP,
            &tcmsg(ifindex, 0, parent, 0),
        );
        let answers = self.call(&mut req, Some(RTM_NEWTFILTER))?;
        Ok(answers
            .iter()
            .filter_map(|b| parse_filter(b))
            .filter(|f| f.handle != 0)
            .collect())
    }

    /// Attaches the BPF program `prog_fd` as a direct-action `bpf` filter
    /// for every protocol under `parent` of `ifindex`, at `priority`, with a
    /// handle the kernel chooses (returned). `name` is what `tc filter show`
    /// and [`Netlink::filters`] report for it.
    pub fn add_bpf_filter(
        &mut self,
        ifindex: u32,
        parent: u32,
        priority: u16,
        prog_fd: RawFd,
        name: &str,
    ) -> io::Result<u32> {
        let mut req = Request::new(
            RTM_NEWTFILTER,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | NLM_F_CREATE | NLM_F_EXCL,
            &tcmsg(ifindex, 0, parent, filter_info(priority)),
        );
        req.attr(TCA_KIND, b"bpf\0");
        let options = req.begin_nested(TCA_OPTIONS);
        req.attr(TCA_BPF_FD, &(prog_fd as u32).to_ne_bytes());
        req.attr(TCA_BPF_NAME, &nul_terminated(name));
        req.attr(TCA_BPF_FLAGS, &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes());
        req.end_nested(options);
        let answers = self.call(&mut req, Some(RTM_NEWTFILTER))?;
        answers
            .iter()
            .filter_map(|b| parse_filter(b))
            .map(|f| f.handle)
            .find(|&h| h != 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the kernel did not echo the new filter's handle",
                )
            })
    }

    /// Deletes the filter `priority`/`handle` under `parent` of `ifindex`.
    pub fn delete_filter(
        &mut self,
        ifindex: u32,
        parent: u32,
        priority: u16,
        handle: u32,
    ) -> io::Result<()> {
        let mut req = Request::new(
            RTM_DELTFILTER,
            NLM_F_REQUEST | NLM_F_ACK,
            &tcmsg(ifindex, handle, parent, filter_info(priority)),
        );
        req.attr(TCA_KIND, b"bpf\0");
        self.call(&mut req, None).map(|_| ())
    }
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; TCMSG_LEN] {
    let mut m = [0u8; TCMSG_LEN];
    // family (u8) = AF_UNSPEC, 3 bytes padding
    m[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&handle.to_ne_bytes());
    m[12..16].copy_from_slice(&parent.to_ne_bytes());
    m[16..20].copy_from_slice(&info.to_ne_bytes());
    m
}

/// `tcm_info` of a filter: priority in the upper half, the protocol (in
/// network byte order) in the lower.
fn filter_info(priority: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be())
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn u32_attr(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// An RTM_NEWQDISC body: tcmsg, then attributes.
pub(crate) fn parse_qdisc(body: &[u8]) -> Option<QdiscInfo> {
    let head = body.get(..TCMSG_LEN)?;
    let word = |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let kind = attributes(&body[TCMSG_LEN..])
        .find(|(k, _)| *k == TCA_KIND)
        .map(|(_, v)| c_string(v))?;
    Some(QdiscInfo {
        ifindex: word(4),
        handle: word(8),
        parent: word(12),
        kind,
    })
}

/// An RTM_NEWTFILTER body: tcmsg, then attributes (`bpf` options nested
/// in TCA_OPTIONS).
pub(crate) fn parse_filter(body: &[u8]) -> Option<FilterInfo> {
    let head = body.get(..TCMSG_LEN)?;
    let word = |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let mut filter = FilterInfo {
        priority: (word(16) >> 16) as u16,
        handle: word(8),
        kind: String::new(),
        bpf_name: None,
        bpf_prog_id: None,
    };
    let mut options: &[u8] = &[];
    for (kind, value) in attributes(&body[TCMSG_LEN..]) {
        match kind {
            TCA_KIND => filter.kind = c_string(value),
            TCA_OPTIONS => options = value,
            _ => {}
        }
    }
    if filter.kind == "bpf" {
        for (kind, value) in attributes(options) {
            match kind {
                TCA_BPF_NAME => filter.bpf_name = Some(c_string(value)),
                TCA_BPF_ID => filter.bpf_prog_id = u32_attr(value),
                _ => {}
            }
        }
    }
    Some(filter)
}

fn nul_terminated(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// An RTM_NEWLINK body: ifinfomsg, then attributes.
pub(crate) fn parse_link(body: &[u8]) -> Option<LinkInfo> {
    let head = body.get(..IFINFOMSG_LEN)?;
    let link_type = u16::from_ne_bytes([head[2], head[3]]);
    let ifindex = i32::from_ne_bytes([head[4], head[5], head[6], head[7]]) as u32;
    let name = attributes(&body[IFINFOMSG_LEN..])
        .find(|(k, _)| *k == IFLA_IFNAME)
        .map(|(_, v)| {
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })?;
    Some(LinkInfo {
        ifindex,
        name,
        link_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_have_their_lengths_patched() {
        let mut req = Request::new(RTM_NEWLINK, NLM_F_REQUEST, &ifinfomsg(0, 0, 0));
        req.attr(IFLA_IFNAME, b"ab\0");
        let at = req.begin_nested(IFLA_LINKINFO);
        req.attr(IFLA_INFO_KIND, b"veth");
        req.end_nested(at);
        let msg = req.finish(7).to_vec();
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 7);
        let attrs: Vec<(u16, Vec<u8>)> = attributes(&msg[NLMSG_HDR_LEN + IFINFOMSG_LEN..])
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (IFLA_IFNAME, b"ab\0".to_vec()));
        assert_eq!(attrs[1].0, IFLA_LINKINFO);
        let inner: Vec<(u16, Vec<u8>)> = attributes(&attrs[1].1)
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(inner, vec![(IFLA_INFO_KIND, b"veth".to_vec())]);
    }

    #[test]
    fn attribute_walk_stops_at_garbage() {
        assert_eq!(attributes(&[5, 0, 1]).count(), 0);
        // A length beyond the buffer ends the walk instead of panicking.
        assert_eq!(attributes(&[200, 0, 1, 0, 9, 9]).count(), 0);
        assert_eq!(attributes(&[1, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn link_answer_parsing() {
        let mut body = ifinfomsg(7, 0, 0).to_vec();
        body[2..4].copy_from_slice(&772u16.to_ne_bytes());
        body.extend_from_slice(&7u16.to_ne_bytes());
        body.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        body.extend_from_slice(b"lo\0\0");
        assert_eq!(
            parse_link(&body),
            Some(LinkInfo {
                ifindex: 7,
                name: "lo".into(),
                link_type: 772
            })
        );
        assert_eq!(parse_link(&body[..10]), None);
    }

    #[test]
    fn filter_messages() {
        // The protocol half of tcm_info is ETH_P_ALL in network byte order.
        let info = filter_info(0xFF00);
        assert_eq!(info >> 16, 0xFF00);
        assert_eq!((info as u16).to_ne_bytes(), [0x00, 0x03]);
        let mut req = Request::new(
            RTM_NEWTFILTER,
            NLM_F_REQUEST,
            &tcmsg(7, 0x2a, TC_PARENT_INGRESS, info),
        );
        req.attr(TCA_KIND, b"bpf\0");
        let at = req.begin_nested(TCA_OPTIONS);
        req.attr(TCA_BPF_NAME, &nul_terminated("amt_decap:pid=1,start=2"));
        req.attr(TCA_BPF_ID, &99u32.to_ne_bytes());
        req.end_nested(at);
        let msg = req.finish(1).to_vec();
        let f = parse_filter(&msg[NLMSG_HDR_LEN..]).expect("filter");
        assert_eq!(
            f,
            FilterInfo {
                priority: 0xFF00,
                handle: 0x2a,
                kind: "bpf".into(),
                bpf_name: Some("amt_decap:pid=1,start=2".into()),
                bpf_prog_id: Some(99),
            }
        );
        // Too short for a tcmsg: no answer rather than a panic.
        assert_eq!(parse_filter(&msg[NLMSG_HDR_LEN..NLMSG_HDR_LEN + 10]), None);
    }

    #[test]
    fn qdisc_messages() {
        let mut req = Request::new(
            RTM_NEWQDISC,
            NLM_F_REQUEST,
            &tcmsg(3, CLSACT_HANDLE, TC_H_CLSACT, 0),
        );
        req.attr(TCA_KIND, b"clsact\0");
        let msg = req.finish(1).to_vec();
        let q = parse_qdisc(&msg[NLMSG_HDR_LEN..]).expect("qdisc");
        assert_eq!(q.ifindex, 3);
        assert_eq!(q.kind, "clsact");
        assert!(q.is_ingress_side());
        // Without a kind attribute it is not a usable answer.
        assert_eq!(parse_qdisc(&tcmsg(3, 0, 0, 0)), None);
    }

    #[test]
    fn qdisc_and_filter_dumps_on_this_host() {
        // Multi-part answers must end at NLMSG_DONE rather than after the
        // first message or never (GET requests need no privilege).
        let mut nl = Netlink::open().expect("netlink socket");
        let lo = nl.link_by_name("lo").expect("lo");
        let qdiscs = nl.qdiscs().expect("qdisc dump");
        assert!(qdiscs.iter().all(|q| !q.kind.is_empty()));
        nl.filters(lo.ifindex, TC_PARENT_INGRESS)
            .expect("filter dump of lo");
        // The socket is still in step afterwards.
        assert_eq!(nl.link_by_index(lo.ifindex).expect("lo").name, "lo");
    }

    #[test]
    fn route_and_link_lookups_on_this_host() {
        // Loopback exists in every namespace.
        let mut nl = Netlink::open().expect("netlink socket");
        let lo = nl.link_by_name("lo").expect("lo");
        assert_eq!(lo.link_type, 772);
        assert_eq!(
            nl.link_by_index(lo.ifindex).expect("lo by index").name,
            "lo"
        );
        assert_eq!(
            nl.route_oif("127.0.0.1".parse().unwrap()).expect("route"),
            lo.ifindex
        );
        assert!(nl.link_by_name("no-such-link0").is_err());
    }
}
