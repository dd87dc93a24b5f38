//! Client for an FRR daemon's vty unix socket (`<vty_dir>/<daemon>.vty`),
//! speaking the protocol vtysh uses: the command text followed by one NUL;
//! the reply is the output text, then `\0\0\0` and one status byte
//! (`lib/command.h`: 0 success, 1 warning, 2 no match, 3 ambiguous,
//! 4 incomplete, 13 config failed). Output never contains NUL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest reply accepted. `show ip pim join json` is ~235 KB at 1000 (S,G)s;
/// 64 MiB leaves room for very large routers while bounding memory.
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

/// A vty command's completion status (`CMD_*` in FRR's `lib/command.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtyStatus {
    Success,
    Warning,
    NoMatch,
    Ambiguous,
    Incomplete,
    ConfigFailed,
    Other(u8),
}

impl From<u8> for VtyStatus {
    fn from(b: u8) -> Self {
        match b {
            0 => VtyStatus::Success,
            1 => VtyStatus::Warning,
            2 => VtyStatus::NoMatch,
            3 => VtyStatus::Ambiguous,
            4 => VtyStatus::Incomplete,
            13 => VtyStatus::ConfigFailed,
            n => VtyStatus::Other(n),
        }
    }
}

impl std::fmt::Display for VtyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VtyStatus::Success => f.write_str("success"),
            VtyStatus::Warning => f.write_str("warning"),
            VtyStatus::NoMatch => f.write_str("unknown command"),
            VtyStatus::Ambiguous => f.write_str("ambiguous command"),
            VtyStatus::Incomplete => f.write_str("incomplete command"),
            VtyStatus::ConfigFailed => f.write_str("configuration failed"),
            VtyStatus::Other(n) => write!(f, "status {n}"),
        }
    }
}

#[derive(Debug, Error)]
pub enum VtyError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?} talking to {1}")]
    Timeout(Duration, PathBuf),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} closed the connection in the middle of a reply ({1} bytes received)")]
    Truncated(PathBuf, usize),
    #[error("reply from {0} exceeds {MAX_REPLY} bytes")]
    TooLarge(PathBuf),
    #[error("command {command:?} failed: {status}: {output}")]
    Command {
        command: String,
        status: VtyStatus,
        output: String,
    },
    #[error("command contains a NUL byte")]
    BadCommand,
}

impl VtyError {
    /// Whether the connection is unusable afterwards (reconnect needed).
    pub fn is_connection_error(&self) -> bool {
        !matches!(self, VtyError::Command { .. } | VtyError::BadCommand)
    }
}

/// Incremental decoder of vty replies: feed bytes as they arrive, take
/// complete replies out. Pure, so framing is unit-tested without sockets.
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    buf: Vec<u8>,
    /// Where the search for the trailer resumes (avoids rescanning).
    scanned: usize,
}

impl ReplyDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// A complete reply (output bytes, status) if one is buffered.
    pub fn next_reply(&mut self) -> Option<(Vec<u8>, VtyStatus)> {
        // The trailer is three NULs then the status byte. The status byte
        // may itself be 0, so look for the first run of three NULs.
        let start = self.scanned.saturating_sub(3);
        let pos = self.buf[start..]
            .windows(3)
            .position(|w| w == [0, 0, 0])
            .map(|p| p + start);
        match pos {
            Some(i) if self.buf.len() > i + 3 => {
                let status = VtyStatus::from(self.buf[i + 3]);
                let rest = self.buf.split_off(i + 4);
                let mut out = std::mem::replace(&mut self.buf, rest);
                out.truncate(i);
                self.scanned = 0;
                Some((out, status))
            }
            _ => {
                self.scanned = self.buf.len();
                None
            }
        }
    }
}

/// One connection to one daemon's vty socket. Not shared between tasks:
/// commands are strictly request/reply.
pub struct VtyClient {
    path: PathBuf,
    timeout: Duration,
    stream: Option<UnixStream>,
    decoder: ReplyDecoder,
}

impl VtyClient {
    /// `path` is the daemon's socket, e.g. `/var/run/frr/pimd.vty`.
    /// Nothing is connected until the first command.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
            stream: None,
            decoder: ReplyDecoder::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Drop the connection; the next command reconnects.
    pub fn disconnect(&mut self) {
        self.stream = None;
        self.decoder = ReplyDecoder::new();
    }

