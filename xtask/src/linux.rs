//! Linux artefacts for PV guests, from Debian's packages: the `vmlinux` ELF inside the cloud
//! kernel's bzImage (whose payload is LZ4 today; gzip, xz and zstd are handled the same way),
//! an initramfs (cpio newc) holding busybox, the kernel's own modules and an init script, an
//! ext4 disk image holding a known file, and reading a file back out of such an image.
//!
//! A bzImage keeps its compressed kernel at `payload_offset`/`payload_length` in the setup
//! header (boot protocol 2.08+). Every format but gzip is followed by the uncompressed size as
//! 4 little-endian bytes (the kernel's `size_append`); gzip carries its own in its trailer.

use crate::debian::{self, Unavailable};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use hypercall_abi::io::xs_wire::{XsdSockmsgType, RELEASE_DOMAIN};

/// Decompresses a gzip stream.
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).map_err(|e| format!("gzip: {e}"))?;
    Ok(out)
}

/// The compression a payload uses, from its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    /// LZ4's legacy frame (`lz4 -l`), the only LZ4 framing the kernel's decompressor reads.
    Lz4Legacy,
    Xz,
    Zstd,
}

impl Compression {
    /// Recognises a payload by its first bytes.
    pub fn detect(b: &[u8]) -> Option<Compression> {
        if b.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if b.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Some(Compression::Lz4Legacy)
        } else if b.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Magic number of an LZ4 legacy frame.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Each legacy-frame block decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Decompresses a whole LZ4 legacy-frame stream: the magic, then blocks each preceded by its
/// compressed size. A "size" equal to the magic starts a concatenated stream; input too
/// short for the block it announces ends the stream (that is where the kernel's size trailer
/// sits).
pub fn lz4_legacy(b: &[u8]) -> Result<Vec<u8>, String> {
    let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])));
    if u32_at(0) != Some(LZ4_LEGACY_MAGIC) {
        return Err("lz4: no legacy-frame magic".into());
    }
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut at = 4;
    while let Some(size) = u32_at(at) {
        if size == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let Some(input) = b.get(at + 4..at + 4 + size as usize) else { break };
        let n = lz4_flex::block::decompress_into(input, &mut block)
            .map_err(|e| format!("lz4: block at offset {at}: {e}"))?;
        out.extend_from_slice(&block[..n]);
        at += 4 + size as usize;
    }
    if out.is_empty() {
        return Err("lz4: no complete block".into());
    }
    Ok(out)
}

/// Decompresses `b` as `c`. For the formats the kernel appends a size to, `b` may carry those 4
/// bytes after the stream; they are not part of it.
pub fn decompress(c: Compression, b: &[u8]) -> Result<Vec<u8>, String> {
    match c {
        Compression::Gzip => gunzip(b),
        Compression::Lz4Legacy => lz4_legacy(b),
        Compression::Xz => {
            let mut out = Vec::new();
            // The size trailer would read as stream padding of the wrong length: leave it out.
            let stream = b.get(..b.len().saturating_sub(4)).unwrap_or(b);
            let mut input = std::io::BufReader::new(stream);
            lzma_rs::xz_decompress(&mut input, &mut out)
                .or_else(|_| {
                    out.clear();
                    lzma_rs::xz_decompress(&mut std::io::BufReader::new(b), &mut out)
                })
                .map_err(|e| format!("xz: {e:?}"))?;
            Ok(out)
        }
        Compression::Zstd => {
            let mut out = Vec::new();
            let mut d = ruzstd::decoding::StreamingDecoder::new(b).map_err(|e| format!("zstd: {e}"))?;
            d.read_to_end(&mut out).map_err(|e| format!("zstd: {e}"))?;
            Ok(out)
        }
    }
}

/// Where a bzImage's compressed kernel is, from its setup header.
pub fn bzimage_payload(b: &[u8]) -> Result<&[u8], String> {
    let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])));
    if b.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS setup header)".into());
    }
    let version = b.get(0x206..0x208).map_or(0, |v| u16::from_le_bytes([v[0], v[1]]));
    if version < 0x208 {
        return Err(format!("boot protocol {version:#x} has no payload fields (needs 2.08+)"));
    }
    let setup_sects = match b.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let (off, len) = (u32_at(0x248).unwrap_or(0) as usize, u32_at(0x24c).unwrap_or(0) as usize);
    b.get(pm_start + off..pm_start + off + len)
        .ok_or_else(|| format!("payload {off:#x}+{len:#x} lies outside the {} byte image", b.len()))
}

/// The `vmlinux` ELF inside a bzImage, checked against the size the image records.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let payload = bzimage_payload(bzimage)?;
    let c = Compression::detect(payload).ok_or_else(|| {
        format!("unknown payload compression (first bytes {:02x?})", &payload[..payload.len().min(6)])
    })?;
    let elf = decompress(c, payload)?;
    if c != Compression::Gzip {
        let want = payload
            .len()
            .checked_sub(4)
            .map(|t| u32::from_le_bytes(payload[t..].try_into().unwrap_or([0; 4])));
        if want != Some(elf.len() as u32) {
            return Err(format!("{c:?} payload gave {} bytes, the image records {want:?}", elf.len()));
        }
    }
    if !elf.starts_with(b"\x7fELF") {
        return Err(format!("{c:?} payload is not an ELF file"));
    }
    Ok(elf)
}

/// Debian's metapackage of the cloud kernel; it depends on the versioned image package.
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// Debian's static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Debian's cloud kernel, unpacked: its `vmlinux` (extracted from the bzImage once and cached
/// next to the package) and its modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel release (`6.1.0-57-cloud-amd64`): the name of its modules directory.
    pub release: String,
    /// The image package's version (`6.1.192-3`).
    pub package_version: String,
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
}

/// Fetches the Debian packages a Linux guest is made of: the cloud kernel's metapackage, the
/// image package it depends on, and busybox. Only this step may fail for want of apt or a
/// network; tests skip (loudly) on its error and treat any later failure as a defect.
pub fn packages() -> Result<(), Unavailable> {
    kernel_package()?;
    busybox().map(drop)
}

/// Fetches the cloud kernel's metapackage and the versioned image package it depends on.
fn kernel_package() -> Result<(String, debian::Package), Unavailable> {
    let meta = debian::fetch(KERNEL_PACKAGE)?;
    let unavailable = |what: String, command: String, reason: String| Unavailable { what, command, reason };
    let depends = debian::control_field(&meta.deb, "Depends").map_err(|r| {
        unavailable(
            format!("{KERNEL_PACKAGE}'s dependencies"),
            format!("dpkg-deb -f {} Depends", meta.deb.display()),
            r,
        )
    })?;
    let image = debian::dependency_with_prefix(&depends, "linux-image-").ok_or_else(|| {
        unavailable(
            format!("{KERNEL_PACKAGE}'s kernel image"),
            format!("dpkg-deb -f {} Depends", meta.deb.display()),
            format!("no linux-image-* package in `{depends}`"),
        )
    })?;
    let pkg = debian::fetch(&image)?;
    Ok((image, pkg))
}

