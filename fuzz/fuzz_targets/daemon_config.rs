//! The daemon's TOML config file (`/etc/frr-ingest/frr-ingestd.toml`):
//! `frr_bridge::config::Config::from_toml` then `validate` and the derived
//! settings (join source, static relay map, socket mode, policy engine).
//!
//! Asserts: no panic; a config that parses prints (`to_toml`) to text that
//! parses again and prints the same (a fixed point); a valid config's
//! relay map answers lookups.
#![no_main]

use std::net::IpAddr;
use std::path::Path;

use frr_bridge::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, Path::new("fuzz.toml")) else {
        return;
    };
    let valid = config.validate().is_ok();
    let _ = config.join_source();
    let _ = config.socket_mode();
    let _ = config.policy.engine_config(7);
    if let Ok(map) = config.relay_map() {
        for source in ["198.51.100.4", "2001:db8:100::4", "0.0.0.0"] {
            let _ = map.lookup(source.parse::<IpAddr>().unwrap());
        }
    } else {
        assert!(!valid, "validate accepted a config whose relay map fails");
    }
    let printed = config.to_toml();
    let again = Config::from_toml(&printed, Path::new("printed.toml"))
        .unwrap_or_else(|e| panic!("own output does not parse: {e}\n{printed}"));
    assert_eq!(again.to_toml(), printed, "to_toml is not a fixed point");
    if valid {
        assert!(
            again.validate().is_ok(),
            "printing made a valid config invalid"
        );
    }
});
