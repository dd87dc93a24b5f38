//! The lab's containerlab topology file (YAML):
//! `sample_network::topology::Topology::parse` and the netns plan built
//! from it.
//!
//! Asserts: no panic; a parsed topology yields a plan.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sample_network::topology::Topology;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(topology) = Topology::parse(text, Path::new("/nonexistent/lab.clab.yml")) {
        let _ = topology.plan();
    }
});
