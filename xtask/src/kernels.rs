//! Builds the kernel binaries: the hypervisor and the PV guests, each with its own bare-metal
//! flags and target directory.
//!
//! Kernels build for `x86_64-unknown-none` (falling back to the host triple with bare-metal
//! flags where that target cannot be installed), always with an explicit `--target`, which keeps
//! `RUSTFLAGS` away from build scripts and proc-macros; the flags cannot live in
//! `.cargo/config.toml` because the fallback triple is also the host's. The hypervisor is linked inside Xen's reserved hole, which rules out the kernel
//! code model; the guests sit in the top 2 GiB like Linux PV kernels.

use crate::{workspace_root, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The target made for kernels: soft-float, no SSE, `panic=abort`, linked by rust-lld.
pub const BARE_TARGET: &str = "x86_64-unknown-none";
/// The fallback where the bare-metal target cannot be installed: the host triple with
/// bare-metal flags. Disabling SSE there prints rust-lang/rust#116344's future-incompatibility
/// warning, so it is only used when it must be.
pub const FALLBACK_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Environment override of the kernels' target (for trying the fallback on purpose).
pub const TARGET_ENV: &str = "MICROVISOR_KERNEL_TARGET";

/// Flags of every kernel: our own crates' warnings are errors (dependencies' lints are capped
/// by cargo), so a new warning fails the build and CI.
const COMMON_RUSTFLAGS: &str = "-D warnings -C no-redzone=yes";

/// Flags of the hypervisor, linked inside Xen's reserved hole (which rules out the kernel code
/// model). SSE is off for microvisor's own code so that no hypercall path can clobber a guest's
/// vector registers: guest FPU state is then saved only on vCPU switches, as Xen (built with
/// `-mno-sse`) does. The bare-metal target is soft-float already; on the fallback the features
/// are turned off by hand. `cargo xtask` checks the linked image for any remaining SSE use
/// (see [`check_hypervisor_image`]).
fn hv_rustflags(target: &str) -> String {
    let sse_off =
        if target == BARE_TARGET { "" } else { " -C target-feature=-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2" };
    format!("{COMMON_RUSTFLAGS} -C relocation-model=pic -C code-model=small{sse_off}")
}

/// Flags of the PV guest kernels (dom0 and domUs), linked at `0xffffffff80000000`.
fn guest_rustflags() -> String {
    format!("{COMMON_RUSTFLAGS} -C relocation-model=static -C code-model=kernel -C force-frame-pointers=yes")
}

/// The target the kernels build for: [`BARE_TARGET`] where it is installed or `rustup` can add
/// it, otherwise [`FALLBACK_TARGET`] (said once on stderr).
pub fn kernel_target() -> Result<&'static str> {
    static CHOSEN: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    if let Some(t) = CHOSEN.get() {
        return Ok(t);
    }
    let chosen = match std::env::var(TARGET_ENV).ok().as_deref() {
        Some(BARE_TARGET) => BARE_TARGET,
        Some(FALLBACK_TARGET) => FALLBACK_TARGET,
        Some(other) => return Err(format!("{TARGET_ENV}={other}: use {BARE_TARGET} or {FALLBACK_TARGET}")),
        None if target_installed(BARE_TARGET) || add_target(BARE_TARGET) => BARE_TARGET,
        None => {
            eprintln!(
                "xtask: the {BARE_TARGET} target is not installed and `rustup target add {BARE_TARGET}` \
                 failed; building the kernels for {FALLBACK_TARGET} instead (expect rust-lang/rust#116344 \
                 warnings about sse2)"
            );
            FALLBACK_TARGET
        }
    };
    Ok(CHOSEN.get_or_init(|| chosen))
}

/// True if the active toolchain has the standard library for `target`.
fn target_installed(target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib").join(target).join("lib").is_dir())
}

/// Tries `rustup target add`; true if the target is there afterwards.
fn add_target(target: &str) -> bool {
    let ok = Command::new("rustup")
        .args(["target", "add", target])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok && target_installed(target)
}