/// Fetches Debian's cloud kernel (the metapackage, then the image package it depends on) and
/// extracts its vmlinux (once per checkout).
pub fn kernel() -> Result<Kernel, Unavailable> {
    // One extraction at a time in this process; across processes the rename is atomic.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let unavailable = |what: String, command: String, reason: String| Unavailable { what, command, reason };
    let (image, pkg) = kernel_package()?;
    let release = image.trim_start_matches("linux-image-").to_string();
    let bz = pkg.root.join(format!("boot/vmlinuz-{release}"));
    let vmlinux = pkg.root.join(format!("boot/vmlinux-{release}"));
    if !vmlinux.exists() {
        let fail = |reason: String| {
            unavailable(
                format!("vmlinux of {image}"),
                format!("extract the payload of {}", bz.display()),
                reason,
            )
        };
        let bytes = std::fs::read(&bz).map_err(|e| fail(e.to_string()))?;
        let elf = extract_vmlinux(&bytes).map_err(fail)?;
        let tmp = vmlinux.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, elf)
            .and_then(|_| std::fs::rename(&tmp, &vmlinux))
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(Kernel {
        modules: pkg.root.join("lib/modules").join(&release),
        release,
        package_version: pkg.version,
        vmlinux,
    })
}

/// Fetches `busybox-static` and returns its binary.
pub fn busybox() -> Result<PathBuf, Unavailable> {
    Ok(debian::fetch(BUSYBOX_PACKAGE)?.root.join("bin/busybox"))
}

/// A module's name as modprobe sees it: its file name without `.ko` and any compression
/// suffix, with `-` and `_` the same.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The `depends=` list of a module's `.modinfo` section (Debian's kernel package ships no
/// `modules.dep`: depmod writes it at install time).
pub fn module_depends(object_bytes: &[u8]) -> Result<Vec<String>, String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(object_bytes).map_err(|e| format!("not an ELF object: {e}"))?;
    let info = file.section_by_name(".modinfo").ok_or("no .modinfo section")?;
    let data = info.data().map_err(|e| format!(".modinfo: {e}"))?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|list| String::from_utf8_lossy(list).split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect())
}

/// The module files under `dir` (a kernel's `lib/modules/<release>`), by module name.
fn module_index(dir: &Path) -> Result<std::collections::HashMap<String, PathBuf>, String> {
    let mut index = std::collections::HashMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(".ko") {
                index.insert(module_name(&p.to_string_lossy()), p);
            }
        }
    }
    Ok(index)
}

