//! Disk images for the machines: the one `cargo xtask run` gives the demo domU
//! (`target/disk.img`), fresh scratch images for the tests and the benchmark (one per machine,
//! since QEMU locks an image it writes), the prepared image with known content, and the
//! patterns the test guest writes — computed here exactly as the guest computes them, so a
//! test can check the image file on the host after QEMU has exited.

use crate::qemu::Machine;
use crate::{workspace_root, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of `target/disk.img` when `cargo xtask run` creates it.
pub const RUN_DISK_BYTES: u64 = 64 << 20;
/// Sector size of the images (blkif's unit).
pub const SECTOR: u64 = 512;

/// Creates a sparse image of `bytes` at `path` unless a file is already there.
pub fn ensure_image(path: &Path, bytes: u64) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A new, zeroed (sparse) image of `bytes` under `target/disks/`, unique to this process
/// and call. Images left by processes that have exited are removed first (a test may read
/// its image after QEMU exits, so nothing is removed while its process lives).
pub fn scratch_image(tag: &str, bytes: u64) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = workspace_root().join("target/disks");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    remove_stale(&dir);
    let path = dir.join(format!("{tag}-{}-{}.img", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A scratch image whose blocks are all written (zeros), for benchmarks: in a sparse file the
/// first write to each block also pays for the host file system's allocation, which would
/// charge whichever benchmark writes first.
pub fn allocated_image(tag: &str, bytes: u64) -> Result<PathBuf> {
    use std::io::Write;
    let path = scratch_image(tag, bytes)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(|e| format!("{}: {e}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Removes `<tag>-<pid>-<n>.img` files of processes that no longer run.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid =
            name.strip_suffix(".img").and_then(|n| n.rsplit('-').nth(1)).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Sector `s` of the prepared image (the test guest's `blk-image` scenario expects exactly
/// this): a text header naming the sector, then the byte `s % 251`.
pub fn image_sector(s: u64) -> [u8; SECTOR as usize] {
    let mut out = [(s % 251) as u8; SECTOR as usize];
    let head = format!("MICROVISOR-IMAGE sector={s:010}\n");
    out[..head.len()].copy_from_slice(head.as_bytes());
    out
}

/// Writes a prepared image of `sectors` sectors at `path`.
pub fn prepared_image(path: &Path, sectors: u64) -> Result<()> {
    let mut data = Vec::with_capacity((sectors * SECTOR) as usize);
    for s in 0..sectors {
        data.extend_from_slice(&image_sector(s));
    }
    std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))
}

/// Word `i` (of 64) of sector `s` in the test guest's `blk-pattern` with `seed`.
pub fn pattern_word(seed: u64, s: u64, i: u64) -> u64 {
    (s ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i)
}

/// The disk benchmarks' domU/dom0 ratios of the medians (`blk.<kind>.domU` over
/// `blk.<kind>.dom0`), one line each, for the kinds both sides reported.
pub fn blk_ratios(results: &[crate::bench::BenchResult]) -> String {
    let median = |name: String| results.iter().find(|r| r.name == name).map(|r| r.median);
    let mut out = String::new();
    for kind in ["seqread", "seqwrite", "randread4k"] {
        if let (Some(d0), Some(du)) = (median(format!("blk.{kind}.dom0")), median(format!("blk.{kind}.domU")))
        {
            if d0 > 0 {
                out += &format!("blk.{kind}: domU/dom0 = {:.2} ({du} / {d0})\n", du as f64 / d0 as f64);
            }
        }
    }
    out
}

impl Machine {
    /// Attaches `disk` as the next virtio-blk device and has dom0 serve it to `domain` (a
    /// boot module's `name=`, or a domain id) as a Xen vbd.
    pub fn with_vbd(mut self, disk: &Path, domain: &str) -> Machine {
        self.disks.push(disk.to_path_buf());
        let vbd = format!("vbd={domain}");
        if let Some(d0) = self.modules.first_mut() {
            d0.args = match d0.args.find("vbd=") {
                Some(at) => {
                    // Extend an existing list.
                    let end = d0.args[at..].find(' ').map_or(d0.args.len(), |e| at + e);
                    format!("{},{domain}{}", &d0.args[..end], &d0.args[end..])
                }
                None if d0.args.contains(" -- ") => format!("{} {vbd}", d0.args),
                None => format!("{} -- {vbd}", d0.args),
            };
        }
        self
    }

    /// Appends options to dom0's command line.
    pub fn dom0_options(mut self, opts: &str) -> Machine {
        if let Some(d0) = self.modules.first_mut() {
            d0.args = if d0.args.contains(" -- ") {
                format!("{} {opts}", d0.args)
            } else {
                format!("{} -- {opts}", d0.args)
            };
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Module;

    fn machine(dom0_args: &str) -> Machine {
        let p = Path::new("/x");
        let mut m = Machine::with_hypervisor(p, "");
        m.modules = vec![Module::new(p, dom0_args)];
        m.memory_mib = 64;
        m
    }

    #[test]
    fn vbds_extend_dom0s_command_line() {
        let m = machine("name=dom0 mem=64M").with_vbd(Path::new("/a.img"), "domU");
        assert_eq!(m.modules[0].args, "name=dom0 mem=64M -- vbd=domU");
        let m = m.with_vbd(Path::new("/b.img"), "2").dom0_options("blktest=1");
        assert_eq!(m.modules[0].args, "name=dom0 mem=64M -- vbd=domU,2 blktest=1");
        assert_eq!(m.disks.len(), 2);
        let m = machine("name=dom0 mem=64M -- steps=0").with_vbd(Path::new("/a.img"), "tg");
        assert_eq!(m.modules[0].args, "name=dom0 mem=64M -- steps=0 vbd=tg");
    }

    #[test]
    fn ratios_of_medians() {
        let r = |name: &str, median| crate::bench::BenchResult {
            name: name.into(),
            unit: "MiB/s".into(),
            n: 1,
            min: 1,
            median,
            p99: 1,
            mode: "wall".into(),
            system: "microvisor".into(),
        };
        let out =
            blk_ratios(&[r("blk.seqread.dom0", 400), r("blk.seqread.domU", 300), r("blk.seqwrite.dom0", 9)]);
        assert_eq!(out, "blk.seqread: domU/dom0 = 0.75 (300 / 400)\n");
    }

    #[test]
    fn images() {
        let p = scratch_image("unit", 4096).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
        prepared_image(&p, 3).unwrap();
        let d = std::fs::read(&p).unwrap();
        assert_eq!(&d[512..512 + 34], b"MICROVISOR-IMAGE sector=0000000001");
        assert_eq!(d[1535], 2);
        std::fs::remove_file(&p).unwrap();
        assert_ne!(pattern_word(1, 2, 3), pattern_word(1, 2, 4));
    }
}
