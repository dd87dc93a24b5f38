//! Client side of the management API, shared by `ingestctl` and the tests.

use std::path::PathBuf;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use ingest_proto::v1::ingest_client::IngestClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where the API is: `unix:/path`, a bare path, or `tcp:HOST:PORT`.
#[derive(Debug, Clone)]
pub enum ApiAddress {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for ApiAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(ApiAddress::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("{a:?} is not HOST:PORT"))?;
            Ok(ApiAddress::Tcp(a.to_string()))
        } else if s.starts_with('/') || s.starts_with('.') {
            Ok(ApiAddress::Unix(PathBuf::from(s)))
        } else {
            Err(format!(
                "{s:?}: expected unix:/path/to/api.sock or tcp:127.0.0.1:50051"
            ))
        }
    }
}

pub async fn connect(addr: &ApiAddress) -> anyhow::Result<IngestClient<Channel>> {
    let channel = match addr {
        ApiAddress::Unix(path) => {
            if !path.exists() {
                bail!(
                    "API socket {} does not exist: is frr-ingestd running? (--api or FRR_INGEST_API)",
                    path.display()
                );
            }
            let path = path.clone();
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .with_context(|| format!("connecting to {}", addr_text(addr)))?
        }
        ApiAddress::Tcp(a) => Endpoint::try_from(format!("http://{a}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", addr_text(addr)))?,
    };
    Ok(IngestClient::new(channel))
}

pub fn addr_text(a: &ApiAddress) -> String {
    match a {
        ApiAddress::Unix(p) => format!("unix:{}", p.display()),
        ApiAddress::Tcp(t) => format!("tcp:{t}"),
    }
}
