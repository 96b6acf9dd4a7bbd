//! microvisor's runner as a library, shared by the `cargo xtask` command line and by the QEMU
//! integration tests in `tests/`: it builds the kernels with bare-metal flags, assembles QEMU
//! command lines, runs machines with a deadline and parses what they print; it also fetches
//! the reference systems (Xen 4.17, Debian's Linux) and compares microvisor with Xen.

pub mod bench;
pub mod conformance;
pub mod debian;
pub mod disk;
pub mod fuzz;
pub mod kernels;
pub mod kv;
pub mod linux;
pub mod linuxbench;
pub mod net;
pub mod netbench;
pub mod plot;
pub mod qemu;
pub mod trace;
pub mod xen;

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().expect("xtask lives one level below the workspace root").to_path_buf()
}

/// The package names of the workspace members, read from the root and member manifests.
pub fn workspace_packages() -> Result<Vec<String>> {
    let root = workspace_root();
    let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
    let manifest = read(&root.join("Cargo.toml"))?;
    let members = manifest
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .ok_or("Cargo.toml: no `members = [...]` list in [workspace]")?
        .0;
    let mut packages = Vec::new();
    for member in members.split(',').map(|m| m.trim().trim_matches('"')).filter(|m| !m.is_empty()) {
        let path = root.join(member).join("Cargo.toml");
        let text = read(&path)?;
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .ok_or_else(|| format!("{}: no package name", path.display()))?;
        packages.push(name.trim_matches('"').to_string());
    }
    Ok(packages)
}

/// Writes `value` as pretty JSON to `dir/name` (creating `dir`) and returns the path.
pub fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(name);
    let json = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(&path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Errors the runner reports to the user, already worded for them.
pub type Result<T> = std::result::Result<T, String>;

#[cfg(test)]
mod tests {
    #[test]
    fn workspace_packages_lists_every_member() {
        let packages = super::workspace_packages().unwrap();
        for expected in [
            "hypercall-abi",
            "kernel-rt",
            "kernel-link",
            "microvisor",
            "pv-guest-kernel",
            "dom0",
            "xtask",
            "tests",
        ] {
            assert!(packages.iter().any(|p| p == expected), "{expected} missing from {packages:?}");
        }
        assert_eq!(packages.len(), 8);
    }
}