/// The module files that loading `names` needs under `dir` (a kernel's
/// `lib/modules/<release>`), dependencies first.
pub fn modules_in_load_order(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>, String> {
    let index = module_index(dir)?;
    let mut order: Vec<PathBuf> = Vec::new();
    // Depth-first, each module after its dependencies; `visiting` catches a cycle.
    fn visit(
        name: &str,
        index: &std::collections::HashMap<String, PathBuf>,
        order: &mut Vec<PathBuf>,
        visiting: &mut Vec<String>,
    ) -> Result<(), String> {
        let path = index.get(name).ok_or_else(|| format!("no module {name}"))?;
        if order.contains(path) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            return Err(format!("modules depend on each other in a cycle through {name}"));
        }
        visiting.push(name.to_string());
        for dep in module_depends(&module_bytes(path)?).map_err(|e| format!("{}: {e}", path.display()))? {
            visit(&dep, index, order, visiting)?;
        }
        visiting.pop();
        order.push(path.clone());
        Ok(())
    }
    for name in names {
        visit(&name.replace('-', "_"), &index, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

/// A module file's contents, decompressed if it is `.ko.xz`, `.ko.zst` or `.ko.gz` (busybox's
/// `insmod` reads plain ELF objects only).
pub fn module_bytes(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.to_string_lossy();
    let plain = if name.ends_with(".ko.xz") {
        decompress(Compression::Xz, &bytes)
    } else if name.ends_with(".ko.zst") {
        decompress(Compression::Zstd, &bytes)
    } else if name.ends_with(".ko.gz") {
        gunzip(&bytes)
    } else {
        Ok(bytes)
    };
    let plain = plain.map_err(|e| format!("{}: {e}", path.display()))?;
    if !plain.starts_with(b"\x7fELF") {
        return Err(format!("{}: not an ELF object", path.display()));
    }
    Ok(plain)
}

/// One file of an initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpioEntry {
    Dir(String),
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A character device node (the kernel opens `/dev/console` before it runs `/init`, and
    /// without the node init has no output).
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
}

/// File-type bits of a cpio mode (`S_IFDIR`, `S_IFREG`, `S_IFLNK`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes `entries` as a cpio newc archive (what the kernel unpacks as an initramfs): owned by
/// root, each entry its own inode, with the trailer.
pub fn cpio_newc(entries: &[CpioEntry]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match e {
            CpioEntry::Dir(p) => (p, S_IFDIR | 0o755, &[], (0, 0)),
            CpioEntry::File { path, mode, data } => (path, S_IFREG | (mode & 0o7777), data, (0, 0)),
            CpioEntry::Symlink { path, target } => (path, S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
            CpioEntry::CharDev { path, major, minor } => (path, S_IFCHR | 0o600, &[], (*major, *minor)),
        };
        let size =
            u32::try_from(data.len()).map_err(|_| std::io::Error::other(format!("{path} is over 4 GiB")))?;
        let nlink = if matches!(e, CpioEntry::Dir(_)) { 2 } else { 1 };
        let mut w = cpio::newc::Builder::new(path.trim_start_matches('/'))
            .ino(i as u32 + 1)
            .mode(mode)
            .nlink(nlink)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut out, size);
        w.write_all(data)?;
        w.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// One entry of a cpio archive as read back: name, mode, rdev (major, minor), contents.
pub type ReadEntry = (String, u32, (u32, u32), Vec<u8>);

/// Reads every entry of a cpio newc archive (for checking what [`cpio_newc`] wrote).
pub fn cpio_entries(mut archive: &[u8]) -> std::io::Result<Vec<ReadEntry>> {
    let mut out = Vec::new();
    loop {
        let mut r = cpio::newc::Reader::new(archive)?;
        if r.entry().is_trailer() {
            return Ok(out);
        }
        let e = r.entry();
        let (name, mode, rdev) = (e.name().to_string(), e.mode(), (e.rdev_major(), e.rdev_minor()));
        let mut data = Vec::new();
        r.read_to_end(&mut data)?;
        out.push((name, mode, rdev, data));
        archive = r.finish()?;
    }
}

/// What the initramfs's `/init` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitPlan {
    /// Module files to `insmod`, in load order ([`modules_in_load_order`]).
    pub modules: Vec<PathBuf>,
    /// Files of the initramfs (path, contents) the init prints, then adds to the archive.
    pub files: Vec<(String, Vec<u8>)>,
    /// The disk to mount and use, if any.
    pub disk: Option<DiskPlan>,
    /// Where the init's output goes.
    pub output: InitOutput,
    /// End at a shell on the console instead of powering off.
    pub shell: bool,
    /// The network steps, if any (after the modules, before the disk).
    pub net: Option<NetPlan>,
}

/// The network part of an [`InitPlan`]: `eth0` (xen-netfront on the domain's vif) gets a
/// static address on QEMU's user network, pings each peer, fetches a URL, serves files over
/// HTTP, and takes one upload on a TCP port. Each step prints one `LINUXNET` line with
/// `key=value` fields ([`NET_PREFIX`]); `bytes` and `crc32` (zlib's CRC-32, busybox `crc32`)
/// let the host check what crossed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetPlan {
    /// `eth0`'s address with its prefix length (`10.0.2.15/24`).
    pub address: String,
    /// The default route's gateway (QEMU's `10.0.2.2`).
    pub gateway: String,
    /// Peers to `ping -c 3`: `LINUXNET ping peer=<ip> transmitted=<n> received=<n>`.
    pub ping: Vec<String>,
    /// A URL to fetch with `wget`: `LINUXNET fetched url=<url> bytes=<n> crc32=<hex>`.
    pub fetch: Option<String>,
    /// Files under `/www` (name, contents) that busybox `httpd` serves on port 80.
    pub serve: Vec<(String, Vec<u8>)>,
    /// A TCP port where `nc -l` takes one connection's bytes (within [`NET_WAIT_S`]):
    /// `LINUXNET sink port=<port> bytes=<n> crc32=<hex>` once the sender closes.
    pub sink_port: Option<u16>,
}

/// The prefix of the init's network lines.
pub const NET_PREFIX: &str = "LINUXNET";
/// The init's line once its HTTP server and TCP sink listen: the host starts talking then.
pub const NET_READY: &str = "LINUXNET listening";
/// How long the init waits for the host's upload before it goes on.
pub const NET_WAIT_S: u32 = 240;

/// zlib's CRC-32 of `data`, as busybox `crc32` prints it (`{:08x}`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// The value of `key=` in a `key=value` line, up to the next space.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    crate::kv::get(line, key)
}

/// The init script's network steps.
fn net_script(n: &NetPlan) -> String {
    let p = NET_PREFIX;
    let (addr, gw) = (&n.address, &n.gateway);
    let mut lines = vec![
        "ip link set lo up".to_string(),
        "i=0".into(),
        "while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done".into(),
        format!(
            "if ip link set eth0 up && ip addr add {addr} dev eth0 && ip route add default via {gw}; then"
        ),
        format!("    echo \"{p} eth0 up mac=$(cat /sys/class/net/eth0/address) address={addr}\""),
        "else".into(),
        format!("    echo {p} eth0 FAILED"),
        "fi".into(),
    ];
    for peer in &n.ping {
        lines.push(format!("ping -c 3 -W 10 {peer} >/tmp/ping 2>&1"));
        lines.push(format!(
            "echo \"{p} ping peer={peer} $(sed -n 's/^\\([0-9]*\\) packets transmitted, \\([0-9]*\\) packets received.*/transmitted=\\1 received=\\2/p' /tmp/ping)\""
        ));
    }
    if let Some(url) = &n.fetch {
        lines.extend([
            format!("if wget -q -O /tmp/fetched {url}; then"),
            format!(
                "    echo \"{p} fetched url={url} bytes=$(stat -c %s /tmp/fetched) crc32=$(crc32 </tmp/fetched)\""
            ),
            "else".into(),
            format!("    echo {p} fetched url={url} FAILED"),
            "fi".into(),
            "rm -f /tmp/fetched".into(),
        ]);
    }
    if !n.serve.is_empty() {
        lines.push("httpd -p 80 -h /www".into());
    }
    lines.push(format!("echo {NET_READY}"));
    if let Some(port) = n.sink_port {
        lines.extend([
            format!("if timeout {NET_WAIT_S} nc -l -p {port} </dev/null >/tmp/sink; then"),
            format!(
                "    echo \"{p} sink port={port} bytes=$(stat -c %s /tmp/sink) crc32=$(crc32 </tmp/sink)\""
            ),
            "else".into(),
            format!("    echo {p} sink port={port} FAILED"),
            "fi".into(),
            "rm -f /tmp/sink".into(),
        ]);
    }
    lines.push(format!("echo {p} done"));
    lines.join("\n") + "\n"
}

/// The disk part of an [`InitPlan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    /// The block device (`/dev/xvda` for a Xen vbd, `/dev/vda` for virtio-blk).
    pub device: String,
    /// A file at the file system's root whose contents the init prints.
    pub read: String,
    /// A file the init creates at the root with [`WRITTEN`] as its contents.
    pub write: String,
    /// What else the init does when it runs beside another domU, if it does.
    pub beside: Option<Beside>,
}

/// The init beside another domU (tests/tests/linux_beside.rs): it touches its disk only once
/// [`GO`] is typed on its console (the host types it when the neighbour says its own disk is
/// busy, so the order of the two is cause and effect), then does the usual file steps and
/// ends as the variant says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beside {
    /// Mounts the disk again, writes a big file in the background and, once the disk has
    /// writes in flight (`/sys/block/<dev>/inflight`), crashes the kernel (`echo c >
    /// /proc/sysrq-trigger`; Linux's Xen panic notifier sends SCHEDOP_shutdown(crash)), so
    /// dom0 destroys it with its blkfront's requests outstanding. Prints [`CRASH_LINE`] with
    /// `inflight_writes=<n>` first.
    CrashInFlight,
    /// Outlives the `neighbour` domain (Linux is domain `me`): watches `@releaseDomain` through `/dev/xen/xenbus`
    /// (dom0 must grant it, `release-watch=`), mounts its disk again and does verified rounds
    /// (1 MiB of random bytes written, synced, the page cache dropped, read back, CRC-32
    /// compared; [`ROUND_FILE`] holds the last) until the watch fires, then `after` more.
    /// After its first round it makes [`TOLD_NODE`] readable to the neighbour, which the
    /// neighbour waits for before it crashes itself. Prints [`ROUNDS_LINE`] at the end.
    OutlivesNeighbour { me: u16, neighbour: u16, after: u32 },
}

/// The node (relative to Linux's home) [`Beside::OutlivesNeighbour`] makes readable to the
/// neighbour after its first round.
pub const TOLD_NODE: &str = "data/beside-round-1";
/// The file each round of [`Beside::OutlivesNeighbour`] writes (at the disk's root).
pub const ROUND_FILE: &str = "round.bin";
/// [`Beside::OutlivesNeighbour`]'s last line: `rounds=`, `after_release=`, `last_crc32=`.
pub const ROUNDS_LINE: &str = "LINUXINIT rounds";
/// The watch token of [`Beside::OutlivesNeighbour`]'s `@releaseDomain` watch.
const RELEASE_TOKEN: &str = "b";

