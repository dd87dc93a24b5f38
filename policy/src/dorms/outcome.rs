//! What a DORMS fetch produced: the flow's bitrate for admission, or the
//! typed reason there is none, and the steps taken (for troubleshooting).
//! Plain values, shared by the client (behind the `net` feature) and the
//! policy engine.

use super::hostmeta::HostMetaError;
use super::metadata::{FlowMetadata, MetadataError, MetadataLayout};
use super::srv::SrvTarget;
use crate::admission::BitrateOrigin;
use crate::dns::DnsFailure;

/// Why no metadata was obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DormsError {
    #[error("DORMS SRV lookup {name}: {failure}")]
    Srv { name: String, failure: DnsFailure },
    #[error("no usable DORMS SRV targets at {name}")]
    NoServers { name: String },
    #[error("{url}: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: {error}")]
    HostMeta { url: String, error: HostMetaError },
    #[error("host-meta restconf href {href:?} is not usable (https only)")]
    BadHref { href: String },
    #[error("{url}: {error}")]
    Metadata { url: String, error: MetadataError },
    #[error("{url}: body larger than {limit} bytes")]
    BodyTooLarge { url: String, limit: usize },
    #[error("{url}: TLS: {detail}")]
    Tls { url: String, detail: String },
    #[error("{url}: timed out")]
    Timeout { url: String },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("DORMS client configuration: {0}")]
    Config(String),
}

impl DormsError {
    /// Worth retrying soon: the server or the path may recover.
    pub fn is_transient(&self) -> bool {
        match self {
            DormsError::Timeout { .. } | DormsError::Transport { .. } => true,
            DormsError::HttpStatus { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A flow's rate for admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowBitrate {
    /// Bits per second; `None` = no metadata and no default (block).
    pub bitrate: Option<u64>,
    pub origin: BitrateOrigin,
    pub metadata: Option<FlowMetadata>,
    /// The metadata URL the rate came from (when `metadata` is set).
    pub url: Option<String>,
    /// Why metadata is missing, when it is.
    pub error: Option<DormsError>,
}

/// One step of a DORMS fetch, in the order taken (see
/// [`DormsClient::fetch_traced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DormsStep {
    /// The SRV query: its owner name and the targets in the order they are
    /// tried (RFC 2782), or the DNS failure.
    Srv {
        name: String,
        result: Result<Vec<SrvTarget>, DnsFailure>,
    },
    /// A host-meta request: the RESTCONF root it gave, or why not. `cached`
    /// when the root came from the per-server cache (no request made).
    HostMeta {
        url: String,
        result: Result<String, DormsError>,
        cached: bool,
    },
    /// A metadata request in one tree layout.
    Metadata {
        url: String,
        layout: MetadataLayout,
        result: Result<FlowMetadata, DormsError>,
    },
}