/// The binaries of one build.
#[derive(Clone, Debug)]
pub struct Kernels {
    /// The hypervisor's Multiboot image.
    pub microvisor: PathBuf,
    /// dom0. The guests' paths are their boot copies, without debug info ([`boot_copy`]);
    /// [`Kernels::with_debug_info`] names the ELF files gdb wants.
    pub dom0: PathBuf,
    /// The demo PV domU.
    pub domu: PathBuf,
    /// The test guest (hostile and conformance scenarios, chosen by its command line).
    pub testguest: PathBuf,
}

static BUILT: Mutex<Option<Kernels>> = Mutex::new(None);

/// Builds all kernels once per process (tests call this from many threads).
pub fn build() -> Result<Kernels> {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = built.as_ref() {
        return Ok(k.clone());
    }
    let target = kernel_target()?;
    let (hv, guests) = build_in(&workspace_root().join("target/kernel"), target, true)?;
    let k = Kernels {
        microvisor: hv.join("microvisor"),
        dom0: boot_copy(&guests.join("dom0"))?,
        domu: boot_copy(&guests.join("domu"))?,
        testguest: boot_copy(&guests.join("testguest"))?,
    };
    check_hypervisor_image(&k.microvisor)?;
    *built = Some(k.clone());
    Ok(k)
}

/// Where [`check_fallback`] builds: a target directory of its own, so that neither build
/// undoes the other's.
const FALLBACK_DIR: &str = "target/kernel-fallback";

/// Builds every kernel for [`FALLBACK_TARGET`] as well and checks the hypervisor's image, so
/// that the fallback (which nothing boots where the bare-metal target is installed) cannot
/// break unnoticed; `cargo xtask test` runs it. Like every kernel build it fails on a warning,
/// rust-lang/rust#116344's SSE notice excepted ([`FUTURE_SSE_NOTICE`]). Nothing to do where the
/// main build is the fallback already.
pub fn check_fallback() -> Result<()> {
    if kernel_target()? == FALLBACK_TARGET {
        return Ok(());
    }
    // Without the debug info the release profile keeps for gdb: the same instructions, for
    // about 15% less build time and half the disk.
    let (hv, _) = build_in(&workspace_root().join(FALLBACK_DIR), FALLBACK_TARGET, false)?;
    check_hypervisor_image(&hv.join("microvisor"))
}

/// Builds the hypervisor and the guest kernels for `target` under `dir`; the release folders
/// of the hypervisor and of the guests.
fn build_in(dir: &Path, target: &str, debug_info: bool) -> Result<(PathBuf, PathBuf)> {
    let root = workspace_root();
    let (hv_dir, guest_dir) = (dir.join("hv"), dir.join("guest"));
    let hv = ["-p", "microvisor", "--bin", "microvisor"];
    cargo_kernel("build", &root, &hv_dir, target, &hv_rustflags(target), debug_info, &hv)?;
    let guests = ["-p", "dom0", "-p", "pv-guest-kernel", "--bins"];
    cargo_kernel("build", &root, &guest_dir, target, &guest_rustflags(), debug_info, &guests)?;
    Ok((hv_dir.join(target).join("release"), guest_dir.join(target).join("release")))
}

/// The folder (under each guest's release folder) of the copies QEMU loads.
const BOOT_DIR: &str = "boot";

/// The copy of guest kernel `elf` that machines load: its debug info stripped (`strip
/// --strip-debug`, from binutils, which the host toolchain's C linker brings). The release
/// profile keeps debug info for gdb, which makes the test guest about 12 MiB; QEMU holds every
/// module in guest RAM until the hypervisor has built the domains, so a machine of sixteen
/// domains would spend a third of its memory on debug info. Symbols, notes and every loaded
/// byte stay as built. Written under a temporary name and renamed, so a machine of another
/// process never reads half a file.
fn boot_copy(elf: &Path) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (elf.parent(), elf.file_name()) else {
        return Err(format!("{}: not a file path", elf.display()));
    };
    let dir = dir.join(BOOT_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = dir.join(name);
    let tmp = dir.join(format!("{}.{}", name.to_string_lossy(), std::process::id()));
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(elf)
        .status()
        .map_err(|e| format!("cannot run `strip` (binutils) for {}: {e}", elf.display()))?;
    if !status.success() {
        return Err(format!("`strip --strip-debug -o {} {}` failed", tmp.display(), elf.display()));
    }
    std::fs::rename(&tmp, &copy).map_err(|e| format!("{}: {e}", copy.display()))?;
    Ok(copy)
}