/// One xenstore wire message (header, then `payload`) as `printf` octal escapes, for an init
/// that talks to xenstored through `/dev/xen/xenbus` (busybox has no xenstore client).
fn xs_printf(ty: XsdSockmsgType, payload: &[u8]) -> String {
    let len = u32::try_from(payload.len()).expect("a short payload");
    [ty as u32, 0, 0, len]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .chain(payload.iter().copied())
        .map(|b| format!("\\{b:03o}"))
        .collect()
}

/// The script lines of [`Beside::OutlivesNeighbour`] that come before anything else touches
/// the disk: the watch, and a reader that touches `/released` once the event after the
/// initial one has come (the reply and the two events are of known lengths).
fn release_watch_script() -> String {
    let watch = [RELEASE_DOMAIN.as_bytes(), b"\0", RELEASE_TOKEN.as_bytes(), b"\0"].concat();
    let event = 16 + RELEASE_DOMAIN.len() + 1 + RELEASE_TOKEN.len() + 1;
    let reply = 16 + "OK".len() + 1;
    format!(
        "exec 4<>/dev/xen/xenbus && printf '{}' >&4 && echo LINUXINIT watching {RELEASE_DOMAIN}\n\
         (dd bs=1 count={} <&4 >/dev/null 2>&1 && touch /released) &\n",
        xs_printf(XsdSockmsgType::Watch, &watch),
        reply + 2 * event,
    )
}

/// [`Beside::OutlivesNeighbour`]'s rounds.
fn rounds_script(dev: &str, me: u16, neighbour: u16, after: u32) -> String {
    let write = [TOLD_NODE.as_bytes(), b"\0", b"1"].concat();
    let perms = [TOLD_NODE.as_bytes(), b"\0", format!("n{me}\0r{neighbour}\0").as_bytes()].concat();
    format!(
        "mount -t ext4 {dev} /mnt && echo LINUXINIT mounted {dev} again\n\
         exec 3<>/dev/xen/xenbus\n\
         n=0; after=-1\n\
         while [ $n -lt 100000 ]; do\n\
         \x20   if [ $after -lt 0 ] && [ -e /released ]; then after=0; echo \"LINUXINIT {RELEASE_DOMAIN} fired before round $((n+1))\"; fi\n\
         \x20   [ $after -ge {after} ] && break\n\
         \x20   n=$((n+1))\n\
         \x20   dd if=/dev/urandom of=/round bs=64k count=16 2>/dev/null\n\
         \x20   want=$(crc32 </round)\n\
         \x20   cp /round /mnt/{ROUND_FILE} && sync && echo 3 > /proc/sys/vm/drop_caches\n\
         \x20   got=$(crc32 </mnt/{ROUND_FILE})\n\
         \x20   [ \"$want\" = \"$got\" ] && ok=ok || ok=FAILED\n\
         \x20   echo \"LINUXINIT round n=$n crc32=$want read=$got $ok\"\n\
         \x20   if [ $n -eq 1 ]; then printf '{}' >&3 && printf '{}' >&3 && echo LINUXINIT told d{neighbour}; fi\n\
         \x20   [ $after -ge 0 ] && after=$((after+1))\n\
         done\n\
         echo \"{ROUNDS_LINE} rounds=$n after_release=$after last_crc32=$want\"\n\
         umount /mnt && echo LINUXINIT unmounted {dev} again\n",
        xs_printf(XsdSockmsgType::Write, &write),
        xs_printf(XsdSockmsgType::SetPerms, &perms),
    )
}

/// What the host types to let a [`Beside`] init go on.
pub const GO: &str = "go";
/// The line a [`Beside`] init prints while it waits for [`GO`].
pub const WAITING: &str = "LINUXINIT waiting for go";
/// The line [`Beside::CrashInFlight`] prints just before the crash.
pub const CRASH_LINE: &str = "LINUXINIT crashing";

/// Where `/init` writes its progress lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitOutput {
    /// `/dev/console` (a domU's hvc0, served by its console backend).
    Console,
    /// The kernel log (`/dev/kmsg`): for a kernel whose console is not reachable, e.g.
    /// Debian's cloud kernel as Xen's dom0, which (built without CONFIG_XEN_DOM0) looks for
    /// a domU's console ring and finds none; `earlyprintk=xen keep_bootcon` then shows the
    /// kernel log through `console_io`.
    Kmsg,
}

/// The init's line just before it leaves a shell on the console.
pub const SHELL_READY: &str = "LINUXINIT shell";

/// What the init writes into [`DiskPlan::write`].
pub const WRITTEN: &str = "written by Linux inside the guest\n";

