//! `lab-topology`: reads the lab's containerlab file and prints what
//! `sample-network/lab` and people need from it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sample_network::topology::{self, PLAN_SEPARATOR, Topology};

const LONG_ABOUT: &str = "\
Reads the frr-ingest lab's topology, a containerlab file
(sample-network/clab/frr-ingest.clab.yml, or --file / $LAB_TOPOLOGY), checks
it, and prints:

  plan     the steps sample-network/lab runs to build the lab from network
           namespaces, one per line, fields separated by the ASCII unit
           separator (0x1f):
             node NODE                       a namespace
             sysctl NODE KEY=VALUE           before any link exists
             link NODE_A IF_A NODE_B IF_B    a veth pair, both ends up
             exec NODE ARG...                a command in NODE (no shell)
             frr NODE CONFIG_DIR             FRR with that directory's files
             service NODE ROLE               named | nginx | amt-relay
  nodes    the netns lab's node names, one per line
  addr     an address of a node: addr NODE [IFACE] [-4|-6] (the first one)
  check    check the file and print a summary
  json     the checked topology as JSON

Node names are the netns lab's: a node that shares another's network
namespace in containerlab gets its own (label frr-ingest.netns), e.g. the
sidecar frr-ingestd is 'border'.

Examples:
  lab-topology check
  lab-topology addr dns -4          -> 192.0.2.53
  lab-topology addr relay rly0 -6   -> 2001:db8:0:2::10
  lab-topology plan | tr '\\037' ' '";

#[derive(Debug, Parser)]
#[command(name = "lab-topology", version, about = "The frr-ingest lab's topology", long_about = LONG_ABOUT)]
struct Args {
    /// Topology file (default: $LAB_TOPOLOGY, else the one in the source tree).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Steps for sample-network/lab (see --help).
    Plan,
    /// Node names of the netns lab.
    Nodes,
    /// The first address of NODE (on IFACE if given).
    Addr {
        node: String,
        /// Interface (default: any of the node's).
        iface: Option<String>,
        /// Only IPv4.
        #[arg(short = '4', conflicts_with = "ipv6")]
        ipv4: bool,
        /// Only IPv6.
        #[arg(short = '6')]
        ipv6: bool,
    },
    /// Check the file and print a summary.
    Check,
    /// The checked topology as JSON.
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.file.unwrap_or_else(topology::default_path);
    let topo = Topology::load(&path).with_context(|| "the lab topology is not usable")?;
    match args.command {
        Command::Plan => {
            for step in topo.plan() {
                println!("{step}");
            }
        }
        Command::Nodes => {
            for n in &topo.nodes {
                println!("{}", n.name);
            }
        }
        Command::Addr {
            node,
            iface,
            ipv4,
            ipv6,
        } => {
            let Some(n) = topo.node(&node) else {
                bail!(
                    "{}: no node {node} (nodes: {})",
                    path.display(),
                    topo.nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            };
            let found = n.addresses.iter().find(|a| {
                iface.as_deref().is_none_or(|i| a.interface == i)
                    && (!ipv4 || a.addr.is_ipv4())
                    && (!ipv6 || a.addr.is_ipv6())
            });
            match found {
                Some(a) => println!("{}", a.addr),
                None => bail!(
                    "{}: node {node} has no{} address{}",
                    path.display(),
                    if ipv4 {
                        " IPv4"
                    } else if ipv6 {
                        " IPv6"
                    } else {
                        ""
                    },
                    iface.map(|i| format!(" on {i}")).unwrap_or_default()
                ),
            }
        }
        Command::Check => {
            let addresses: usize = topo.nodes.iter().map(|n| n.addresses.len()).sum();
            println!(
                "{}: topology {:?}: {} nodes, {} links, {} addresses, {} plan steps",
                path.display(),
                topo.name,
                topo.nodes.len(),
                topo.links.len(),
                addresses,
                topo.plan().len()
            );
        }
        Command::Json => {
            println!("{}", serde_json::to_string_pretty(&topo)?);
        }
    }
    // The separator must never appear inside a field (split_words refuses it).
    debug_assert!(!PLAN_SEPARATOR.is_whitespace());
    Ok(())
}
