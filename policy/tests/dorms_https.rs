//! DormsClient against BIND (SRV, A) and nginx (HTTPS with a test CA) on
//! loopback.

use std::time::{Duration, Instant};

use ingest_policy::admission::BitrateOrigin;
use ingest_policy::dns::{DnsConfig, DnsFailure};
use ingest_policy::dorms::{
    DormsClient, DormsConfig, DormsError, DormsStep, MetadataError, MetadataLayout, RateField,
};
use ingest_test_support::{Named, Nginx, TempDir, Zone, free_port, make_pki};
use ingest_types::SourceGroup;

const HOST_META: &str = "<?xml version='1.0' encoding='UTF-8'?>
<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>
  <Link rel='restconf' href='/restconf'/>
</XRD>
";

fn sg(s: &str, g: &str) -> SourceGroup {
    SourceGroup::new(s.parse().unwrap(), g.parse().unwrap()).unwrap()
}

fn old_path(s: &str, g: &str) -> String {
    format!("restconf/data/ietf-dorms:metadata/sender={s}/group={g}/ietf-cbacc:cbacc")
}

fn new_path(s: &str, g: &str) -> String {
    format!("restconf/data/ietf-dorms:dorms/metadata/sender={s}/group={g}/ietf-cbacc:cbacc")
}

fn count(nginx: &Nginx, needle: &str) -> usize {
    nginx
        .requests()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test]
