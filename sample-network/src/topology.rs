//! The lab's topology, read from its containerlab file
//! (`sample-network/clab/frr-ingest.clab.yml`): nodes, links, addresses, and
//! the steps that `sample-network/lab` executes to build the same network
//! from Linux network namespaces (`lab-topology plan`).
//!
//! Only the part of containerlab's format the lab uses is accepted, and it is
//! checked strictly, so a typo fails with the node and line it is in instead
//! of building a different network:
//! - `name`, `topology.defaults`, `topology.nodes`, `topology.links`;
//! - nodes of kind `linux` with `image`, `binds`, `exec`, `sysctls`, `labels`,
//!   `network-mode`, `cmd`, `startup-delay`, and the container settings
//!   `privileged`, `cap-add`, `devices`, `env` (passed on in [`Container`]
//!   for a container deployment; the netns lab does not use them);
//! - links in the brief format `endpoints: ["a:if", "b:if"]`.
//!
//! Addresses are the exec lines `ip [-4|-6] addr add ADDR/LEN dev IF [nodad]`.
//! Labels `frr-ingest.*` say what the netns lab starts in a node and how a
//! node that shares another's network namespace in containerlab
//! (`network-mode: container:X`) becomes a namespace of its own in the netns
//! lab (see the file's header).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The lab's topology file, relative to the `sample-network` directory.
pub const DEFAULT_RELATIVE_PATH: &str = "clab/frr-ingest.clab.yml";

/// Label: what the netns lab starts in the node.
pub const LABEL_ROLE: &str = "frr-ingest.role";
/// Label: the netns-lab node name of a node sharing another's namespace.
pub const LABEL_NETNS: &str = "frr-ingest.netns";
/// Label: interfaces of the shared namespace that belong to this node in the
/// netns lab (space- or comma-separated).
pub const LABEL_NETNS_INTERFACES: &str = "frr-ingest.netns-interfaces";

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// The path of the lab's topology file: `$LAB_TOPOLOGY` if set, else the one
/// in this crate's source tree.
pub fn default_path() -> PathBuf {
    match std::env::var_os("LAB_TOPOLOGY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_RELATIVE_PATH),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("{path}: node {node}: {message}")]
    Node {
        path: PathBuf,
        node: String,
        message: String,
    },
    #[error("{path}: link {index} {endpoints:?}: {message}")]
    Link {
        path: PathBuf,
        index: usize,
        endpoints: Vec<String>,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// What the netns lab starts in a node (label `frr-ingest.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// FRR with the per-daemon files of the directory bound to /etc/frr/frr.conf.
    Frr,
    /// BIND 9 with the lab's zones.
    Named,
    /// nginx serving the lab's DORMS metadata.
    Nginx,
    /// The lab's AMT relay.
    AmtRelay,
    /// The sidecar: not started by `lab up` (tests and `lab demo` start it).
    FrrIngestd,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "frr" => Role::Frr,
            "named" => Role::Named,
            "nginx" => Role::Nginx,
            "amt-relay" => Role::AmtRelay,
            "frr-ingestd" => Role::FrrIngestd,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Frr => "frr",
            Role::Named => "named",
            Role::Nginx => "nginx",
            Role::AmtRelay => "amt-relay",
            Role::FrrIngestd => "frr-ingestd",
        }
    }
}

/// An address an exec line gives an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfAddr {
    pub interface: String,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} dev {}",
            self.addr, self.prefix_len, self.interface
        )
    }
}

/// A node as the netns lab sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The netns lab's name (namespace `${LAB_PREFIX}-NAME`): the
    /// containerlab name, or label `frr-ingest.netns`.
    pub name: String,
    /// The name in the containerlab file.
    pub clab_name: String,
    pub image: Option<String>,
    pub role: Option<Role>,
    /// Containerlab node whose network namespace this one shares there.
    pub shares_netns_of: Option<String>,
    /// Sysctls, applied before the links exist.
    pub sysctls: Vec<(String, String)>,
    /// Exec lines as argv, in order.
    pub exec: Vec<Vec<String>>,
    /// Addresses given by the exec lines, in order.
    pub addresses: Vec<IfAddr>,
    /// FRR's configuration directory (the directory of the file bound to
    /// /etc/frr/frr.conf), for role `frr`.
    pub frr_config_dir: Option<PathBuf>,
    /// Containerlab only: the container's command and start delay.
    pub cmd: Option<String>,
    pub startup_delay: Option<u32>,
    /// Containerlab only: how the node's container is run.
    pub container: Container,
}

