//! Debian packages the reference systems come from (Xen 4.17, Debian's cloud kernel,
//! busybox), fetched with `apt-get download`, unpacked with `dpkg -x` and cached under
//! `target/debian/<package>/` so each is fetched once per checkout.
//!
//! Where apt cannot fetch a package the caller gets an [`Unavailable`] naming the exact command
//! that failed; tests that need the package then skip loudly ([`skip`]), except where
//! `MICROVISOR_REQUIRE_REFERENCE=1` (set by `.ci/run`) makes a missing reference a failure.

use crate::workspace_root;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Why a reference package is not available here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// What could not be had (a package name or an artefact).
    pub what: String,
    /// The command that failed, as a person would type it.
    pub command: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not available: `{}` failed: {}", self.what, self.command, self.reason)
    }
}

impl From<Unavailable> for String {
    fn from(u: Unavailable) -> String {
        u.to_string()
    }
}

/// An unpacked package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// `Version` from the package's control data.
    pub version: String,
    /// The `.deb` file.
    pub deb: PathBuf,
    /// Where its files are unpacked (`root/boot/...`, `root/usr/...`).
    pub root: PathBuf,
}

/// Where fetched packages are cached.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target/debian")
}

/// One fetch at a time in this process (tests fetch from many threads).
static FETCH: Mutex<()> = Mutex::new(());

/// Marker written last into a complete cache entry.
const COMPLETE: &str = ".complete";

/// Fetches and unpacks `name` (once; later calls reuse the cache).
pub fn fetch(name: &str) -> Result<Package, Unavailable> {
    let _one = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join(name);
    if let Some(p) = cached(name, &dir) {
        return Ok(p);
    }
    let fail = |command: String, reason: String| Unavailable {
        what: format!("Debian package {name}"),
        command,
        reason,
    };
    // Each process works in its own scratch directory and renames the result into place, so
    // two processes fetching at once cannot see each other's half-done work.
    let scratch = cache_dir().join(format!(".fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| fail(format!("mkdir -p {}", scratch.display()), e.to_string()))?;
    let unpacked = unpack_into(name, &scratch);
    if let Err((command, reason)) = unpacked {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(fail(command, reason));
    }
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::rename(&scratch, &dir).is_err() {
        // Another process put its copy there first: use that one.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    cached(name, &dir).ok_or_else(|| {
        fail(format!("mv {} {}", scratch.display(), dir.display()), "cache entry incomplete".into())
    })
}

/// Downloads `name` into `scratch`, unpacks it into `scratch/root` and marks the entry
/// complete; on failure, the command that failed and why.
fn unpack_into(name: &str, scratch: &Path) -> Result<(), (String, String)> {
    let download = format!("apt-get download {name}");
    run(Command::new("apt-get").arg("download").arg(name).current_dir(scratch)).map_err(|reason| {
        (
            download.clone(),
            format!("{reason}; if apt's package lists are missing, run `apt-get update` first"),
        )
    })?;
    let deb = std::fs::read_dir(scratch)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        })
        .ok_or_else(|| (download.clone(), "it left no .deb file".to_string()))?;
    let root = scratch.join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))
        .map_err(|reason| (format!("dpkg -x {} {}", deb.display(), root.display()), reason))?;
    let version = control_field(&deb, "Version")
        .map_err(|reason| (format!("dpkg-deb -f {}", deb.display()), reason))?;
    std::fs::write(scratch.join(COMPLETE), format!("{version}\n"))
        .map_err(|e| (format!("write {}", scratch.join(COMPLETE).display()), e.to_string()))
}

/// The cache entry of `name` in `dir`, if complete.
fn cached(name: &str, dir: &Path) -> Option<Package> {
    let version = std::fs::read_to_string(dir.join(COMPLETE)).ok()?.trim().to_string();
    let deb = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))?;
    Some(Package { name: name.to_string(), version, deb, root: dir.join("root") })
}

/// One field of a `.deb`'s control data (`dpkg-deb -f`).
pub fn control_field(deb: &Path, field: &str) -> Result<String, String> {
    let out = Command::new("dpkg-deb").arg("-f").arg(deb).arg(field).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The first package named in a `Depends` field that starts with `prefix`
/// (`linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)` → `linux-image-6.1.0-57-cloud-amd64`).
pub fn dependency_with_prefix(depends: &str, prefix: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with(prefix))
        .map(str::to_string)
}

/// Runs `cmd`, turning a failure into its stderr's last lines.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run it: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    Err(format!("{} ({})", tail.into_iter().rev().collect::<Vec<_>>().join(" / "), out.status))
}

/// Environment variable that turns a skipped reference test into a failure (`.ci/run` sets
/// it: CI can fetch the packages, so there a skip would hide a broken set-up).
pub const REQUIRE_ENV: &str = "MICROVISOR_REQUIRE_REFERENCE";

/// File that collects skip notices during `cargo xtask test`, which prints them at the end
/// (cargo's test harness hides what a passing test prints).
pub fn skip_log() -> PathBuf {
    workspace_root().join("target/skipped-tests.txt")
}

/// Reports loudly that `test` skipped `what` because of `why`: on stderr, and in
/// [`skip_log`] for `cargo xtask test` to repeat. Panics instead when [`REQUIRE_ENV`] is set.
pub fn skip(test: &str, what: &str, why: &dyn fmt::Display) {
    let line = format!("SKIPPED {test}: {what}: {why}");
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{line} ({REQUIRE_ENV}=1 forbids skipping)");
    }
    eprintln!("\n*** {line}\n");
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(skip_log()) {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_kernel_in_the_metapackage_dependency() {
        let d = "linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)";
        assert_eq!(
            dependency_with_prefix(d, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        let d = "initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-9-cloud-amd64";
        assert_eq!(
            dependency_with_prefix(d, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
        assert_eq!(dependency_with_prefix("", "linux-image-"), None);
    }

    #[test]
    fn a_package_apt_cannot_fetch_is_unavailable_with_the_command_named() {
        let u = fetch("microvisor-no-such-package").unwrap_err();
        assert!(u.command.contains("apt-get download microvisor-no-such-package"), "{u}");
        assert!(!cache_dir().join("microvisor-no-such-package").exists());
    }

    #[test]
    fn an_unavailable_package_names_the_command() {
        let u = Unavailable {
            what: "Debian package x".into(),
            command: "apt-get download x".into(),
            reason: "E: no".into(),
        };
        assert_eq!(u.to_string(), "Debian package x is not available: `apt-get download x` failed: E: no");
    }
}
