//! The binaries' edges: config errors exit 2 with one line naming the key;
//! --help teaches; ingestctl explains an absent daemon.

use std::process::Command;

fn ingestd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_frr-ingestd"))
}

/// `frr-ingestd --config PATH --check-config`.
fn check_config(path: &std::path::Path) -> std::process::Output {
    ingestd()
        .arg("--config")
        .arg(path)
        .arg("--check-config")
        .output()
        .unwrap()
}

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("frr-ingest-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_config_key_exits_2_with_one_line() {
    let cases = [
        ("typo.toml", "[tun]\nnmae = \"amt0\"\n", "nmae"),
        ("v6.toml", "[tun]\nlocal = \"2001:db8::1\"\n", "tun.local"),
        (
            "poll.toml",
            "[watch]\npoll_interval_ms = 0\n",
            "watch.poll_interval_ms",
        ),
        ("syntax.toml", "[tun\nname=1", "syntax.toml"),
        ("tcp.toml", "[api]\ntcp = \"192.0.2.1:50051\"\n", "api.tcp"),
    ];
    for (file, text, needle) in cases {
        let p = tmp(file, text);
        let out = check_config(&p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(
            err.contains(needle),
            "{file}: {err:?} does not name {needle}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{file}: not one line: {err:?}"
        );
        let _ = std::fs::remove_file(p);
    }
    let out = ingestd()
        .args(["--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}

#[test]
fn valid_config_checks_and_prints() {
    let p = tmp(
        "ok.toml",
        "[frr]\nvty_dir = \"/run/x\"\n[ingest]\nserve_all_sources = true\n",
    );
    let out = check_config(&p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ingestd()
        .arg("--config")
        .arg(&p)
        .args(["--tun-name", "amt7", "--print-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vty_dir = \"/run/x\""), "{text}");
    assert!(
        text.contains("name = \"amt7\""),
        "flag overrides file: {text}"
    );
    let _ = std::fs::remove_file(p);
}

#[test]
fn help_teaches() {
    let out = ingestd().arg("--help").output().unwrap();
    let h = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "pimd",
        "--frr-netns",
        "--print-default-config",
        "Exit codes",
        "CAP_NET_ADMIN",
    ] {
        assert!(h.contains(needle), "--help lacks {needle}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ingestctl"))
        .arg("--help")
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&out.stdout);
    assert!(
        h.contains("show") && h.contains("inject") && h.contains("--json"),
        "{h}"
    );
}

#[test]
fn ingestctl_without_daemon_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_ingestctl"))
        .args(["--api", "unix:/nonexistent/api.sock", "show", "joins"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/nonexistent/api.sock") && e.contains("frr-ingestd running"),
        "{e}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ingestctl"))
        .args(["--api", "bogus", "show", "joins"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}