impl Kernels {
    /// The guest kernel with its debug info (for gdb) of a boot copy in this build.
    pub fn with_debug_info(boot: &Path) -> PathBuf {
        match (boot.parent(), boot.file_name()) {
            (Some(dir), Some(name)) if dir.ends_with(BOOT_DIR) => {
                dir.parent().map_or_else(|| boot.to_path_buf(), |d| d.join(name))
            }
            _ => boot.to_path_buf(),
        }
    }
}

/// Checks that the production configurations of the hypervisor and dom0 (each without its
/// `test-aids` feature) compile for the kernel target with the kernels' flags, so with no
/// warning. `cargo check` into the kernels' own target folders: the dependencies' check
/// artifacts are shared with nothing the test machines boot, and nothing is linked.
pub fn check_production() -> Result<()> {
    let root = workspace_root();
    let target = kernel_target()?;
    let hv = ["-p", "microvisor", "--bin", "microvisor", "--no-default-features"];
    cargo_kernel("check", &root, &root.join("target/kernel/hv"), target, &hv_rustflags(target), true, &hv)?;
    let dom0 = ["-p", "dom0", "--bins", "--no-default-features"];
    cargo_kernel("check", &root, &root.join("target/kernel/guest"), target, &guest_rustflags(), true, &dom0)
}

/// The one warning a kernel build may print: on [`FALLBACK_TARGET`], turning SSE off draws
/// rust-lang/rust#116344's future-incompatibility notice (the reason [`BARE_TARGET`] is
/// preferred), which `-D warnings` does not make an error.
const FUTURE_SSE_NOTICE: &str = "warning: target feature `sse";

/// `cargo <verb> --release` of kernel crates for `target` with `rustflags` (without the release
/// profile's debug info unless `debug_info`). Cargo's messages are passed through as they come
/// and read: our crates' own warnings are errors already (`-D warnings`), and any other warning
/// (cargo's own, or a future-incompatibility notice) fails the command as well, so CI sees each
/// new one.
fn cargo_kernel(
    verb: &str,
    root: &Path,
    target_dir: &Path,
    target: &str,
    rustflags: &str,
    debug_info: bool,
    what: &[&str],
) -> Result<()> {
    use std::io::BufRead;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    if !debug_info {
        cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    }
    let mut child = cmd
        .current_dir(root)
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([verb, "--release", "--target", target, "--target-dir"])
        .arg(target_dir)
        .args(what)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut warnings = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines().map_while(std::io::Result::ok) {
            eprintln!("{line}");
            if let Some(w) = unexpected_warning(&line, target) {
                warnings.push(w.to_string());
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo {verb} {} failed", what.join(" ")));
    }
    if !warnings.is_empty() {
        return Err(format!(
            "cargo {verb} {} for {target} printed warnings (kernel builds must be free of them):\n  {}",
            what.join(" "),
            warnings.join("\n  ")
        ));
    }
    Ok(())
}

/// `line` of a kernel build for `target`, if it is a warning the build must not have: any
/// `warning:` but cargo's per-crate count and, on the fallback, the SSE notice.
fn unexpected_warning<'a>(line: &'a str, target: &str) -> Option<&'a str> {
    let line = line.trim_end();
    // "warning: `dom0` (bin "dom0") generated 1 warning": the count of warnings shown already.
    let counted = line
        .split_once(") generated ")
        .is_some_and(|(_, n)| n.split(' ').next().is_some_and(|n| n.parse::<u32>().is_ok()));
    let allowed = target == FALLBACK_TARGET && line.starts_with(FUTURE_SSE_NOTICE);
    (line.starts_with("warning:") && !counted && !allowed).then_some(line)
}