/// The settings of a node's container that containerlab (or
/// `deploy/clab-docker`) applies and the netns lab ignores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Container {
    /// Binds as written in the file (`HOST:CONTAINER[:ro]`; a relative HOST
    /// is relative to the topology file, `__clabDir__` is the lab directory).
    pub binds: Vec<String>,
    /// `network-mode` as written (e.g. `container:ingest`).
    pub network_mode: Option<String>,
    /// `cmd` split into words as containerlab splits it (no shell).
    pub command: Option<Vec<String>>,
    /// `privileged`; containerlab runs a node privileged unless it says
    /// `privileged: false`.
    pub privileged: Option<bool>,
    /// Capabilities added to the runtime's default set (`NET_ADMIN`).
    pub cap_add: Vec<String>,
    /// Host devices passed into the container (`/dev/net/tun`).
    pub devices: Vec<String>,
    /// Environment variables, in file order.
    pub env: IndexMap<String, String>,
    /// Container labels (the `frr-ingest.*` ones included).
    pub labels: IndexMap<String, String>,
}

/// One end of a link, by netns-lab node name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub node: String,
    pub interface: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.interface)
    }
}

/// A veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
}

/// One step of building the netns lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A namespace with lo up.
    Node { node: String },
    /// `sysctl -w KEY=VALUE` in the node.
    Sysctl {
        node: String,
        key: String,
        value: String,
    },
    /// A veth pair between two nodes, both ends up.
    Link { a: Endpoint, b: Endpoint },
    /// A command run in the node (argv, no shell).
    Exec { node: String, argv: Vec<String> },
    /// FRR with the files of a configuration directory.
    Frr { node: String, config_dir: PathBuf },
    /// A service of the lab (named, nginx, amt-relay).
    Service { node: String, role: Role },
}

/// Field separator of `lab-topology plan` lines (ASCII unit separator): no
/// argument of an exec line can contain it, and bash splits on it with
/// `IFS=$'\x1f' read -r -a`.
pub const PLAN_SEPARATOR: char = '\u{1f}';

impl fmt::Display for Step {
    /// One line of `lab-topology plan`: the step's kind and its fields,
    /// separated by [`PLAN_SEPARATOR`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<String> = match self {
            Step::Node { node } => vec!["node".into(), node.clone()],
            Step::Sysctl { node, key, value } => {
                vec!["sysctl".into(), node.clone(), format!("{key}={value}")]
            }
            Step::Link { a, b } => vec![
                "link".into(),
                a.node.clone(),
                a.interface.clone(),
                b.node.clone(),
                b.interface.clone(),
            ],
            Step::Exec { node, argv } => {
                let mut v = vec!["exec".into(), node.clone()];
                v.extend(argv.iter().cloned());
                v
            }
            Step::Frr { node, config_dir } => {
                vec!["frr".into(), node.clone(), config_dir.display().to_string()]
            }
            Step::Service { node, role } => {
                vec!["service".into(), node.clone(), role.as_str().into()]
            }
        };
        let sep = PLAN_SEPARATOR.to_string();
        f.write_str(&fields.join(&sep))
    }
}

/// The resolved topology.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub name: String,
    pub path: PathBuf,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
}

// --- The file as containerlab writes it ---------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    topology: RawTopology,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    defaults: Option<RawNode>,
    nodes: IndexMap<String, Option<RawNode>>,
    #[serde(default)]
    links: Vec<RawLink>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNode {
    kind: Option<String>,
    image: Option<String>,
    binds: Option<Vec<String>>,
    exec: Option<Vec<String>>,
    network_mode: Option<String>,
    sysctls: Option<IndexMap<String, Scalar>>,
    labels: Option<IndexMap<String, Scalar>>,
    cmd: Option<String>,
    startup_delay: Option<u32>,
    privileged: Option<bool>,
    cap_add: Option<Vec<String>>,
    devices: Option<Vec<String>>,
    env: Option<IndexMap<String, Scalar>>,
}

/// A YAML scalar as containerlab accepts it for sysctls and labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Bool(bool),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Bool(b) => write!(f, "{}", u8::from(*b)),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    endpoints: Vec<String>,
}

impl RawNode {
    /// This node with the defaults filled in where it says nothing
    /// (containerlab merges maps and lists; the lab's file only needs
    /// kind and image from the defaults).
    fn with_defaults(self, defaults: &RawNode) -> RawNode {
        RawNode {
            kind: self.kind.or_else(|| defaults.kind.clone()),
            image: self.image.or_else(|| defaults.image.clone()),
            ..self
        }
    }
}

// --- Loading --------------------------------------------------------------------