async fn dorms_against_nginx_and_bind() {
    let s = "23.212.185.4";
    let big = format!(
        "{}{{\"ietf-cbacc:cbacc\":{{\"max-bits-per-second\":1}}}}",
        " ".repeat(10_000)
    );
    let files: Vec<(String, String)> = vec![
        (".well-known/host-meta".into(), HOST_META.into()),
        (
            old_path(s, "232.1.1.1"),
            r#"{"ietf-cbacc:cbacc":{"max-bits-per-second":"3000000","priority":"300"}}"#.into(),
        ),
        (
            new_path(s, "232.1.1.3"),
            r#"{"ietf-cbacc:cbacc":{"max-speed":2500,"unknown-leaf":[1,2]}}"#.into(),
        ),
        (old_path(s, "232.1.1.4"), r#"{"ietf-cbacc:cbacc": "#.into()),
        (old_path(s, "232.1.1.5"), big),
        (old_path(s, "232.1.1.7"), " ".repeat(300)),
        (
            old_path("2001:db8::1", "ff3e::8000:1"),
            r#"{"ietf-cbacc:cbacc":{"max-bits-per-second":4000}}"#.into(),
        ),
        (
            old_path("23.212.185.13", "232.1.1.1"),
            r#"{"ietf-cbacc:cbacc":{"max-bits-per-second":5000}}"#.into(),
        ),
    ];
    let file_refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let nginx = Nginx::start(
        "dorms.lab.test",
        &file_refs,
        r#"
        location ~ "group=232\.1\.1\.1/" { add_header Cache-Control "max-age=120"; }
        location ~ "group=232\.1\.1\.6/" { return 500; }
        location ~ "group=232\.1\.1\.7/" { limit_rate 1; }
"#,
    );
    let port = nginx.port;
    let closed_port = free_port();
    let named = Named::start(
        &[
            Zone {
                origin: "185.212.23.in-addr.arpa.".into(),
                records: format!(
                    "_dorms._tcp.4 IN SRV 0 1 {port} dorms.lab.test.\n\
                     _dorms._tcp.13 IN SRV 0 1 {closed_port} dead.lab.test.\n\
                     _dorms._tcp.13 IN SRV 10 1 {port} dorms.lab.test.\n"
                ),
            },
            Zone {
                origin: "lab.test.".into(),
                records: "ns IN A 127.0.0.1\ndorms IN A 127.0.0.1\ndead IN A 127.0.0.1\n".into(),
            },
            Zone {
                origin: "8.b.d.0.1.0.0.2.ip6.arpa.".into(),
                records: format!(
                    "_dorms._tcp.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN SRV 0 1 {port} dorms.lab.test.\n"
                ),
            },
        ],
        &[],
    );

    let mut dns = DnsConfig::new(vec![named.addr]);
    dns.timeout = Duration::from_secs(2);
    let mut config = DormsConfig::new(dns);
    config.ca_bundle = Some(nginx.ca_path());
    config.request_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    config.retries = 1;
    config.retry_backoff = Duration::from_millis(50);
    config.max_body_bytes = 4096;
    config.rng_seed = Some(1);
    let client = DormsClient::new(config.clone()).unwrap();

    // Draft -01 layout, strings, Cache-Control max-age=120.
    let flow = sg(s, "232.1.1.1");
    let t0 = Instant::now();
    let m = client.flow_metadata(flow).await.unwrap();
    assert_eq!(m.max_bitrate, 3_000_000);
    assert_eq!(m.priority, 300);
    assert_eq!(m.rate_field, RateField::MaxBitsPerSecond);
    let requests_before = nginx.requests().len();
    assert_eq!(client.flow_metadata(flow).await.unwrap(), m);
    assert_eq!(nginx.requests().len(), requests_before, "served from cache");
    assert!(client.cached(flow, t0 + Duration::from_secs(100)).is_some());
    assert!(client.cached(flow, t0 + Duration::from_secs(125)).is_none());
    // host-meta fetched once (root cached).
    assert_eq!(count(&nginx, "/.well-known/host-meta "), 1);

    // 404 in both layouts: no metadata; blocked without default.
    let missing = sg(s, "232.1.1.2");
    match client.flow_metadata(missing).await {
        Err(DormsError::HttpStatus { status: 404, url }) => {
            assert!(url.contains("ietf-dorms:dorms/metadata"), "{url}")
        }
        other => panic!("{other:?}"),
    }
    let rate = client.flow_bitrate(missing).await;
    assert_eq!(rate.bitrate, None);
    assert_eq!(rate.origin, BitrateOrigin::Unknown);
    let mut with_default = config.clone();
    with_default.default_bitrate = Some(12_000_000);
    let client_default = DormsClient::new(with_default).unwrap();
    let rate = client_default.flow_bitrate(missing).await;
    assert_eq!(rate.bitrate, Some(12_000_000));
    assert_eq!(rate.origin, BitrateOrigin::Default);
    assert!(matches!(
        rate.error,
        Some(DormsError::HttpStatus { status: 404, .. })
    ));
    let rate = client_default.flow_bitrate(flow).await;
    assert_eq!(
        (rate.bitrate, rate.origin),
        (Some(3_000_000), BitrateOrigin::Dorms)
    );

    // Newer layout with max-speed in kbit/s.
    let m = client.flow_metadata(sg(s, "232.1.1.3")).await.unwrap();
    assert_eq!(m.max_bitrate, 2_500_000);
    assert_eq!(m.rate_field, RateField::MaxSpeedKbps);

    // Invalid JSON.
    assert!(matches!(
        client.flow_metadata(sg(s, "232.1.1.4")).await,
        Err(DormsError::Metadata {
            error: MetadataError::InvalidJson(_),
            ..
        })
    ));

    // Body over the limit.
    assert!(matches!(
        client.flow_metadata(sg(s, "232.1.1.5")).await,
        Err(DormsError::BodyTooLarge { limit: 4096, .. })
    ));

    // 500: retried once, then reported.
    assert!(matches!(
        client.flow_metadata(sg(s, "232.1.1.6")).await,
        Err(DormsError::HttpStatus { status: 500, .. })
    ));
    assert_eq!(count(&nginx, "group=232.1.1.6/"), 2);

    // Slow body: timeout.
    let started = Instant::now();
    assert!(matches!(
        client.flow_metadata(sg(s, "232.1.1.7")).await,
        Err(DormsError::Timeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(10));

    // IPv6 keys, percent-encoded per RFC 8040.
    let m = client
        .flow_metadata(sg("2001:db8::1", "ff3e::8000:1"))
        .await
        .unwrap();
    assert_eq!(m.max_bitrate, 4000);
    assert_eq!(
        count(&nginx, "sender=2001%3Adb8%3A%3A1/group=ff3e%3A%3A8000%3A1"),
        1
    );

    // No SRV record for the source.
    match client.flow_metadata(sg("23.212.185.8", "232.1.1.1")).await {
        Err(DormsError::Srv { failure, name }) => {
            assert_eq!(failure, DnsFailure::NxDomain);
            assert_eq!(name, "_dorms._tcp.8.185.212.23.in-addr.arpa.");
        }
        other => panic!("{other:?}"),
    }

    // First SRV target refuses connections; the next priority is used.
    let m = client
        .flow_metadata(sg("23.212.185.13", "232.1.1.1"))
        .await
        .unwrap();
    assert_eq!(m.max_bitrate, 5000);

    // The same fetch, traced: both SRV targets in order, the dead one's
    // host-meta failure, then host-meta (root cached) and metadata of the
    // second; the URL of the rate is reported.
    let (result, steps) = client.fetch_traced(sg("23.212.185.13", "232.1.1.1")).await;
    assert_eq!(result.unwrap().0.max_bitrate, 5000);
    match steps.as_slice() {
        [
            DormsStep::Srv {
                name,
                result: Ok(targets),
            },
            DormsStep::HostMeta {
                url: dead_url,
                result: Err(DormsError::Transport { .. }),
                cached: false,
            },
            DormsStep::HostMeta {
                result: Ok(root),
                cached: true,
                ..
            },
            DormsStep::Metadata {
                url,
                layout: MetadataLayout::Draft01,
                result: Ok(found),
            },
        ] => {
            assert_eq!(name, "_dorms._tcp.13.185.212.23.in-addr.arpa.");
            let order: Vec<&str> = targets.iter().map(|t| t.target.as_str()).collect();
            assert_eq!(order, ["dead.lab.test", "dorms.lab.test"]);
            assert_eq!(
                dead_url,
                &format!("https://dead.lab.test:{closed_port}/.well-known/host-meta")
            );
            assert_eq!(root, &format!("https://dorms.lab.test:{port}/restconf/"));
            assert_eq!(
                url,
                &format!(
                    "{root}{}",
                    old_path("23.212.185.13", "232.1.1.1").trim_start_matches("restconf/")
                )
            );
            assert_eq!(found.max_bitrate, 5000);
        }
        other => panic!("{other:#?}"),
    }
    let rate = client.flow_bitrate(sg("23.212.185.13", "232.1.1.1")).await;
    assert!(
        rate.url
            .as_deref()
            .is_some_and(|u| u.ends_with("sender=23.212.185.13/group=232.1.1.1/ietf-cbacc:cbacc")),
        "{rate:?}"
    );

    // A client trusting another CA only: TLS error, not retried.
    let other_ca = TempDir::new("other-ca");
    make_pki(other_ca.path(), "dorms.lab.test");
    let mut wrong_ca = config.clone();
    wrong_ca.ca_bundle = Some(other_ca.path().join("ca.crt"));
    let client_wrong = DormsClient::new(wrong_ca).unwrap();
    match client_wrong.flow_metadata(flow).await {
        Err(DormsError::Tls { detail, .. }) => {
            assert!(detail.to_lowercase().contains("certificate"), "{detail}")
        }
        other => panic!("{other:?}"),
    }

    // Bad CA bundle path is a configuration error.
    let mut bad = config.clone();
    bad.ca_bundle = Some(other_ca.path().join("nope.pem"));
    assert!(matches!(DormsClient::new(bad), Err(DormsError::Config(_))));
    drop(named);
    drop(nginx);
}
