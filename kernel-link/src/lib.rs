//! The link arguments of our freestanding kernels (the hypervisor and the PV guests), shared by
//! their build scripts so the three binaries cannot drift apart.
//!
//! Kernels build for `x86_64-unknown-none` where that target is installed, and for
//! `x86_64-unknown-linux-gnu` as the fallback (see `xtask/src/kernels.rs`). The first links
//! with rust-lld in its `ld` flavour, which takes linker arguments as they are; the second
//! links through the C compiler driver, which needs them wrapped in `-Wl,` and told not to add
//! start files or a C library.

use std::path::Path;

/// The `ld` arguments of a static kernel image laid out by the linker script `script`.
pub fn ld_args(script: &Path) -> Vec<String> {
    vec![
        "-static".into(),
        // The hypervisor's position-independent code (it is linked in Xen's hole, outside the
        // kernel code model's reach) must still be linked at its fixed address: rustc makes a
        // static PIE of `pic` code on the bare-metal target unless told otherwise.
        "--no-pie".into(),
        "--no-dynamic-linker".into(),
        "-z".into(),
        "max-page-size=0x1000".into(),
        "--build-id=none".into(),
        "--gc-sections".into(),
        "-T".into(),
        script.display().to_string(),
    ]
}

/// The same arguments for `target`'s linker: raw for the bare-metal target, through the C
/// compiler driver otherwise.
pub fn link_args(target: &str, script: &Path) -> Vec<String> {
    let ld = ld_args(script);
    if target.ends_with("-none") {
        return ld;
    }
    let mut driver = vec!["-nostartfiles".to_string(), "-nostdlib".to_string(), "-static".to_string()];
    // `-z` takes its value as the next argument; the driver needs the pair in one `-Wl,`.
    let mut it = ld.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-pie" => driver.push("-no-pie".into()),
            "-z" | "-T" => driver.push(format!("-Wl,{a},{}", it.next().expect("flag has a value"))),
            _ => driver.push(format!("-Wl,{a}")),
        }
    }
    driver
}

/// Called from a kernel crate's build script: links its binaries (not its host-tested
/// library) with the linker script at `script`.
pub fn emit(script: &Path) {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rerun-if-changed={}", script.display());
    for arg in link_args(&target, script) {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_form_wraps_each_ld_argument() {
        let s = Path::new("/k/guest.ld");
        assert_eq!(
            link_args("x86_64-unknown-linux-gnu", s),
            [
                "-nostartfiles",
                "-nostdlib",
                "-static",
                "-no-pie",
                "-Wl,--no-dynamic-linker",
                "-Wl,-z,max-page-size=0x1000",
                "-Wl,--build-id=none",
                "-Wl,--gc-sections",
                "-Wl,-T,/k/guest.ld"
            ]
        );
        assert_eq!(link_args("x86_64-unknown-none", s), ld_args(s));
        assert_eq!(ld_args(s).last().map(String::as_str), Some("/k/guest.ld"));
    }
}