    async fn connect(&mut self) -> Result<(), VtyError> {
        let fut = UnixStream::connect(&self.path);
        let stream = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| VtyError::Timeout(self.timeout, self.path.clone()))?
            .map_err(|source| VtyError::Connect {
                path: self.path.clone(),
                source,
            })?;
        self.stream = Some(stream);
        self.decoder = ReplyDecoder::new();
        Ok(())
    }

    /// Run one command and return its output. A non-success status is an
    /// error carrying the output (FRR prints the reason there). Connection
    /// failures drop the connection so the next call reconnects.
    pub async fn command(&mut self, command: &str) -> Result<String, VtyError> {
        let (out, status) = self.command_status(command).await?;
        match status {
            VtyStatus::Success => Ok(out),
            status => Err(VtyError::Command {
                command: command.to_string(),
                status,
                output: out.trim().to_string(),
            }),
        }
    }

    /// Run one command; return output and status whatever the status.
    pub async fn command_status(&mut self, command: &str) -> Result<(String, VtyStatus), VtyError> {
        if command.as_bytes().contains(&0) {
            return Err(VtyError::BadCommand);
        }
        let timeout = self.timeout;
        let path = self.path.clone();
        let res = tokio::time::timeout(timeout, self.exchange(command)).await;
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.disconnect();
                Err(e)
            }
            Err(_) => {
                self.disconnect();
                Err(VtyError::Timeout(timeout, path))
            }
        }
    }

    async fn exchange(&mut self, command: &str) -> Result<(String, VtyStatus), VtyError> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        let path = self.path.clone();
        let io_err = |source| VtyError::Io {
            path: path.clone(),
            source,
        };
        let Some(stream) = self.stream.as_mut() else {
            return Err(VtyError::Truncated(self.path.clone(), 0));
        };
        let mut msg = Vec::with_capacity(command.len() + 1);
        msg.extend_from_slice(command.as_bytes());
        msg.push(0);
        stream.write_all(&msg).await.map_err(io_err)?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((out, status)) = self.decoder.next_reply() {
                // Non-UTF-8 output cannot be JSON; keep it readable for logs.
                let text = String::from_utf8_lossy(&out).into_owned();
                return Ok((text, status));
            }
            if self.decoder.buffered() > MAX_REPLY {
                return Err(VtyError::TooLarge(self.path.clone()));
            }
            let n = stream.read(&mut chunk).await.map_err(io_err)?;
            if n == 0 {
                return Err(VtyError::Truncated(
                    self.path.clone(),
                    self.decoder.buffered(),
                ));
            }
            self.decoder.push(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_reply_with_status() {
        let mut d = ReplyDecoder::new();
        d.push(b"hello\nworld\n\0\0\0\x00");
        let (out, st) = d.next_reply().unwrap();
        assert_eq!(out, b"hello\nworld\n");
        assert_eq!(st, VtyStatus::Success);
        assert!(d.next_reply().is_none());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decodes_split_trailer_and_pipelined_replies() {
        let mut d = ReplyDecoder::new();
        d.push(b"% Unknown command\0");
        assert!(d.next_reply().is_none());
        d.push(b"\0");
        assert!(d.next_reply().is_none());
        d.push(b"\0");
        assert!(d.next_reply().is_none(), "status byte still missing");
        d.push(b"\x02{}\n\0\0\0\x04");
        let (out, st) = d.next_reply().unwrap();
        assert_eq!(out, b"% Unknown command");
        assert_eq!(st, VtyStatus::NoMatch);
        let (out, st) = d.next_reply().unwrap();
        assert_eq!(out, b"{}\n");
        assert_eq!(st, VtyStatus::Incomplete);
    }

    #[test]
    fn byte_at_a_time() {
        let mut d = ReplyDecoder::new();
        let wire = b"{\"a\":1}\0\0\0\x0d";
        let mut got = None;
        for b in wire {
            d.push(&[*b]);
            if let Some(r) = d.next_reply() {
                got = Some(r);
            }
        }
        let (out, st) = got.unwrap();
        assert_eq!(out, b"{\"a\":1}");
        assert_eq!(st, VtyStatus::ConfigFailed);
    }

    #[test]
    fn empty_output() {
        let mut d = ReplyDecoder::new();
        d.push(&[0, 0, 0, 0]);
        let (out, st) = d.next_reply().unwrap();
        assert!(out.is_empty());
        assert_eq!(st, VtyStatus::Success);
    }

    #[test]
    fn unknown_status_kept() {
        assert_eq!(VtyStatus::from(12), VtyStatus::Other(12));
    }

    /// A listening Unix socket `pimd.vty` in a fresh temp directory (the
    /// test removes the directory).
    fn fake_daemon_socket(
        tag: &str,
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        tokio::net::UnixListener,
    ) {
        let dir = std::env::temp_dir().join(format!("vtytest-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("pimd.vty");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    #[tokio::test]
    async fn client_against_fake_daemon_and_reconnect() {
        let (dir, path, listener) = fake_daemon_socket("reconnect");
        let server = tokio::spawn(async move {
            // First connection: answer one command, then die mid-reply.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"show ip pim join json\0");
            s.write_all(b"{}\0\0\0\0").await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"{\"partial").await.unwrap();
            drop(s);
            // Second connection: a command error.
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"% Unknown command: show ip pim joinx\n\0\0\0\x02")
                .await
                .unwrap();
            let _ = s.read(&mut buf).await;
        });
        let mut c = VtyClient::new(&path, Duration::from_secs(2));
        assert_eq!(c.command("show ip pim join json").await.unwrap(), "{}");
        let e = c.command("show ip pim join json").await.unwrap_err();
        assert!(matches!(e, VtyError::Truncated(_, 9)), "{e}");
        assert!(!c.is_connected());
        let e = c.command("show ip pim joinx").await.unwrap_err();
        match e {
            VtyError::Command { status, output, .. } => {
                assert_eq!(status, VtyStatus::NoMatch);
                assert!(output.contains("Unknown command"));
            }
            other => panic!("unexpected {other}"),
        }
        assert!(c.is_connected(), "command errors keep the connection");
        drop(c);
        server.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let mut c = VtyClient::new("/nonexistent/pimd.vty", Duration::from_millis(200));
        let e = c.command("show version").await.unwrap_err();
        assert!(matches!(e, VtyError::Connect { .. }));
        assert!(e.to_string().contains("/nonexistent/pimd.vty"));
    }

    #[tokio::test]
    async fn silent_daemon_times_out() {
        let (dir, path, listener) = fake_daemon_socket("silent");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(s);
        });
        let mut c = VtyClient::new(&path, Duration::from_millis(100));
        let e = c.command("show ip pim join json").await.unwrap_err();
        assert!(matches!(e, VtyError::Timeout(..)), "{e}");
        server.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
