//! DORMS (draft-ietf-mboned-dorms) discovery and CBACC metadata.
//!
//! Pure parts: host-meta parsing, metadata JSON, URL building, SRV ordering,
//! cache lifetimes, the fetch outcome. I/O part (feature `net`): `DormsClient`
//! (hickory SRV + reqwest HTTPS).

mod hostmeta;
mod metadata;
mod outcome;
mod srv;

pub use hostmeta::{HostMetaError, parse_host_meta_json, parse_host_meta_xml};
pub use metadata::{
    FlowMetadata, KeyEncoding, MetadataError, MetadataLayout, RateField, base_url, metadata_url,
    parse_metadata, restconf_root,
};
pub use outcome::{DormsError, DormsStep, FlowBitrate};
pub use srv::{SrvTarget, cache_lifetime, order_srv};

#[cfg(feature = "net")]
mod client;
#[cfg(feature = "net")]
pub use client::{DormsClient, DormsConfig};