/// The `/init` script for `plan`: busybox's applets, the modules, the files printed, the disk
/// mounted with one file printed and one written, `sync`, unmount, then `poweroff -f`
/// (SCHEDOP_shutdown) or a shell. Progress lines start with `LINUXINIT` so tests can follow.
pub fn init_script(plan: &InitPlan) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         # microvisor's Linux test init (xtask::linux::init_script)\n\
         /bin/busybox mkdir -p /proc /sys /dev /mnt\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox --install -s /bin\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n",
    );
    if plan.output == InitOutput::Kmsg {
        s += "exec >/dev/kmsg 2>&1\n";
    }
    s += "echo LINUXINIT start\n";
    // A module's parameters come from the kernel's command line as `<module>.<param>=<value>`,
    // as modprobe takes them (busybox's insmod does not look there itself).
    s += "modparams() { for a in $(cat /proc/cmdline); do case \"$a\" in \"$1\".*) echo \"${a#*.}\";; esac; done; }\n";
    for m in &plan.modules {
        let name = module_name(&m.to_string_lossy());
        let file = format!("{name}.ko");
        s += &format!("insmod /lib/modules/{file} $(modparams {name}) && echo LINUXINIT insmod {file} ok || echo LINUXINIT insmod {file} FAILED\n");
    }
    if let Some(n) = &plan.net {
        s += &net_script(n);
    }
    for (path, _) in &plan.files {
        s += &format!("echo \"LINUXINIT cat /{p}: $(cat /{p})\"\n", p = path.trim_start_matches('/'));
    }
    if let Some(Beside::OutlivesNeighbour { .. }) = plan.disk.as_ref().and_then(|d| d.beside) {
        s += &release_watch_script();
    }
    if plan.disk.as_ref().is_some_and(|d| d.beside.is_some()) {
        s += &format!("echo {WAITING}\nwhile read -r line && [ \"$line\" != {GO} ]; do :; done\necho LINUXINIT going on\n");
    }
    if let Some(d) = &plan.disk {
        s += &format!(
            "i=0\n\
             while [ ! -b {dev} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
             if mount -t ext4 {dev} /mnt; then\n\
             \x20   echo LINUXINIT mounted {dev}\n\
             \x20   echo \"LINUXINIT read {read}: $(cat /mnt/{read})\"\n\
             \x20   printf '{written}' > /mnt/{write} && echo LINUXINIT wrote {write}\n\
             \x20   sync\n\
             \x20   umount /mnt && echo LINUXINIT unmounted {dev}\n\
             else\n\
             \x20   echo LINUXINIT mount {dev} FAILED\n\
             fi\n",
            dev = d.device,
            read = d.read,
            write = d.write,
            written = WRITTEN.replace('\n', "\\n"),
        );
        if let Some(Beside::OutlivesNeighbour { me, neighbour, after }) = d.beside {
            s += &rounds_script(&d.device, me, neighbour, after);
        }
        if d.beside == Some(Beside::CrashInFlight) {
            let blk = d.device.trim_start_matches("/dev/");
            s += &format!(
                "mount -t ext4 {dev} /mnt && echo LINUXINIT mounted {dev} again\n\
                 dd if=/dev/zero of=/mnt/inflight bs=64k count=512 conv=fsync 2>/dev/null &\n\
                 i=0\n\
                 set -- 0 0\n\
                 while [ \"$2\" -eq 0 ] && [ $i -lt 100000 ]; do set -- $(cat /sys/block/{blk}/inflight); i=$((i+1)); done\n\
                 echo \"{CRASH_LINE} inflight_reads=$1 inflight_writes=$2\"\n\
                 echo c > /proc/sysrq-trigger\n",
                dev = d.device,
            );
        }
    }
    if plan.shell {
        s += &format!("echo '{SHELL_READY}: type poweroff -f to end'\nexec setsid cttyhack sh\n");
    } else {
        s += "echo LINUXINIT poweroff\npoweroff -f\n";
    }
    s
}

/// The initramfs of `plan`: busybox, `/dev/console`, the plan's modules (decompressed) and
/// files, and `/init`.
pub fn initramfs(busybox: &Path, plan: &InitPlan) -> Result<Vec<u8>, String> {
    let mut entries: Vec<CpioEntry> = ["bin", "dev", "etc", "proc", "sys", "mnt", "lib", "lib/modules"]
        .iter()
        .map(|d| CpioEntry::Dir(d.to_string()))
        .collect();
    entries.push(CpioEntry::CharDev { path: "dev/console".into(), major: 5, minor: 1 });
    let bb = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    entries.push(CpioEntry::File { path: "bin/busybox".into(), mode: 0o755, data: bb });
    entries.push(CpioEntry::Symlink { path: "bin/sh".into(), target: "busybox".into() });
    for m in &plan.modules {
        let file = module_name(&m.to_string_lossy()) + ".ko";
        entries.push(CpioEntry::File {
            path: format!("lib/modules/{file}"),
            mode: 0o644,
            data: module_bytes(m)?,
        });
    }
    for (path, data) in &plan.files {
        entries.push(CpioEntry::File {
            path: path.trim_start_matches('/').into(),
            mode: 0o644,
            data: data.clone(),
        });
    }
    if let Some(n) = &plan.net {
        entries.push(CpioEntry::Dir("www".into()));
        entries.push(CpioEntry::Dir("tmp".into()));
        for (name, data) in &n.serve {
            entries.push(CpioEntry::File {
                path: format!("www/{}", name.trim_start_matches('/')),
                mode: 0o644,
                data: data.clone(),
            });
        }
    }
    entries.push(CpioEntry::File { path: "init".into(), mode: 0o755, data: init_script(plan).into_bytes() });
    cpio_newc(&entries).map_err(|e| format!("initramfs: {e}"))
}

/// Makes `image` an ext4 file system of `size_mib` MiB holding `files` (name, contents) at its
/// root, with `mkfs.ext4 -d` from e2fsprogs.
pub fn make_ext4(image: &Path, size_mib: u32, files: &[(&str, &[u8])]) -> Result<(), Unavailable> {
    let fail = |command: String, reason: String| Unavailable {
        what: format!("ext4 image {}", image.display()),
        command,
        reason,
    };
    let staging = image.with_extension("d");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(|e| fail(format!("mkdir {}", staging.display()), e.to_string()))?;
    for (name, data) in files {
        std::fs::write(staging.join(name), data).map_err(|e| fail(format!("write {name}"), e.to_string()))?;
    }
    let _ = std::fs::remove_file(image);
    let command = format!("mkfs.ext4 -q -F -d {} {} {size_mib}M", staging.display(), image.display());
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(&staging)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output();
    let _ = std::fs::remove_dir_all(&staging);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(fail(command, String::from_utf8_lossy(&o.stderr).trim().to_string())),
        Err(e) => Err(fail(command, format!("{e} (install e2fsprogs: apt-get install -y e2fsprogs)"))),
    }
}

/// Reads `path` out of the ext2/3/4 file system in `image`, with `debugfs -R 'cat …'`.
pub fn read_ext_file(image: &Path, path: &str) -> Result<Vec<u8>, String> {
    let command = format!("debugfs -R 'cat {path}' {}", image.display());
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .map_err(|e| format!("`{command}`: {e} (install e2fsprogs: apt-get install -y e2fsprogs)"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    // debugfs reports a missing file on stderr and still exits 0.
    if !out.status.success() || err.lines().any(|l| l.contains("not found") || l.contains("Bad magic")) {
        return Err(format!("`{command}` failed: {}", err.trim()));
    }
    Ok(out.stdout)
}

/// The file the test disk holds at its root, and its contents.
pub const KNOWN_FILE: &str = "hello.txt";
pub const KNOWN_TEXT: &str = "hello from the host: microvisor's Linux test disk\n";
/// The file the init writes onto the test disk.
pub const NEW_FILE: &str = "from-linux.txt";

/// Where a Linux guest runs, which decides its devices and console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A PV domU (microvisor's, as `xl create` would make it under Xen): console on hvc0,
    /// the disk as `/dev/xvda` through xen-blkfront; `shell` leaves a shell on the console.
    DomU { shell: bool },
    /// Xen 4.17's dom0 in our QEMU, the reference run: no vbd (nothing serves one) and no
    /// console ring, so the init prints a file of the initramfs and logs to the kernel log.
    XenDom0,
}

/// A Linux guest's artefacts, built under `target/linux/<name>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxGuest {
    pub kernel: Kernel,
    pub initramfs: PathBuf,
    /// The ext4 disk (holding [`KNOWN_FILE`]), for a role with a disk.
    pub disk: Option<PathBuf>,
    /// The kernel's command line.
    pub cmdline: String,
    pub plan: InitPlan,
}