/// Checks what the hypervisor's link must guarantee:
/// * Multiboot's a.out kludge loads the file as one blob, so every loadable segment must sit at
///   the same (file offset − physical address);
/// * no instruction touches an SSE/x87 register outside the precompiled formatting and string
///   routines of libcore/liballoc, so hypercalls never clobber guest FPU state. (microvisor's
///   own code is built without SSE; the core saves the guest's registers before it formats
///   anything — `Hypervisor::fpu_save_live` — which is the only way into those routines.)
pub fn check_hypervisor_image(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let segs = elf_load_segments(&bytes).ok_or_else(|| format!("{}: not an ELF64 file", path.display()))?;
    let deltas: Vec<i128> =
        segs.iter().filter(|s| s.filesz > 0).map(|s| s.offset as i128 - s.paddr as i128).collect();
    if deltas.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!(
            "{}: loadable segments are not laid out as one flat image (offset - paddr differs: {segs:x?})",
            path.display()
        ));
    }
    let sse: Vec<String> =
        sse_users(path)?.into_iter().filter(|f| !SSE_ALLOWED.iter().any(|a| f.contains(a))).collect();
    if !sse.is_empty() {
        return Err(format!(
            "{}: these functions use SSE/x87 registers, which would clobber guest state on hypercalls:\n  {}",
            path.display(),
            sse.join("\n  ")
        ));
    }
    Ok(())
}

/// Mangled-name fragments of the precompiled routines allowed to use SSE: formatting, string
/// handling and the panic path (which never returns to a guest). Only the fallback target's
/// precompiled libraries have any (`alloc::str`'s case mapping among them); the bare-metal
/// target's are soft-float.
const SSE_ALLOWED: &[&str] =
    &["4core3fmt", "5alloc3fmt", "4core3str", "5alloc3str", "5alloc6string", "4core5panic"];

/// A loadable ELF segment.
#[derive(Debug)]
pub struct LoadSegment {
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// The `PT_LOAD` segments of an ELF64 little-endian file.
pub fn elf_load_segments(b: &[u8]) -> Option<Vec<LoadSegment>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    if b.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    let mut out = Vec::new();
    for i in 0..phnum {
        let p = phoff + i * phentsize;
        if u32_at(p)? == 1 {
            out.push(LoadSegment {
                offset: u64_at(p + 8)?,
                vaddr: u64_at(p + 16)?,
                paddr: u64_at(p + 24)?,
                filesz: u64_at(p + 32)?,
                memsz: u64_at(p + 40)?,
            });
        }
    }
    Some(out)
}

/// Functions of the image whose disassembly names an SSE or x87 register.
fn sse_users(path: &Path) -> Result<Vec<String>> {
    let out = match Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(path).output() {
        Ok(o) if o.status.success() => o,
        // Without binutils the check cannot run; the build itself is still valid.
        _ => return Ok(Vec::new()),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut current = String::new();
    let mut users = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")).map(|(_, n)| n) {
            current = name.to_string();
        } else if (line.contains("%xmm")
            || line.contains("%ymm")
            || line.contains("%mm")
            || line.contains("%st"))
            && !line.contains("fxsave")
            && !line.contains("fxrstor")
            && users.last() != Some(&current)
        {
            users.push(current.clone());
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fallbacks_sse_notice_and_cargos_counts_are_allowed() {
        let sse = "warning: target feature `sse2` must be enabled to ensure that the ABI of the current \
                   target can be implemented correctly";
        assert_eq!(unexpected_warning(sse, FALLBACK_TARGET), None);
        assert_eq!(unexpected_warning(sse, BARE_TARGET), Some(sse));
        for counted in [
            "warning: `microvisor` (bin \"microvisor\") generated 1 warning",
            "warning: `dom0` (bin \"dom0\") generated 3 warnings (2 duplicates)",
        ] {
            assert_eq!(unexpected_warning(counted, FALLBACK_TARGET), None, "{counted}");
        }
        for bad in [
            "warning: unused import: `core::fmt`",
            "warning: unused manifest key: package.foo",
            "warning: the following packages contain code that will be rejected by a future version of Rust: x",
            "warning: `dom0` (bin \"dom0\") generated lots of noise",
        ] {
            assert_eq!(unexpected_warning(bad, FALLBACK_TARGET), Some(bad), "{bad}");
        }
        for quiet in ["   Compiling dom0 v0.1.0", "  = note: for more information, see issue #116344", ""] {
            assert_eq!(unexpected_warning(quiet, BARE_TARGET), None, "{quiet}");
        }
    }
}
