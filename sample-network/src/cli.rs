//! What the lab tools' command lines share: the arguments of `mcrx` and
//! `mcsend` (which channels, on which interface and port), and how a tool
//! reports a failure.

use clap::Args;
use ingest_types::SourceGroup;

use crate::channel::{GroupRangeError, consecutive_groups};
use crate::iface::{Interface, InterfaceError};

#[derive(Debug, Args)]
pub struct ChannelArgs {
    /// Channel as SOURCE,GROUP (IPv4 or IPv6); repeat for several.
    #[arg(short, long = "channel", value_name = "S,G", required = true)]
    pub channel: Vec<SourceGroup>,

    /// This many consecutive groups for each --channel (G, G+1, ...).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub groups: u32,

    /// Interface by name or address: mcrx joins on it, mcsend sends out of
    /// it (IP_MULTICAST_IF / IPV6_MULTICAST_IF); default: the kernel's choice.
    #[arg(short, long, value_name = "NAME|ADDR")]
    pub iface: Option<String>,

    /// UDP destination port.
    #[arg(short, long, default_value_t = 5001)]
    pub port: u16,
}

impl ChannelArgs {
    /// Every --channel with its consecutive groups, in the order given.
    pub fn expanded(&self) -> Result<Vec<SourceGroup>, GroupRangeError> {
        let mut channels = Vec::new();
        for first in &self.channel {
            channels.extend(consecutive_groups(*first, self.groups)?);
        }
        Ok(channels)
    }

    /// The --iface interface; `None` without the option.
    pub fn interface(&self) -> Result<Option<Interface>, InterfaceError> {
        self.iface.as_deref().map(Interface::find).transpose()
    }
}

/// Runs a tool's body; a failure is printed as `TOOL: error: cause: ...`
/// on one line and the tool exits with status 1.
pub fn run_tool(tool: &str, body: impl FnOnce() -> anyhow::Result<()>) {
    if let Err(e) = body() {
        eprintln!("{tool}: {e:#}");
        std::process::exit(1);
    }
}
