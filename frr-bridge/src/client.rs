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

/// Why a text is not an [`ApiAddress`]; each names the text it rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiAddressError {
    /// `tcp:` followed by something that is not a socket address.
    #[error("{0:?} is not HOST:PORT")]
    NotHostPort(String),
    /// Neither `unix:`, `tcp:` nor a path.
    #[error("{0:?}: expected unix:/path/to/api.sock or tcp:127.0.0.1:50051")]
    UnknownForm(String),
}

impl std::str::FromStr for ApiAddress {
    type Err = ApiAddressError;
    fn from_str(s: &str) -> Result<Self, ApiAddressError> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(ApiAddress::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse::<std::net::SocketAddr>()
                .map_err(|_| ApiAddressError::NotHostPort(a.to_string()))?;
            Ok(ApiAddress::Tcp(a.to_string()))
        } else if s.starts_with('/') || s.starts_with('.') {
            Ok(ApiAddress::Unix(PathBuf::from(s)))
        } else {
            Err(ApiAddressError::UnknownForm(s.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let unix: ApiAddress = "unix:/run/x.sock".parse().unwrap();
        assert_eq!(addr_text(&unix), "unix:/run/x.sock");
        let bare: ApiAddress = "./api.sock".parse().unwrap();
        assert_eq!(addr_text(&bare), "unix:./api.sock");
        let tcp: ApiAddress = "tcp:127.0.0.1:50051".parse().unwrap();
        assert_eq!(addr_text(&tcp), "tcp:127.0.0.1:50051");
    }

    #[test]
    fn errors_name_the_bad_text_as_before() {
        // clap prints these messages after "invalid value ... for '--api'".
        let err = "tcp:localhost".parse::<ApiAddress>().unwrap_err();
        assert_eq!(err, ApiAddressError::NotHostPort("localhost".into()));
        assert_eq!(err.to_string(), r#""localhost" is not HOST:PORT"#);
        let err = "api.sock".parse::<ApiAddress>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""api.sock": expected unix:/path/to/api.sock or tcp:127.0.0.1:50051"#
        );
    }
}
