//! Compiles the kernel data plane (`bpf/amt_decap.bpf.c`) with clang into
//! `$OUT_DIR/amt_decap.bpf.o`.
//!
//! The BPF object is optional: when clang or the headers (libbpf-dev,
//! linux-libc-dev) are missing or the compile fails, the build still
//! succeeds with an empty object, and the kernel data plane reports
//! "not built: <why>" at run time (the userspace data plane is used).
//!
//! Environment: `AMT_GATEWAY_CLANG` (compiler to use, default `clang`),
//! `AMT_GATEWAY_NO_BPF=1` (do not build the object, e.g. to test the
//! fallback).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/amt_decap.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AMT_GATEWAY_CLANG");
    println!("cargo:rerun-if-env-changed=AMT_GATEWAY_NO_BPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("amt_decap.bpf.o");
    let status = match build(&object) {
        Ok(()) => "built".to_string(),
        Err(why) => {
            // An empty object: the loader reports `why` instead of loading.
            std::fs::write(&object, b"").expect("writing the placeholder BPF object");
            println!(
                "cargo:warning=kernel data plane not built: {why} (the userspace data plane will be used)"
            );
            format!("not built: {why}")
        }
    };
    println!("cargo:rustc-env=AMT_GATEWAY_BPF_STATUS={status}");
}

fn build(object: &PathBuf) -> Result<(), String> {
    if env::var_os("AMT_GATEWAY_NO_BPF").is_some_and(|v| v == "1") {
        return Err("AMT_GATEWAY_NO_BPF=1 was set at build time".into());
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err("the kernel data plane is Linux-only".into());
    }
    let clang = env::var("AMT_GATEWAY_CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps <asm/types.h> in the multiarch directory, which clang
    // does not search for the bpf target.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok("arm") => "arm-linux-gnueabihf",
        Ok("riscv64") => "riscv64-linux-gnu",
        Ok("powerpc64") => "powerpc64le-linux-gnu",
        Ok("s390x") => "s390x-linux-gnu",
        _ => "",
    };
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]);
    if !multiarch.is_empty() {
        cmd.arg(format!("-I/usr/include/{multiarch}"));
    }
    cmd.arg("-c").arg(SOURCE).arg("-o").arg(object);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {clang}: {e} (install clang, libbpf-dev)"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("unknown error");
        return Err(format!("{clang} failed: {first}"));
    }
    Ok(())
}