/// Fetches the kernel and busybox and builds a guest's initramfs (and disk) for `role`.
pub fn prepare(name: &str, role: Role) -> Result<LinuxGuest, Unavailable> {
    let kernel = kernel()?;
    let busybox = busybox()?;
    let dir = crate::workspace_root().join("target/linux").join(name);
    let fail = |command: String, reason: String| Unavailable {
        what: format!("Linux guest {name}"),
        command,
        reason,
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("mkdir -p {}", dir.display()), e.to_string()))?;
    let modules = modules_in_load_order(&kernel.modules, &["xen-blkfront", "xen-netfront"])
        .map_err(|e| fail(format!("resolve modules in {}", kernel.modules.display()), e))?;
    let (plan, disk, cmdline) = match role {
        Role::DomU { shell } => {
            let disk = dir.join("disk.img");
            make_ext4(&disk, 64, &[(KNOWN_FILE, KNOWN_TEXT.as_bytes())])?;
            let plan = InitPlan {
                modules,
                files: Vec::new(),
                disk: Some(DiskPlan {
                    device: "/dev/xvda".into(),
                    read: KNOWN_FILE.into(),
                    write: NEW_FILE.into(),
                    beside: None,
                }),
                output: InitOutput::Console,
                shell,
                net: None,
            };
            (plan, Some(disk), "console=hvc0".to_string())
        }
        Role::XenDom0 => {
            let plan = InitPlan {
                modules,
                files: vec![(format!("etc/{KNOWN_FILE}"), KNOWN_TEXT.as_bytes().to_vec())],
                disk: None,
                output: InitOutput::Kmsg,
                shell: false,
                net: None,
            };
            (plan, None, "console=hvc0 earlyprintk=xen keep_bootcon".to_string())
        }
    };
    let g = LinuxGuest { kernel, initramfs: dir.join("initramfs.cpio"), disk, cmdline, plan };
    g.write_initramfs(&busybox).map_err(|(command, reason)| fail(command, reason))?;
    Ok(g)
}

impl LinuxGuest {
    /// (Re)writes [`LinuxGuest::initramfs`] from the plan; on failure, the step and why.
    fn write_initramfs(&self, busybox: &Path) -> Result<(), (String, String)> {
        let bytes = initramfs(busybox, &self.plan).map_err(|e| ("build the initramfs".to_string(), e))?;
        std::fs::write(&self.initramfs, bytes)
            .map_err(|e| (format!("write {}", self.initramfs.display()), e.to_string()))
    }

    /// This guest's init as it runs beside another domU (its initramfs rebuilt).
    pub fn beside(mut self, b: Beside) -> Result<LinuxGuest, Unavailable> {
        if let Some(d) = self.plan.disk.as_mut() {
            d.beside = Some(b);
        }
        self.rebuilt()
    }

    /// This guest with `net`'s steps in its init (its initramfs rebuilt).
    pub fn with_net(mut self, net: NetPlan) -> Result<LinuxGuest, Unavailable> {
        self.plan.net = Some(net);
        self.rebuilt()
    }

    /// Writes the initramfs again from the (changed) plan.
    fn rebuilt(self) -> Result<LinuxGuest, Unavailable> {
        let busybox = busybox()?;
        self.write_initramfs(&busybox).map_err(|(command, reason)| Unavailable {
            what: format!("the initramfs {}", self.initramfs.display()),
            command,
            reason,
        })?;
        Ok(self)
    }
}

impl crate::qemu::Machine {
    /// Adds `guest` as a microvisor PV domU called `name` with `mem` (e.g. `256M`): its vmlinux
    /// with the guest's command line, its initramfs as the domain's Xen ramdisk (a module
    /// marked `ramdisk=<name>`, see the README's module table) and its disk as the domain's
    /// vbd (`xvda`), served by dom0.
    pub fn with_linux_domu(mut self, guest: &LinuxGuest, name: &str, mem: &str) -> crate::qemu::Machine {
        use crate::qemu::Module;
        self.modules
            .push(Module::new(&guest.kernel.vmlinux, &format!("name={name} mem={mem} -- {}", guest.cmdline)));
        self.modules.push(Module::new(&guest.initramfs, &format!("ramdisk={name}")));
        match &guest.disk {
            Some(disk) => self.with_vbd(disk, name),
            None => self,
        }
    }

