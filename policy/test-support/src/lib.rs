//! Loopback servers for integration tests: BIND 9 (`named`) with temp zones
//! and nginx with a temp CA. Each server lives in its own temp directory and
//! is killed (and the directory removed) on drop. Missing binaries fail the
//! test loudly.
//!
//! A dev-dependency of `ingest-policy` and `frr-bridge` (their integration
//! tests start these servers); never a dependency of production code.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const NAMED: &str = "/usr/sbin/named";
pub const NGINX: &str = "/usr/sbin/nginx";
pub const OPENSSL: &str = "/usr/bin/openssl";
pub const NAMED_CHECKCONF: &str = "/usr/bin/named-checkconf";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ingest-policy-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn require_binary(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is required for this test (install it: scripts/install-deps)"
    );
}

/// A loopback port free for both TCP and UDP, with the probing sockets
/// still bound so nothing can take it before the caller decides.
///
/// Ports come from 20000..32000, below the kernel's ephemeral range
/// (32768..60999 by default): a port handed out by `bind(:0)` and then
/// released can be grabbed by any outgoing connection's source port (the
/// tests' own readiness probes included), which made CI fail with
/// AddrInUse. Ports in this range are only ever taken by explicit binds.
fn reserve_port() -> (u16, TcpListener, UdpSocket) {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(20000..32000);
        let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            return (port, tcp, udp);
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// A loopback port free for TCP and UDP, for a server the test starts.
pub fn free_port() -> u16 {
    reserve_port().0
}

fn wait_for_tcp(addr: SocketAddr, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited early ({status}):\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let log = fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not start listening on {addr}:\n{log}");
}

/// One zone served by [`Named`].
pub struct Zone {
    pub origin: String,
    /// Records after the SOA/NS header, in zone-file syntax (relative or
    /// absolute owners).
    pub records: String,
}

/// `named` on 127.0.0.1:<port>, authoritative only.
pub struct Named {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Named {
    /// Starts named with `zones`; `dead_zones` are secondary zones whose
    /// primary does not exist, so queries into them get SERVFAIL.
    pub fn start(zones: &[Zone], dead_zones: &[&str]) -> Self {
        require_binary(NAMED);
        require_binary(NAMED_CHECKCONF);
        let dir = TempDir::new("named");
        let port = free_port();
        let d = dir.path().display().to_string();
        let mut conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
    notify no;
}};
controls {{ }};
"#
        );
        for (i, zone) in zones.iter().enumerate() {
            let file = format!("zone{i}.db");
            let text = format!(
                "$TTL 300\n$ORIGIN {origin}\n@ IN SOA ns.lab.test. admin.lab.test. 1 3600 600 86400 60\n@ IN NS ns.lab.test.\n{records}\n",
                origin = zone.origin,
                records = zone.records
            );
            fs::write(dir.path().join(&file), text).expect("write zone");
            conf.push_str(&format!(
                "zone \"{}\" {{ type primary; file \"{d}/{file}\"; }};\n",
                zone.origin
            ));
        }
        for (i, origin) in dead_zones.iter().enumerate() {
            conf.push_str(&format!(
                "zone \"{origin}\" {{ type secondary; primaries {{ 127.0.0.1 port 9; }}; file \"{d}/dead{i}.db\"; }};\n"
            ));
        }
        let conf_path = dir.path().join("named.conf");
        fs::write(&conf_path, conf).expect("write named.conf");
        let check = Command::new(NAMED_CHECKCONF)
            .arg("-z")
            .arg(&conf_path)
            .output()
            .expect("run named-checkconf");
        // Dead secondaries have no file yet; only primaries must load.
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(
            !report.contains("not loaded due to errors"),
            "zone check failed:\n{report}"
        );
        let log_path = dir.path().join("named.log");
        let log = fs::File::create(&log_path).expect("create log");
        let mut child = Command::new(NAMED)
            .arg("-g")
            .arg("-4")
            .arg("-n")
            .arg("1")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn named");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for_tcp(addr, &mut child, "named", &log_path);
        // named opens TCP before it finishes loading zones; wait for the log.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("all zones loaded") && text.contains("running") {
                break;
            }
            assert!(Instant::now() < deadline, "named not running:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            !text.contains("not loaded due to errors"),
            "zone failed to load:\n{text}"
        );
        Self { child, addr, dir }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP+TCP port on loopback that accepts and never answers, for timeouts.
pub struct Silent {
    pub addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

impl Silent {
    pub fn start() -> Self {
        let (port, tcp, udp) = reserve_port();
        Self {
            addr: ([127, 0, 0, 1], port).into(),
            _udp: udp,
            _tcp: tcp,
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (EC P-256) and a server certificate for `dns_name` signed by it,
/// written to `dir` as ca.crt, server.crt, server.key.
pub fn make_pki(dir: &Path, dns_name: &str) {
    require_binary(OPENSSL);
    let p = |n: &str| dir.join(n);
    // An EC P-256 private key at `path`.
    let new_key = |path: PathBuf| {
        run(Command::new(OPENSSL)
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(path));
    };
    new_key(p("ca.key"));
    run(Command::new(OPENSSL)
        .args([
            "req",
            "-x509",
            "-new",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=policy test CA",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-key")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    new_key(p("server.key"));
    run(Command::new(OPENSSL)
        .args(["req", "-new", "-sha256", "-subj"])
        .arg(format!("/CN={dns_name}"))
        .arg("-key")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    fs::write(
        p("ext.cnf"),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{dns_name}\n"
        ),
    )
    .expect("write ext");
    run(Command::new(OPENSSL)
        .args(["x509", "-req", "-sha256", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
}

/// nginx serving `<dir>/www` over TLS on 127.0.0.1:<port>, single process.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
}

impl Nginx {
    /// `files`: (path under www, content). `extra_locations`: raw nginx
    /// `location` blocks. The certificate is for `dns_name`.
    pub fn start(dns_name: &str, files: &[(&str, &str)], extra_locations: &str) -> Self {
        require_binary(NGINX);
        let dir = TempDir::new("nginx");
        make_pki(dir.path(), dns_name);
        let www = dir.path().join("www");
        for (path, content) in files {
            let full = www.join(path);
            fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            fs::write(full, content).expect("write file");
        }
        fs::create_dir_all(&www).expect("www");
        let port = free_port();
        let d = dir.path().display().to_string();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp_body;
    proxy_temp_path {d}/tmp_proxy;
    fastcgi_temp_path {d}/tmp_fastcgi;
    uwsgi_temp_path {d}/tmp_uwsgi;
    scgi_temp_path {d}/tmp_scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {dns_name};
        ssl_certificate {d}/server.crt;
        ssl_certificate_key {d}/server.key;
        root {d}/www;
        default_type application/yang-data+json;
        location = /.well-known/host-meta {{ default_type application/xrd+xml; }}
{extra_locations}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let log_path = dir.path().join("error.log");
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&log_path)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        wait_for_tcp(
            ([127, 0, 0, 1], port).into(),
            &mut child,
            "nginx",
            &log_path,
        );
        Self { child, port, dir }
    }

    /// Request lines in the access log so far.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