impl Topology {
    /// Reads and checks the topology file at `path`.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Topology::parse(&text, path)
    }

    /// [`Topology::load`] of [`default_path`].
    pub fn load_default() -> Result<Topology, TopologyError> {
        Topology::load(&default_path())
    }

    /// Parses `text`; `path` names the file in errors and is the base of
    /// relative bind paths (as in containerlab).
    pub fn parse(text: &str, path: &Path) -> Result<Topology, TopologyError> {
        let raw: RawFile = serde_norway::from_str(text).map_err(|source| TopologyError::Yaml {
            path: path.to_path_buf(),
            source,
        })?;
        Resolver {
            path,
            base: path.parent().unwrap_or(Path::new(".")),
        }
        .resolve(raw)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every address of `node` on `interface`, in file order.
    pub fn addresses<'a>(
        &'a self,
        node: &'a str,
        interface: &'a str,
    ) -> impl Iterator<Item = &'a IfAddr> + 'a {
        self.node(node)
            .into_iter()
            .flat_map(|n| n.addresses.iter())
            .filter(move |a| a.interface == interface)
    }

    /// The first IPv4 address of `node` on `interface`.
    pub fn ipv4(&self, node: &str, interface: &str) -> Option<Ipv4Addr> {
        self.addresses(node, interface).find_map(|a| match a.addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The first IPv6 address of `node` on `interface`.
    pub fn ipv6(&self, node: &str, interface: &str) -> Option<Ipv6Addr> {
        self.addresses(node, interface).find_map(|a| match a.addr {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
    }

    /// The steps that build this topology from network namespaces: nodes,
    /// sysctls (before any link, so interfaces inherit `default` settings, as
    /// containerlab sets sysctls when it creates a container), links, exec
    /// lines (in node order), then FRR and the other services.
    pub fn plan(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self
            .nodes
            .iter()
            .map(|n| Step::Node {
                node: n.name.clone(),
            })
            .collect();
        for n in &self.nodes {
            for (key, value) in &n.sysctls {
                steps.push(Step::Sysctl {
                    node: n.name.clone(),
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        for l in &self.links {
            steps.push(Step::Link {
                a: l.a.clone(),
                b: l.b.clone(),
            });
        }
        for n in &self.nodes {
            for argv in &n.exec {
                steps.push(Step::Exec {
                    node: n.name.clone(),
                    argv: argv.clone(),
                });
            }
        }
        for n in &self.nodes {
            if let (Some(Role::Frr), Some(dir)) = (n.role, &n.frr_config_dir) {
                steps.push(Step::Frr {
                    node: n.name.clone(),
                    config_dir: dir.clone(),
                });
            }
        }
        for n in &self.nodes {
            if let Some(role @ (Role::Named | Role::Nginx | Role::AmtRelay)) = n.role {
                steps.push(Step::Service {
                    node: n.name.clone(),
                    role,
                });
            }
        }
        steps
    }
}

struct Resolver<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Resolver<'_> {
    fn node_error(&self, node: &str, message: impl Into<String>) -> TopologyError {
        TopologyError::Node {
            path: self.path.to_path_buf(),
            node: node.to_string(),
            message: message.into(),
        }
    }

    fn resolve(&self, raw: RawFile) -> Result<Topology, TopologyError> {
        if raw.name.trim().is_empty() {
            return Err(TopologyError::File {
                path: self.path.to_path_buf(),
                message: "the topology has no name".into(),
            });
        }
        let defaults = raw.topology.defaults.clone().unwrap_or_default();
        let raw_nodes: Vec<(String, RawNode)> = raw
            .topology
            .nodes
            .into_iter()
            .map(|(name, node)| (name, node.unwrap_or_default().with_defaults(&defaults)))
            .collect();
        if raw_nodes.is_empty() {
            return Err(TopologyError::File {
                path: self.path.to_path_buf(),
                message: "no nodes".into(),
            });
        }

        // Containerlab names and the netns-lab names of nodes that share
        // another's namespace there.
        let mut nodes = Vec::with_capacity(raw_nodes.len());
        for (clab_name, raw) in &raw_nodes {
            nodes.push(self.node(clab_name, raw, &raw_nodes)?);
        }
        for (i, n) in nodes.iter().enumerate() {
            if nodes[..i].iter().any(|m| m.name == n.name) {
                return Err(self.node_error(
                    &n.clab_name,
                    format!("netns-lab name {} is used twice", n.name),
                ));
            }
        }

        // Interfaces of a shared namespace that the netns lab gives to the
        // sharing node: (clab owner, interface) -> netns-lab node.
        let mut moved: Vec<(String, String, String)> = Vec::new();
        for (clab_name, raw) in &raw_nodes {
            let Some(list) = label(raw, LABEL_NETNS_INTERFACES) else {
                continue;
            };
            let owner = shared_owner(raw).ok_or_else(|| {
                self.node_error(
                    clab_name,
                    format!("label {LABEL_NETNS_INTERFACES} needs network-mode container:NODE"),
                )
            })?;
            let me = nodes
                .iter()
                .find(|n| &n.clab_name == clab_name)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            for iface in list.split([' ', ',']).filter(|s| !s.is_empty()) {
                moved.push((owner.to_string(), iface.to_string(), me.clone()));
            }
        }

        let mut links = Vec::with_capacity(raw.topology.links.len());
        for (index, l) in raw.topology.links.iter().enumerate() {
            let link_error = |message: String| TopologyError::Link {
                path: self.path.to_path_buf(),
                index,
                endpoints: l.endpoints.clone(),
                message,
            };
            if l.endpoints.len() != 2 {
                return Err(link_error(format!(
                    "a link has 2 endpoints, not {}",
                    l.endpoints.len()
                )));
            }
            let mut ends = Vec::with_capacity(2);
            for e in &l.endpoints {
                let (node, iface) = e
                    .split_once(':')
                    .filter(|(n, i)| !n.is_empty() && !i.is_empty() && !i.contains(':'))
                    .ok_or_else(|| link_error(format!("endpoint {e:?} is not NODE:INTERFACE")))?;
                let (_, raw_node) = raw_nodes
                    .iter()
                    .find(|(n, _)| n == node)
                    .ok_or_else(|| link_error(format!("no node {node}")))?;
                if shared_owner(raw_node).is_some() {
                    return Err(link_error(format!(
                        "{node} shares another node's network namespace and cannot have links"
                    )));
                }
                check_ifname(iface).map_err(link_error)?;
                let netns_node = moved
                    .iter()
                    .find(|(owner, i, _)| owner == node && i == iface)
                    .map(|(_, _, to)| to.clone())
                    .or_else(|| {
                        nodes
                            .iter()
                            .find(|n| n.clab_name == node)
                            .map(|n| n.name.clone())
                    })
                    .unwrap_or_default();
                ends.push(Endpoint {
                    node: netns_node,
                    interface: iface.to_string(),
                });
            }
            let b = ends.pop().unwrap_or_else(|| unreachable!("two endpoints"));
            let a = ends.pop().unwrap_or_else(|| unreachable!("two endpoints"));
            for end in [&a, &b] {
                if links.iter().any(|x: &Link| &x.a == end || &x.b == end) || (a == b) {
                    return Err(link_error(format!("interface {end} is used twice")));
                }
            }
            links.push(Link { a, b });
        }
        for (owner, iface, to) in &moved {
            if !links.iter().any(|l| {
                [&l.a, &l.b]
                    .iter()
                    .any(|e| &e.node == to && &e.interface == iface)
            }) {
                return Err(self.node_error(
                    to,
                    format!(
                        "{LABEL_NETNS_INTERFACES} names {iface}, but no link has {owner}:{iface}"
                    ),
                ));
            }
        }

        // Every address must be on an interface the node has: a link's end
        // or one its own exec lines create ('ip link add NAME ... peer name PEER').
        for n in &nodes {
            let mut known: Vec<String> = links
                .iter()
                .flat_map(|l| [&l.a, &l.b])
                .filter(|e| e.node == n.name)
                .map(|e| e.interface.clone())
                .collect();
            for argv in &n.exec {
                known.extend(created_interfaces(argv));
            }
            for a in &n.addresses {
                if !known.contains(&a.interface) {
                    return Err(self.node_error(
                        &n.clab_name,
                        format!(
                            "address {a}: {} has no interface {} (known: {})",
                            n.name,
                            a.interface,
                            known.join(" ")
                        ),
                    ));
                }
            }
        }

        Ok(Topology {
            name: raw.name,
            path: self.path.to_path_buf(),
            nodes,
            links,
        })
    }

    fn node(
        &self,
        clab_name: &str,
        raw: &RawNode,
        all: &[(String, RawNode)],
    ) -> Result<Node, TopologyError> {
        let err = |m: String| self.node_error(clab_name, m);
        match raw.kind.as_deref() {
            Some("linux") => {}
            Some(other) => {
                return Err(err(format!(
                    "kind {other}: the lab uses only kind linux (bridges are inside nodes)"
                )));
            }
            None => return Err(err("no kind (and no topology.defaults.kind)".into())),
        }
        let role = match label(raw, LABEL_ROLE) {
            None => None,
            Some(r) => Some(Role::parse(&r).ok_or_else(|| {
                err(format!(
                    "label {LABEL_ROLE}: unknown role {r:?} (frr, named, nginx, amt-relay, frr-ingestd)"
                ))
            })?),
        };
        let shares = shared_owner(raw);
        if let Some(mode) = raw.network_mode.as_deref()
            && shares.is_none()
        {
            return Err(err(format!(
                "network-mode {mode:?}: the lab knows only container:NODE"
            )));
        }
        if let Some(owner) = shares {
            match all.iter().find(|(n, _)| n == owner) {
                None => return Err(err(format!("network-mode container:{owner}: no such node"))),
                Some((_, o)) if shared_owner(o).is_some() => {
                    return Err(err(format!(
                        "network-mode container:{owner}: {owner} shares a namespace itself"
                    )));
                }
                Some(_) => {}
            }
        }
        let name = match (shares, label(raw, LABEL_NETNS)) {
            (_, Some(n)) => n,
            (Some(owner), None) => {
                return Err(err(format!(
                    "shares {owner}'s network namespace: label {LABEL_NETNS} must name its namespace in the netns lab"
                )));
            }
            (None, None) => clab_name.to_string(),
        };
        check_node_name(&name).map_err(err)?;

        let sysctls = raw
            .sysctls
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let mut exec = Vec::new();
        let mut addresses = Vec::new();
        for line in raw.exec.iter().flatten() {
            let argv = split_words(line).map_err(|m| err(format!("exec {line:?}: {m}")))?;
            if argv.is_empty() {
                return Err(err("an empty exec line".into()));
            }
            if let Some(a) = parse_address(&argv).map_err(|m| err(format!("exec {line:?}: {m}")))? {
                addresses.push(a);
            }
            exec.push(argv);
        }
        let frr_config_dir = match role {
            Some(Role::Frr) => {
                let bind = raw
                    .binds
                    .iter()
                    .flatten()
                    .find_map(|b| {
                        let mut parts = b.split(':');
                        let host = parts.next()?;
                        (parts.next()? == "/etc/frr/frr.conf").then_some(host)
                    })
                    .ok_or_else(|| {
                        err("role frr needs a bind HOSTFILE:/etc/frr/frr.conf (its directory has the per-daemon files)".into())
                    })?;
                let file = self.base.join(bind);
                Some(
                    file.parent()
                        .map(Path::to_path_buf)
                        .ok_or_else(|| err(format!("bind {bind}: no directory")))?,
                )
            }
            _ => None,
        };
        Ok(Node {
            name,
            clab_name: clab_name.to_string(),
            image: raw.image.clone(),
            role,
            shares_netns_of: shares.map(str::to_string),
            sysctls,
            exec,
            addresses,
            frr_config_dir,
            cmd: raw.cmd.clone(),
            startup_delay: raw.startup_delay,
            container: container_settings(raw).map_err(err)?,
        })
    }
}

/// A node's container settings, checked: capability names, device paths,
/// bind shapes, the command's quoting.
fn container_settings(raw: &RawNode) -> Result<Container, String> {
    let cap_add: Vec<String> = raw.cap_add.clone().unwrap_or_default();
    for cap in &cap_add {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            return Err(format!(
                "cap-add {cap:?}: not a capability name (e.g. NET_ADMIN)"
            ));
        }
    }
    let devices: Vec<String> = raw.devices.clone().unwrap_or_default();
    for dev in &devices {
        if !dev.starts_with("/dev/") {
            return Err(format!("devices {dev:?}: not a device path (/dev/...)"));
        }
    }
    let binds: Vec<String> = raw.binds.clone().unwrap_or_default();
    for bind in &binds {
        let parts: Vec<&str> = bind.split(':').collect();
        let shape_ok = match parts.as_slice() {
            [host, target] => !host.is_empty() && target.starts_with('/'),
            [host, target, mode] => {
                !host.is_empty()
                    && target.starts_with('/')
                    && mode
                        .split(',')
                        .all(|m| matches!(m, "ro" | "rw" | "z" | "Z"))
            }
            _ => false,
        };
        if !shape_ok {
            return Err(format!("bind {bind:?}: write HOST:/CONTAINER/PATH[:ro]"));
        }
    }
    let command = match &raw.cmd {
        None => None,
        Some(cmd) => {
            let argv = split_words(cmd).map_err(|m| format!("cmd {cmd:?}: {m}"))?;
            if argv.is_empty() {
                return Err("cmd is empty".into());
            }
            Some(argv)
        }
    };
    Ok(Container {
        binds,
        network_mode: raw.network_mode.clone(),
        command,
        privileged: raw.privileged,
        cap_add,
        devices,
        env: raw
            .env
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        labels: raw
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    })
}

fn label(raw: &RawNode, key: &str) -> Option<String> {
    raw.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(|v| v.to_string())
}

fn shared_owner(raw: &RawNode) -> Option<&str> {
    raw.network_mode
        .as_deref()
        .and_then(|m| m.strip_prefix("container:"))
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.len() > MAX_IFNAME
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == ':')
    {
        return Err(format!(
            "interface name {name:?} is not a Linux interface name (at most {MAX_IFNAME} bytes, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "node name {name:?}: letters, digits, '-' and '_' only (it becomes a namespace name)"
        ));
    }
    Ok(())
}

/// Interfaces an exec line creates: `ip link add NAME ... [peer name PEER]`.
fn created_interfaces(argv: &[String]) -> Vec<String> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    if let ["ip", "link", "add", name, rest @ ..] = words.as_slice() {
        out.push((*name).to_string());
        if let Some(i) = rest.windows(2).position(|w| w == ["peer", "name"])
            && let Some(peer) = rest.get(i + 2)
        {
            out.push((*peer).to_string());
        }
    }
    out
}

/// The address of an exec line `ip [-4|-6] addr add ADDR/LEN dev IF [nodad]`
/// (None for any other command). Other spellings of `ip addr add` are
/// refused, so every address the lab sets is one the tests can find.
fn parse_address(argv: &[String]) -> Result<Option<IfAddr>, String> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (family, rest) = match words.as_slice() {
        ["ip", "-4", rest @ ..] => (Some(4), rest),
        ["ip", "-6", rest @ ..] => (Some(6), rest),
        ["ip", rest @ ..] => (None, rest),
        _ => return Ok(None),
    };
    let is_addr = matches!(rest.first(), Some(&("a" | "addr" | "address")));
    if !is_addr || !matches!(rest.get(1), Some(&"add")) {
        return Ok(None);
    }
    let shape = "write addresses as 'ip [-4|-6] addr add ADDR/LEN dev IF [nodad]'";
    let (prefix, iface, extra) = match &rest[2..] {
        [prefix, "dev", iface, extra @ ..] => (*prefix, *iface, extra),
        _ => return Err(shape.into()),
    };
    if !matches!(extra, [] | ["nodad"]) {
        return Err(shape.into());
    }
    let (addr, len) = prefix
        .split_once('/')
        .ok_or_else(|| format!("{prefix}: no prefix length ({shape})"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= if addr.is_ipv4() { 32 } else { 128 })
        .ok_or_else(|| format!("{len:?} is not a prefix length for {addr}"))?;
    match (family, addr) {
        (Some(4), IpAddr::V6(_)) | (Some(6), IpAddr::V4(_)) => {
            return Err(format!(
                "{addr} does not match the -{} option",
                family.unwrap_or(0)
            ));
        }
        _ => {}
    }
    check_ifname(iface)?;
    Ok(Some(IfAddr {
        interface: iface.to_string(),
        addr,
        prefix_len,
    }))
}

/// Splits an exec line into words like a POSIX shell would for a plain
/// command (whitespace, '…' and "…" quoting, backslash escapes), without any
/// expansion. Containerlab splits exec lines the same way and runs them
/// without a shell.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("a trailing backslash".into()),
                }
            }
            c if c == PLAN_SEPARATOR || c == '\n' => {
                return Err(format!("character {c:?} is not allowed in an exec line"));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Topology {
        Topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_RELATIVE_PATH))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse(text: &str) -> Result<Topology, TopologyError> {
        Topology::parse(text, Path::new("/x/test.clab.yml"))
    }

    #[test]
    fn the_lab_file_has_the_lab_s_nodes_and_addresses() {
        let t = lab();
        let names: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "border", "ingest", "rtr", "rcv", "rtr2", "rcv2", "rtr3", "rcv3", "inet", "relay",
                "relay2", "dns", "dorms", "source"
            ]
        );
        assert_eq!(
            t.ipv4("ingest", "ing-dn"),
            Some(Ipv4Addr::new(10, 77, 1, 1))
        );
        assert_eq!(t.ipv4("rtr3", "rtr-up"), Some(Ipv4Addr::new(10, 77, 1, 10)));
        assert_eq!(t.ipv4("border", "bdr0"), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(t.ipv4("dns", "dns0"), Some(Ipv4Addr::new(192, 0, 2, 53)));
        assert_eq!(
            t.ipv6("relay", "rly0"),
            Some("2001:db8:0:2::10".parse().unwrap())
        );
        assert_eq!(t.addresses("source", "src0").count(), 18);
        let border = t.node("border").unwrap();
        assert_eq!(border.clab_name, "frr-ingestd");
        assert_eq!(border.shares_netns_of.as_deref(), Some("ingest"));
        assert!(
            t.links.iter().any(|l| l.a
                == Endpoint {
                    node: "border".into(),
                    interface: "bdr0".into()
                }),
            "bdr0 belongs to border in the netns lab: {:?}",
            t.links
        );
        assert!(
            t.node("ingest")
                .unwrap()
                .frr_config_dir
                .as_ref()
                .unwrap()
                .ends_with("frr-config/ingest")
        );
    }

    #[test]
    fn plan_orders_nodes_sysctls_links_exec_then_services() {
        let plan = lab().plan();
        let kind = |s: &Step| match s {
            Step::Node { .. } => 0,
            Step::Sysctl { .. } => 1,
            Step::Link { .. } => 2,
            Step::Exec { .. } => 3,
            Step::Frr { .. } => 4,
            Step::Service { .. } => 5,
        };
        assert!(plan.windows(2).all(|w| kind(&w[0]) <= kind(&w[1])));
        assert_eq!(plan.iter().filter(|s| kind(s) == 4).count(), 4);
        assert_eq!(plan.iter().filter(|s| kind(s) == 5).count(), 4);
        let line = plan
            .iter()
            .find(|s| matches!(s, Step::Exec { node, .. } if node == "border"))
            .unwrap()
            .to_string();
        assert_eq!(
            line.split(PLAN_SEPARATOR).collect::<Vec<_>>(),
            [
                "exec",
                "border",
                "ip",
                "addr",
                "add",
                "192.0.2.1/24",
                "dev",
                "bdr0"
            ]
        );
    }

    const MINI: &str = r#"