    /// Gives domain `name` what is typed on the serial line (dom0's `console-input=`, as
    /// `xl console` would): dom0 must be the first module.
    pub fn with_console_input(mut self, name: &str) -> crate::qemu::Machine {
        if let Some(dom0) = self.modules.first_mut() {
            let sep = if dom0.args.contains(" -- ") { " " } else { " -- " };
            dom0.args = format!("{}{sep}console-input={name}", dom0.args);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A compressible stand-in for a kernel: an ELF magic and patterned text over several
    /// LZ4 legacy blocks' worth when `big`.
    fn fake_vmlinux(big: bool) -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        let n = if big { LZ4_LEGACY_BLOCK * 2 + 12345 } else { 70_000 };
        v.extend((0..n).map(|i| (i * 7 % 251) as u8 ^ (i >> 13) as u8));
        v
    }

    fn lz4_legacy_compress(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = match c {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                return e.finish().unwrap();
            }
            Compression::Lz4Legacy => lz4_legacy_compress(data),
            Compression::Xz => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut std::io::BufReader::new(data), &mut out).unwrap();
                out
            }
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
        };
        // The kernel's size_append.
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// A minimal bzImage: a setup header with HdrS, protocol 2.15, two setup sectors, and the
    /// payload right after the protected-mode start.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 2u8;
        let pm_start = (usize::from(setup_sects) + 1) * 512;
        let mut b = vec![0u8; pm_start + 0x40];
        b[0x1f1] = setup_sects;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0xaa; 100]);
        b
    }

    #[test]
    fn extracts_each_compression_format() {
        for c in [Compression::Gzip, Compression::Lz4Legacy, Compression::Xz, Compression::Zstd] {
            let kernel = fake_vmlinux(false);
            let payload = compress(c, &kernel);
            assert_eq!(Compression::detect(&payload), Some(c));
            let image = bzimage(&payload);
            assert_eq!(bzimage_payload(&image).unwrap(), &payload[..], "{c:?}");
            assert_eq!(extract_vmlinux(&image).unwrap(), kernel, "{c:?}");
        }
    }

    #[test]
    fn lz4_legacy_spans_several_blocks() {
        let kernel = fake_vmlinux(true);
        let image = bzimage(&compress(Compression::Lz4Legacy, &kernel));
        assert_eq!(extract_vmlinux(&image).unwrap(), kernel);
    }

    #[test]
    fn rejects_broken_images() {
        assert!(bzimage_payload(&[0u8; 4096]).unwrap_err().contains("HdrS"));
        let kernel = fake_vmlinux(false);
        let mut payload = compress(Compression::Lz4Legacy, &kernel);
        // A wrong size trailer is caught.
        let n = payload.len();
        payload[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        assert!(extract_vmlinux(&bzimage(&payload)).unwrap_err().contains("records"));
        // An unknown format is named.
        assert!(extract_vmlinux(&bzimage(b"BZh91AY&SY")).unwrap_err().contains("unknown payload"));
        // A payload that is not an ELF file is refused.
        let not_elf = compress(Compression::Zstd, b"just text, no kernel");
        assert!(extract_vmlinux(&bzimage(&not_elf)).unwrap_err().contains("not an ELF"));
        // A payload beyond the image is refused.
        let mut b = bzimage(&payload);
        b[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(bzimage_payload(&b).unwrap_err().contains("outside"));
        // A corrupt LZ4 block is an error, not a panic.
        let mut bad = compress(Compression::Lz4Legacy, &kernel);
        for x in &mut bad[8..40] {
            *x = 0xff;
        }
        assert!(extract_vmlinux(&bzimage(&bad)).is_err());
    }

    #[test]
    fn cpio_archive_reads_back_entry_by_entry() {
        let entries = vec![
            CpioEntry::Dir("bin".into()),
            CpioEntry::File { path: "/bin/busybox".into(), mode: 0o755, data: b"\x7fELF...".to_vec() },
            CpioEntry::Symlink { path: "bin/sh".into(), target: "busybox".into() },
            CpioEntry::CharDev { path: "dev/console".into(), major: 5, minor: 1 },
            CpioEntry::File { path: "init".into(), mode: 0o755, data: b"#!/bin/sh\n".to_vec() },
        ];
        let seen = cpio_entries(&cpio_newc(&entries).unwrap()).unwrap();
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "dev/console", "init"]);
        assert_eq!(seen[0].1, S_IFDIR | 0o755);
        assert_eq!((seen[1].1, &seen[1].3[..]), (S_IFREG | 0o755, &b"\x7fELF..."[..]));
        assert_eq!((seen[2].1, &seen[2].3[..]), (S_IFLNK | 0o777, &b"busybox"[..]));
        assert_eq!((seen[3].1, seen[3].2), (S_IFCHR | 0o600, (5, 1)));
    }

    #[test]
    fn init_script_follows_the_plan() {
        let mut plan = InitPlan {
            modules: vec![PathBuf::from("/m/kernel/drivers/block/xen-blkfront.ko.xz")],
            files: vec![("etc/hello.txt".into(), b"hi".to_vec())],
            disk: Some(DiskPlan {
                device: "/dev/xvda".into(),
                read: "hello.txt".into(),
                write: "new.txt".into(),
                beside: None,
            }),
            output: InitOutput::Console,
            shell: false,
            net: None,
        };
        let s = init_script(&plan);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(
            s.contains(
                "insmod /lib/modules/xen_blkfront.ko $(modparams xen_blkfront) && echo LINUXINIT insmod xen_blkfront.ko ok"
            ),
            "{s}"
        );
        assert!(s.contains("LINUXINIT cat /etc/hello.txt: $(cat /etc/hello.txt)"), "{s}");
        assert!(s.contains("mount -t ext4 /dev/xvda /mnt"), "{s}");
        assert!(s.contains("printf 'written by Linux inside the guest\\n' > /mnt/new.txt"), "{s}");
        assert!(s.find("sync").unwrap() < s.find("umount").unwrap());
        assert!(s.trim_end().ends_with("poweroff -f"), "{s}");
        assert!(!s.contains("/dev/kmsg"));
        assert!(!s.contains(WAITING) && !s.contains("sysrq-trigger"), "{s}");
        // Beside another domU: nothing touches the disk before `go`; the crash comes after the
        // clean unmount, once writes are in flight, and before the poweroff it replaces.
        plan.disk.as_mut().unwrap().beside = Some(Beside::CrashInFlight);
        let s = init_script(&plan);
        let at = |what: &str| s.find(what).unwrap_or_else(|| panic!("no {what:?} in {s}"));
        assert!(at(WAITING) < at("mount -t ext4"), "{s}");
        assert!(at("umount /mnt") < at("/sys/block/xvda/inflight"), "{s}");
        assert!(at(CRASH_LINE) < at("echo c > /proc/sysrq-trigger"), "{s}");
        assert!(at("echo c > /proc/sysrq-trigger") < at("poweroff -f"), "{s}");
        plan.disk.as_mut().unwrap().beside = None;
        plan.output = InitOutput::Kmsg;
        plan.shell = true;
        plan.disk = None;
        let s = init_script(&plan);
        assert!(
            s.contains("exec >/dev/kmsg 2>&1") && s.trim_end().ends_with("exec setsid cttyhack sh"),
            "{s}"
        );
        assert!(!s.contains("mount -t ext4"));
        assert_eq!(module_name("kernel/drivers/net/xen-netfront.ko.zst"), "xen_netfront");
    }

    /// The bytes a `printf` format of octal escapes writes.
    fn printf_bytes(f: &str) -> Vec<u8> {
        f.split('\\').skip(1).map(|o| u8::from_str_radix(o, 8).unwrap()).collect()
    }

    #[test]
    fn xenstore_messages_for_the_init_are_whole_wire_messages() {
        let m = printf_bytes(&xs_printf(XsdSockmsgType::Write, b"data/x\x001"));
        assert_eq!(m[..16], [11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0]);
        assert_eq!(&m[16..], b"data/x\x001");
        // Beside its neighbour: the watch before `go`, the neighbour's read permission on the
        // told node after the first round, and the reader waits for the reply and two events.
        let plan = InitPlan {
            modules: Vec::new(),
            files: Vec::new(),
            disk: Some(DiskPlan {
                device: "/dev/xvda".into(),
                read: "a".into(),
                write: "b".into(),
                beside: Some(Beside::OutlivesNeighbour { me: 1, neighbour: 2, after: 3 }),
            }),
            output: InitOutput::Console,
            shell: false,
            net: None,
        };
        let s = init_script(&plan);
        let at = |what: &str| s.find(what).unwrap_or_else(|| panic!("no {what:?} in {s}"));
        assert!(at("LINUXINIT watching @releaseDomain") < at(WAITING), "{s}");
        assert!(s.contains(&format!("dd bs=1 count={} <&4", 19 + 2 * (16 + 15 + 2))), "{s}");
        let perms = s.lines().find(|l| l.contains("told d2")).unwrap();
        let perms = perms.split('\'').nth(3).unwrap();
        let m = printf_bytes(perms);
        assert_eq!(m[0], XsdSockmsgType::SetPerms as u8);
        assert_eq!(&m[16..], format!("{TOLD_NODE}\0n1\0r2\0").as_bytes());
        assert!(s.contains("[ $after -ge 3 ] && break"), "{s}");
        assert!(at(ROUNDS_LINE) < at("poweroff -f"), "{s}");
    }

    #[test]
    fn network_steps_print_structured_lines_and_serve_their_files() {
        let net = NetPlan {
            address: "10.0.2.15/24".into(),
            gateway: "10.0.2.2".into(),
            ping: vec!["10.0.2.10".into()],
            fetch: Some("http://10.0.2.10/bytes/5".into()),
            serve: vec![("f.bin".into(), vec![1, 2, 3])],
            sink_port: Some(9000),
        };
        let plan = InitPlan {
            modules: vec![PathBuf::from("/m/xen-netfront.ko")],
            files: vec![],
            disk: None,
            output: InitOutput::Console,
            shell: false,
            net: Some(net),
        };
        let s = init_script(&plan);
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("no {needle:?} in\n{s}"));
        assert!(at("insmod /lib/modules/xen_netfront.ko") < at("ip link set eth0 up"));
        assert!(s.contains("ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2"), "{s}");
        assert!(s.contains("ping -c 3 -W 10 10.0.2.10"), "{s}");
        assert!(s.contains("LINUXNET ping peer=10.0.2.10 $(sed -n"), "{s}");
        assert!(s.contains("wget -q -O /tmp/fetched http://10.0.2.10/bytes/5"), "{s}");
        assert!(s.contains("crc32=$(crc32 </tmp/fetched)"), "{s}");
        assert!(at("httpd -p 80 -h /www") < at(NET_READY));
        assert!(at(NET_READY) < at("nc -l -p 9000"));
        assert!(at("nc -l -p 9000") < at("LINUXNET done") && at("LINUXNET done") < at("poweroff -f"));
        let summary = "3 packets transmitted, 2 packets received, 33% packet loss";
        let line = format!("LINUXNET ping peer=x transmitted=3 received=2 ({summary})");
        assert_eq!((field(&line, "transmitted"), field(&line, "received")), (Some("3"), Some("2")));
        assert_eq!(field("LINUXNET sink port=9000 bytes=12", "port"), Some("9000"));
        assert_eq!(field("LINUXNET sink xport=1", "port"), None);
        // What busybox `crc32` printed for this line on the host.
        assert_eq!(format!("{:08x}", crc32(b"hello world\n")), "af083b2d");
        let files = cpio_entries(&initramfs_entries_only(&plan)).unwrap();
        assert!(files.iter().any(|e| e.0 == "www/f.bin" && e.3 == [1, 2, 3]));
    }

    /// The initramfs of `plan` with a stand-in busybox.
    fn initramfs_entries_only(plan: &InitPlan) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("mv-bb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bb = dir.join("busybox");
        std::fs::write(&bb, b"\x7fELF").unwrap();
        let ko = dir.join("xen-netfront.ko");
        std::fs::write(&ko, b"\x7fELF module").unwrap();
        let mut plan = plan.clone();
        plan.modules = vec![ko];
        let out = initramfs(&bb, &plan).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    #[test]
    fn compressed_modules_are_unpacked_and_checked() {
        let dir = std::env::temp_dir().join(format!("mv-ko-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elf = b"\x7fELF\x02\x01\x01 module body".to_vec();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut std::io::BufReader::new(&elf[..]), &mut xz).unwrap();
        std::fs::write(dir.join("a.ko.xz"), &xz).unwrap();
        std::fs::write(
            dir.join("b.ko.zst"),
            ruzstd::encoding::compress_to_vec(&elf[..], ruzstd::encoding::CompressionLevel::Fastest),
        )
        .unwrap();
        std::fs::write(dir.join("c.ko"), &elf).unwrap();
        std::fs::write(dir.join("d.ko"), b"not an object").unwrap();
        for f in ["a.ko.xz", "b.ko.zst", "c.ko"] {
            assert_eq!(module_bytes(&dir.join(f)).unwrap(), elf, "{f}");
        }
        assert!(module_bytes(&dir.join("d.ko")).unwrap_err().contains("not an ELF"));
        assert!(module_depends(b"not an object").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ext4_images_round_trip_through_mkfs_and_debugfs() {
        let dir = std::env::temp_dir().join(format!("mv-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("t.img");
        match make_ext4(&img, 8, &[("a.txt", b"alpha\n"), ("b.bin", &[0u8, 1, 2, 255])]) {
            Ok(()) => {}
            Err(u) => {
                crate::debian::skip("linux::ext4_images_round_trip", "the ext4 round trip", &u);
                return;
            }
        }
        assert_eq!(read_ext_file(&img, "/a.txt").unwrap(), b"alpha\n");
        assert_eq!(read_ext_file(&img, "/b.bin").unwrap(), [0u8, 1, 2, 255]);
        assert!(read_ext_file(&img, "/missing.txt").unwrap_err().contains("not found"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_linux_domu_gets_its_kernel_ramdisk_and_vbd() {
        let p = Path::new("/x");
        let mut m = crate::qemu::Machine::with_hypervisor(p, "");
        m.modules = vec![crate::qemu::Module::new(Path::new("/k/dom0"), "name=dom0 mem=64M")];
        let g = LinuxGuest {
            kernel: Kernel {
                release: "r".into(),
                package_version: "v".into(),
                vmlinux: "/l/vmlinux".into(),
                modules: "/l/m".into(),
            },
            initramfs: "/l/initramfs.cpio".into(),
            disk: Some("/l/disk.img".into()),
            cmdline: "console=hvc0".into(),
            plan: InitPlan {
                modules: vec![],
                files: vec![],
                disk: None,
                output: InitOutput::Console,
                shell: false,
                net: None,
            },
        };
        let m = m.with_linux_domu(&g, "linux", "256M");
        let args: Vec<String> = m.command().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let initrd = &args[args.iter().position(|a| a == "-initrd").unwrap() + 1];
        assert_eq!(
            initrd,
            "/k/dom0 name=dom0 mem=64M -- vbd=linux,/l/vmlinux name=linux mem=256M -- console=hvc0,/l/initramfs.cpio ramdisk=linux"
        );
        assert!(args.iter().any(|a| a.starts_with("file=/l/disk.img,format=raw")));
        // dom0's options gain console-input=, after its " -- " (added if it had none).
        let mut m = m.with_console_input("linux");
        assert_eq!(m.modules[0].args, "name=dom0 mem=64M -- vbd=linux console-input=linux");
        m.modules[0].args = "name=dom0 mem=64M".into();
        assert_eq!(m.with_console_input("2").modules[0].args, "name=dom0 mem=64M -- console-input=2");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), c in 0usize..4) {
            let mut p = [LZ4_LEGACY_MAGIC.to_le_bytes().as_slice(), &[0x1f, 0x8b], &[0xfd, b'7', b'z', b'X', b'Z', 0], &[0x28, 0xb5, 0x2f, 0xfd]][c].to_vec();
            p.extend_from_slice(&bytes);
            let _ = extract_vmlinux(&bzimage(&p));
        }
    }
}
