//! The `ingestctl driad` / `ingestctl dorms` reports against a real BIND
//! and nginx on loopback (helpers from the `ingest-test-support` crate).

use ingest_types::SourceGroup;
use std::net::IpAddr;

use frr_bridge::policy_cli::{dorms_report, driad_report};
use ingest_test_support::{Named, Nginx, Silent, Zone};

fn sg(source: IpAddr, group: IpAddr) -> SourceGroup {
    SourceGroup::new(source, group).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn driad_report_against_bind() {
    let named = Named::start(
        &[
            Zone {
                origin: "185.212.23.in-addr.arpa.".into(),
                records: "\
4 120 IN AMTRELAY 10 0 1 203.0.113.15
4 120 IN AMTRELAY 20 1 3 relay.lab.test.
4 120 IN AMTRELAY 30 0 3 missing.lab.test.
6 IN AMTRELAY 10 0 0 .
"
                .into(),
            },
            Zone {
                origin: "lab.test.".into(),
                records:
                    "ns IN A 127.0.0.1\nrelay 60 IN A 192.0.2.7\nrelay 60 IN AAAA 2001:db8::7\n"
                        .into(),
            },
        ],
        &["186.212.23.in-addr.arpa."],
    );
    let server = vec![named.addr.to_string()];

    let (text, json) = driad_report(ip("23.212.185.4"), server.clone()).await;
    assert!(
        text.contains("4.185.212.23.in-addr.arpa. AMTRELAY (type 260) via 127.0.0.1:"),
        "{text}"
    );
    for record in [
        "AMTRELAY 10 0 1 203.0.113.15",
        "AMTRELAY 20 1 3 relay.lab.test.",
        "AMTRELAY 30 0 3 missing.lab.test.",
    ] {
        assert!(text.contains(record), "{record}: {text}");
    }
    assert!(
        text.contains("result:  use relay 203.0.113.15 port 2268 (Relay Discovery first)"),
        "{text}"
    );
    assert!(text.contains("type 3 relay.lab.test. (AAAA)"), "{text}");
    assert!(
        text.contains("missing.lab.test.  (precedence 30): name did not resolve"),
        "{text}"
    );
    assert_eq!(json["ok"], true);
    assert_eq!(json["ttl_s"], 60);
    let candidates: Vec<(String, u64, bool)> = json["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["relay"].as_str().unwrap().to_owned(),
                c["precedence"].as_u64().unwrap(),
                c["discovery_optional"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(candidates[0], ("203.0.113.15".into(), 10, false));
    let mut rest: Vec<_> = candidates[1..].to_vec();
    rest.sort();
    assert_eq!(
        rest,
        vec![
            ("192.0.2.7".into(), 20, true),
            ("2001:db8::7".into(), 20, true)
        ]
    );

    let (text, json) = driad_report(ip("23.212.185.6"), server.clone()).await;
    assert!(
        text.contains("result:  no relay: a type 0 record"),
        "{text}"
    );
    assert_eq!(json["outcome"], "no-relay");

    let (text, json) = driad_report(ip("23.212.185.9"), server.clone()).await;
    assert!(text.contains("NXDOMAIN: the name does not exist"), "{text}");
    assert_eq!(json["error"]["kind"], "nxdomain");

    let (text, json) = driad_report(ip("23.212.186.1"), server).await;
    assert!(text.contains("SERVFAIL"), "{text}");
    assert_eq!(json["error"]["kind"], "servfail");

    let silent = Silent::start();
    let (text, json) = driad_report(ip("23.212.185.4"), vec![silent.addr.to_string()]).await;
    assert!(
        text.contains(&format!("timeout: no answer from {}", silent.addr)),
        "{text}"
    );
    assert_eq!(json["error"]["kind"], "timeout");
}

#[tokio::test]
async fn dorms_report_against_nginx_and_bind() {
    let host_meta = "<?xml version='1.0' encoding='UTF-8'?>
<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>
  <Link rel='restconf' href='/restconf'/>
</XRD>
";
    let nginx = Nginx::start(
        "dorms.lab.test",
        &[
            (".well-known/host-meta", host_meta),
            (
                "restconf/data/ietf-dorms:dorms/metadata/sender=23.212.185.4/group=232.1.1.1/ietf-cbacc:cbacc",
                r#"{"ietf-cbacc:cbacc":{"max-speed":"6000","priority":"300"}}"#,
            ),
        ],
        "",
    );
    let named = Named::start(
        &[
            Zone {
                origin: "185.212.23.in-addr.arpa.".into(),
                records: format!("_dorms._tcp.4 IN SRV 0 1 {} dorms.lab.test.\n", nginx.port),
            },
            Zone {
                origin: "lab.test.".into(),
                records: "ns IN A 127.0.0.1\ndorms IN A 127.0.0.1\n".into(),
            },
        ],
        &[],
    );
    let server = vec![named.addr.to_string()];
    let base = format!("https://dorms.lab.test:{}", nginx.port);

    let (text, json) = dorms_report(
        sg(ip("23.212.185.4"), ip("232.1.1.1")),
        server.clone(),
        Some(nginx.ca_path()),
    )
    .await;
    for line in [
        format!(
            "1. dorms.lab.test port {} (priority 0, weight 1)",
            nginx.port
        ),
        format!(
            "host-meta: {base}/.well-known/host-meta\n           -> RESTCONF root {base}/restconf/"
        ),
        "(draft -01/-02 layout ietf-dorms:metadata) -> failed:".into(),
        "result:    bitrate 6.0 Mbit/s (6000000 bit/s; declared as max-speed = 6000 kbit/s)".into(),
    ] {
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
    assert_eq!(json["ok"], true);
    assert_eq!(json["bitrate_bps"], 6_000_000);
    assert_eq!(json["layout"], "dorms");
    assert_eq!(json["priority"], 300);
    assert_eq!(
        json["url"],
        format!(
            "{base}/restconf/data/ietf-dorms:dorms/metadata/sender=23.212.185.4/group=232.1.1.1/ietf-cbacc:cbacc"
        )
    );

    // Unknown flow: 404 in both layouts.
    let (text, json) = dorms_report(
        sg(ip("23.212.185.4"), ip("232.1.1.2")),
        server.clone(),
        Some(nginx.ca_path()),
    )
    .await;
    assert!(text.contains("result:    no metadata: "), "{text}");
    assert!(text.contains("HTTP status 404"), "{text}");
    assert_eq!(json["error"]["kind"], "http-status");

    // System roots do not trust the lab CA.
    let (_, json) = dorms_report(
        sg(ip("23.212.185.4"), ip("232.1.1.1")),
        server.clone(),
        None,
    )
    .await;
    assert_eq!(json["error"]["kind"], "tls", "{json:#}");

    // No SRV record.
    let (text, json) = dorms_report(
        sg(ip("23.212.185.5"), ip("232.1.1.1")),
        server,
        Some(nginx.ca_path()),
    )
    .await;
    assert!(text.contains("NXDOMAIN"), "{text}");
    assert_eq!(json["error"]["kind"], "srv");
    assert_eq!(json["steps"][0]["error_kind"], "nxdomain");
}