name: t
topology:
  defaults: {kind: linux, image: img}
  nodes:
    a:
      exec: ["ip addr add 10.0.0.1/30 dev a0"]
    b:
      exec: ["ip -6 addr add 2001:db8::2/64 dev b0 nodad"]
  links:
    - endpoints: ["a:a0", "b:b0"]
"#;

    #[test]
    fn a_minimal_file_parses() {
        let t = parse(MINI).unwrap();
        assert_eq!(t.ipv4("a", "a0"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(t.ipv6("b", "b0"), Some("2001:db8::2".parse().unwrap()));
        assert_eq!(t.links.len(), 1);
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("must be rejected").to_string()
    }

    #[test]
    fn mistakes_are_named() {
        let e = error_of(&MINI.replace("dev a0", "dev a9"));
        assert!(e.contains("node a") && e.contains("no interface a9"), "{e}");
        let e = error_of(&MINI.replace("\"b:b0\"", "\"c:b0\""));
        assert!(e.contains("no node c"), "{e}");
        let e = error_of(&MINI.replace("10.0.0.1/30", "10.0.0.300/30"));
        assert!(e.contains("not an IP address"), "{e}");
        let e = error_of(&MINI.replace("10.0.0.1/30", "10.0.0.1"));
        assert!(e.contains("no prefix length"), "{e}");
        let e = error_of(&MINI.replace("ip -6 addr", "ip -4 addr"));
        assert!(e.contains("does not match"), "{e}");
        let e = error_of(&MINI.replace("exec:", "exce:"));
        assert!(e.contains("exce"), "{e}");
        let e = error_of(&MINI.replace("kind: linux", "kind: bridge"));
        assert!(e.contains("kind bridge"), "{e}");
        let e = error_of(&MINI.replace("dev a0\"", "dev a0 'x\""));
        assert!(e.contains("unterminated"), "{e}");
        let e = error_of(&MINI.replace("\"a:a0\"", "\"a:a0-this-is-too-long\""));
        assert!(e.contains("not a Linux interface name"), "{e}");
    }

    #[test]
    fn shared_namespaces_need_a_netns_name_and_take_their_interfaces() {
        let shared = MINI.replace(
            "  links:",
            "    s:\n      network-mode: container:a\n      labels: {frr-ingest.netns: side, frr-ingest.netns-interfaces: a0}\n      exec: [\"ip addr add 10.0.0.9/30 dev a0\"]\n  links:",
        );
        let e = error_of(&shared.replace("frr-ingest.netns: side, ", ""));
        assert!(e.contains("frr-ingest.netns"), "{e}");
        // a0's address is now exec'd by 'side'; the line in 'a' names an interface a lacks.
        let e = error_of(&shared);
        assert!(e.contains("node a") && e.contains("no interface a0"), "{e}");
        let t = parse(&shared.replace(
            "exec: [\"ip addr add 10.0.0.1/30 dev a0\"]",
            "exec: [\"true\"]",
        ))
        .unwrap();
        assert_eq!(t.links[0].a.node, "side");
        assert_eq!(t.ipv4("side", "a0"), Some(Ipv4Addr::new(10, 0, 0, 9)));
        let e = error_of(&shared.replace("\"a:a0\"", "\"s:a0\""));
        assert!(e.contains("cannot have links"), "{e}");
    }

    #[test]
    fn the_sidecar_container_has_capabilities_not_privileges() {
        let t = lab();
        let sidecar = t.node("border").unwrap();
        let c = &sidecar.container;
        assert_eq!(c.privileged, Some(false));
        assert_eq!(c.cap_add, ["NET_ADMIN", "BPF"]);
        assert_eq!(c.devices, ["/dev/net/tun"]);
        assert_eq!(c.network_mode.as_deref(), Some("container:ingest"));
        assert!(
            c.binds
                .iter()
                .any(|b| b == "__clabDir__/ingest-run-frr:/run/frr"),
            "the sidecar reaches pimd's vty through /run/frr: {:?}",
            c.binds
        );
        let ingest = t.node("ingest").unwrap();
        assert!(
            ingest
                .container
                .binds
                .iter()
                .any(|b| b == "__clabDir__/ingest-run-frr:/run/frr")
        );
        assert_eq!(
            t.node("dns").unwrap().container.command.as_deref(),
            Some(&["/usr/local/bin/lab-named".to_string(), "dns0".to_string()][..])
        );
    }

    #[test]
    fn every_bind_of_the_lab_file_exists_and_every_node_has_a_known_image() {
        let t = lab();
        let base = t.path.parent().unwrap();
        for n in &t.nodes {
            for bind in &n.container.binds {
                let host = bind.split(':').next().unwrap();
                if host.starts_with("__clabDir__") {
                    continue;
                }
                assert!(
                    base.join(host).exists(),
                    "node {}: bind {bind}: {} does not exist",
                    n.clab_name,
                    base.join(host).display()
                );
            }
            let image = n.image.as_deref().unwrap_or_default();
            assert!(
                [
                    "frr-ingest/frr:10",
                    "frr-ingest/frr-ingestd:dev",
                    "frr-ingest/lab:dev"
                ]
                .contains(&image),
                "node {}: image {image:?} is not one deploy/build-images makes",
                n.clab_name
            );
        }
    }

    #[test]
    fn container_settings_are_checked() {
        let with = |extra: &str| MINI.replace("    b:\n", &format!("    b:\n{extra}"));
        let t = parse(&with(
            "      privileged: false\n      cap-add: [NET_ADMIN, CAP_NET_RAW]\n      devices: [/dev/net/tun]\n      env: {A: x, B: 2}\n      cmd: run --flag 'a b'\n",
        ))
        .unwrap();
        let c = &t.node("b").unwrap().container;
        assert_eq!(c.privileged, Some(false));
        assert_eq!(c.cap_add, ["NET_ADMIN", "CAP_NET_RAW"]);
        assert_eq!(c.env.get("B").map(String::as_str), Some("2"));
        assert_eq!(
            c.command.as_deref(),
            Some(&["run".to_string(), "--flag".to_string(), "a b".to_string()][..])
        );
        assert_eq!(t.node("a").unwrap().container.privileged, None);
        let e = error_of(&with("      cap-add: [net_admin]\n"));
        assert!(
            e.contains("node b") && e.contains("not a capability name"),
            "{e}"
        );
        let e = error_of(&with("      devices: [tun]\n"));
        assert!(e.contains("not a device path"), "{e}");
        let e = error_of(&with("      binds: [\"x\"]\n"));
        assert!(e.contains("bind \"x\""), "{e}");
        let e = error_of(&with("      binds: [\"a:/b:rx\"]\n"));
        assert!(e.contains("HOST:/CONTAINER/PATH"), "{e}");
        let e = error_of(&with("      cmd: \"run 'x\"\n"));
        assert!(e.contains("cmd") && e.contains("unterminated"), "{e}");
        let e = error_of(&with("      cap-drop: [ALL]\n"));
        assert!(e.contains("cap-drop"), "{e}");
    }

    #[test]
    fn words_split_like_a_shell_without_expansion() {
        assert_eq!(
            split_words(r#"sh -c 'echo $X' "a b" c\ d"#).unwrap(),
            ["sh", "-c", "echo $X", "a b", "c d"]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert!(split_words("a\u{1f}b").is_err());
    }
}
