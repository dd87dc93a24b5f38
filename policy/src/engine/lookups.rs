//! Lookups the engine asks for, and the trait that performs them. The
//! engine itself never performs one: it returns [`Lookup`]s and takes
//! [`LookupDone`]s. [`NetLookups`] (feature `net`) performs them over the
//! network; tests use fakes.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use ingest_types::SourceGroup;

use crate::dorms::FlowBitrate;
use crate::driad::DriadOutcome;

/// A boxed future that can move between threads (the shell spawns them).
pub type LookupFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The network lookups the engine needs, behind a trait so tests inject
/// fakes. Implementations may cache; the engine asks again when a DRIAD
/// answer's TTL runs out and every 10-30 s for bitrates.
pub trait PolicyLookups: Send + Sync + 'static {
    /// AMTRELAY lookup for `source` (type 3 names resolved).
    fn relays(&self, source: IpAddr) -> LookupFuture<'_, DriadOutcome>;
    /// The flow's declared bitrate. Only `metadata`/`bitrate` with origin
    /// `Dorms`, `url` and `error` are used: the engine applies
    /// `default_bitrate` itself.
    fn bitrate(&self, sg: SourceGroup) -> LookupFuture<'_, FlowBitrate>;
}

/// A lookup the engine wants performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    Relays(IpAddr),
    Bitrate(SourceGroup),
}

/// A finished lookup.
#[derive(Debug, Clone)]
pub enum LookupDone {
    Relays(IpAddr, DriadOutcome),
    Bitrate(SourceGroup, FlowBitrate),
}

/// [`PolicyLookups`] over the network: `DriadResolver` and `DormsClient`
/// (both cache by TTL / Cache-Control).
#[cfg(feature = "net")]
pub struct NetLookups {
    driad: Option<crate::driad::DriadResolver>,
    dorms: Option<crate::dorms::DormsClient>,
}

/// What [`NetLookups`] needs: the resolvers to build (none is built when
/// both are off).
#[cfg(feature = "net")]
#[derive(Debug, Clone)]
pub struct NetLookupsConfig {
    /// AMTRELAY lookups (DRIAD) through this DNS configuration.
    pub driad: Option<crate::dns::DnsConfig>,
    /// Bitrate lookups (DORMS) with this client configuration.
    pub dorms: Option<crate::dorms::DormsConfig>,
}

#[cfg(feature = "net")]
impl NetLookups {
    pub fn new(cfg: NetLookupsConfig) -> Result<Self, NetLookupsError> {
        let driad = match cfg.driad {
            Some(dns) => Some(
                crate::driad::DriadResolver::new(crate::driad::DriadConfig::new(dns))
                    .map_err(NetLookupsError::Driad)?,
            ),
            None => None,
        };
        let dorms = match cfg.dorms {
            Some(dc) => Some(crate::dorms::DormsClient::new(dc).map_err(NetLookupsError::Dorms)?),
            None => None,
        };
        Ok(Self { driad, dorms })
    }
}

/// Why the network lookups could not be set up.
#[cfg(feature = "net")]
#[derive(Debug, thiserror::Error)]
pub enum NetLookupsError {
    #[error("DRIAD resolver: {0}")]
    Driad(crate::dns::DnsConfigError),
    #[error("{0}")]
    Dorms(crate::dorms::DormsError),
}

#[cfg(feature = "net")]
impl PolicyLookups for NetLookups {
    fn relays(&self, source: IpAddr) -> LookupFuture<'_, DriadOutcome> {
        Box::pin(async move {
            match &self.driad {
                // Uncached: the engine keeps outcomes and decides when to
                // ask again (TTL, or early when every relay failed).
                Some(driad) => driad.query_relays(source).await,
                None => DriadOutcome::Failed {
                    source,
                    query_name: crate::driad::reverse_name(source),
                    failure: crate::dns::DnsFailure::Other("DRIAD is off".into()),
                    retry_after: std::time::Duration::from_secs(3600),
                },
            }
        })
    }

    fn bitrate(&self, sg: SourceGroup) -> LookupFuture<'_, FlowBitrate> {
        Box::pin(async move {
            match &self.dorms {
                Some(dorms) => dorms.flow_bitrate(sg).await,
                None => FlowBitrate {
                    bitrate: None,
                    origin: crate::admission::BitrateOrigin::Unknown,
                    metadata: None,
                    url: None,
                    error: Some(crate::dorms::DormsError::Config(
                        "DORMS lookups are off".into(),
                    )),
                },
            }
        })
    }
}
