//! Multiboot v1 (the GNU Multiboot Specification 0.6.96): how GRUB or QEMU's `-kernel` hands
//! the hypervisor its memory map, command line and modules (dom0's kernel and initrd).
//!
//! The structures come from a boot loader we do not control, so the parsing helpers take byte
//! slices and never index past them, whatever the length and `size` fields claim.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Magic in the kernel image's Multiboot header.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Magic the boot loader leaves in `%eax`.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie in the first 8 KiB of the image, 4-byte aligned.
pub const SEARCH: usize = 8192;
pub const HEADER_ALIGN: usize = 4;

/// Multiboot header `flags`: what the kernel requires of the loader.
pub mod header_flags {
    /// Align modules on 4 KiB boundaries.
    pub const PAGE_ALIGN: u32 = 1 << 0;
    /// Provide `mem_*` and the memory map.
    pub const MEMORY_INFO: u32 = 1 << 1;
    /// Provide video mode information.
    pub const VIDEO_MODE: u32 = 1 << 2;
    /// The header's address fields are valid (a.out kludge).
    pub const AOUT_KLUDGE: u32 = 1 << 16;
}

/// [`MultibootInfo::flags`]: which info fields are valid.
pub mod info_flags {
    pub const MEMORY: u32 = 1 << 0;
    pub const BOOTDEV: u32 = 1 << 1;
    pub const CMDLINE: u32 = 1 << 2;
    pub const MODS: u32 = 1 << 3;
    pub const AOUT_SYMS: u32 = 1 << 4;
    pub const ELF_SHDR: u32 = 1 << 5;
    pub const MEM_MAP: u32 = 1 << 6;
    pub const DRIVE_INFO: u32 = 1 << 7;
    pub const CONFIG_TABLE: u32 = 1 << 8;
    pub const BOOT_LOADER_NAME: u32 = 1 << 9;
    pub const APM_TABLE: u32 = 1 << 10;
    pub const VBE_INFO: u32 = 1 << 11;
    pub const FRAMEBUFFER_INFO: u32 = 1 << 12;
}

/// Memory map entry types.
pub mod memory_type {
    pub const AVAILABLE: u32 = 1;
    pub const RESERVED: u32 = 2;
    pub const ACPI_RECLAIMABLE: u32 = 3;
    pub const NVS: u32 = 4;
    pub const BADRAM: u32 = 5;
}

/// The Multiboot header in the kernel image (`struct multiboot_header`, the fields up to
/// `entry_addr`; the video fields are omitted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MultibootHeader {
    pub magic: u32,
    pub flags: u32,
    /// `magic + flags + checksum == 0` (mod 2^32).
    pub checksum: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}
assert_layout!(MultibootHeader, size = 32, magic = 0, flags = 4, checksum = 8, entry_addr = 28);

impl MultibootHeader {
    /// The checksum that makes `magic + flags + checksum` zero.
    pub const fn checksum_for(flags: u32) -> u32 {
        0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)
    }
    /// True if the magic and checksum are right.
    pub const fn is_valid(&self) -> bool {
        self.magic == HEADER_MAGIC && self.magic.wrapping_add(self.flags).wrapping_add(self.checksum) == 0
    }
}

/// `struct multiboot_info`: what the loader passes in `%ebx`. All addresses are physical and
/// below 4 GiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MultibootInfo {
    /// [`info_flags`]: a field is meaningful only if its flag is set.
    pub flags: u32,
    /// KiB of memory below 1 MiB.
    pub mem_lower: u32,
    /// KiB of memory above 1 MiB (up to the first hole).
    pub mem_upper: u32,
    pub boot_device: u32,
    /// Physical address of the NUL-terminated command line.
    pub cmdline: u32,
    pub mods_count: u32,
    /// Physical address of `mods_count` [`MultibootModule`]s.
    pub mods_addr: u32,
    /// a.out symbol table or ELF section header table (`num, size, addr, shndx`).
    pub syms: [u32; 4],
    /// Bytes of memory map at `mmap_addr` (see [`mmap_entries`]).
    pub mmap_length: u32,
    pub mmap_addr: u32,
    pub drives_length: u32,
    pub drives_addr: u32,
    pub config_table: u32,
    /// Physical address of the loader's NUL-terminated name.
    pub boot_loader_name: u32,
    pub apm_table: u32,
    pub vbe_control_info: u32,
    pub vbe_mode_info: u32,
    pub vbe_mode: u16,
    pub vbe_interface_seg: u16,
    pub vbe_interface_off: u16,
    pub vbe_interface_len: u16,
    pub framebuffer_addr: u64,
    pub framebuffer_pitch: u32,
    pub framebuffer_width: u32,
    pub framebuffer_height: u32,
    pub framebuffer_bpp: u8,
    pub framebuffer_type: u8,
    pub color_info: [u8; 6],
    pub _pad: u32,
}
assert_layout!(
    MultibootInfo,
    size = 120,
    flags = 0,
    mem_lower = 4,
    mem_upper = 8,
    boot_device = 12,
    cmdline = 16,
    mods_count = 20,
    mods_addr = 24,
    syms = 28,
    mmap_length = 44,
    mmap_addr = 48,
    drives_length = 52,
    drives_addr = 56,
    config_table = 60,
    boot_loader_name = 64,
    apm_table = 68,
    vbe_control_info = 72,
    vbe_mode_info = 76,
    vbe_mode = 80,
    vbe_interface_seg = 82,
    vbe_interface_off = 84,
    vbe_interface_len = 86,
    framebuffer_addr = 88,
    framebuffer_pitch = 96,
    framebuffer_width = 100,
    framebuffer_height = 104,
    framebuffer_bpp = 108,
    framebuffer_type = 109,
    color_info = 110
);

impl MultibootInfo {
    /// Reads the info structure from the start of `buf`. Loaders that predate the framebuffer
    /// fields may provide fewer bytes: missing fields read as zero. `None` if `buf` does not even
    /// hold `flags`.
    pub fn parse(buf: &[u8]) -> Option<MultibootInfo> {
        if buf.len() < 4 {
            return None;
        }
        let mut info = MultibootInfo::new_zeroed();
        let dst = info.as_mut_bytes();
        let n = buf.len().min(dst.len());
        dst[..n].copy_from_slice(&buf[..n]);
        info._pad = 0;
        Some(info)
    }

    /// True if every flag in `mask` is set.
    pub const fn has(&self, mask: u32) -> bool {
        self.flags & mask == mask
    }
}

/// `struct multiboot_mod_list`: one boot module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MultibootModule {
    /// Physical address of the first byte.
    pub mod_start: u32,
    /// Physical address one past the last byte.
    pub mod_end: u32,
    /// Physical address of the module's NUL-terminated command line.
    pub string: u32,
    pub reserved: u32,
}
assert_layout!(MultibootModule, size = 16, mod_start = 0, mod_end = 4, string = 8, reserved = 12);

impl MultibootModule {
    /// Length in bytes, or `None` if `mod_end < mod_start`.
    pub const fn len(&self) -> Option<u32> {
        self.mod_end.checked_sub(self.mod_start)
    }
    /// True if the module is empty (or malformed).
    pub const fn is_empty(&self) -> bool {
        !matches!(self.len(), Some(n) if n > 0)
    }
}

/// `struct multiboot_mmap_entry` as it lies in memory: `size` counts the bytes after itself, so
/// the next entry starts `size + 4` bytes later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct MultibootMmapEntry {
    pub size: u32,
    pub addr: u64,
    pub len: u64,
    /// [`memory_type`] (the spec's field is `type`).
    pub type_: u32,
}
assert_layout!(MultibootMmapEntry, size = 24, size = 0, addr = 4, len = 12, type_ = 20);

/// One memory map range, decoded from a [`MultibootMmapEntry`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmapEntry {
    pub base_addr: u64,
    pub length: u64,
    /// [`memory_type`].
    pub type_: u32,
}

impl MmapEntry {
    /// Exclusive end, saturated at `u64::MAX` when `base_addr + length` overflows.
    pub const fn end(&self) -> u64 {
        self.base_addr.saturating_add(self.length)
    }
    /// True if the range is usable RAM.
    pub const fn is_available(&self) -> bool {
        self.type_ == memory_type::AVAILABLE
    }
}

/// The entries of a memory map buffer (the `mmap_length` bytes at `mmap_addr`).
///
/// Stops at the first entry that does not fit in `buf` or whose `size` is smaller than an
/// entry's payload (20 bytes): each step advances at least 24 bytes, so the walk ends after at
/// most `buf.len() / 24` items whatever the loader wrote.
pub fn mmap_entries(buf: &[u8]) -> impl Iterator<Item = MmapEntry> + '_ {
    const PAYLOAD: usize = core::mem::size_of::<MultibootMmapEntry>() - 4;
    let mut off = 0usize;
    core::iter::from_fn(move || {
        let rest = buf.get(off..)?;
        let (raw, _) = MultibootMmapEntry::read_from_prefix(rest).ok()?;
        let size = raw.size as usize;
        if size < PAYLOAD {
            return None;
        }
        // `size + 4 <= rest.len()` is the whole entry; past the end means a truncated map.
        let step = size.checked_add(4)?;
        if step > rest.len() {
            return None;
        }
        off += step;
        Some(MmapEntry { base_addr: raw.addr, length: raw.len, type_: raw.type_ })
    })
}

/// The module list (the `mods_count * 16` bytes at `mods_addr`), bounded by `buf`.
pub fn modules(buf: &[u8]) -> impl Iterator<Item = MultibootModule> + '_ {
    buf.chunks_exact(core::mem::size_of::<MultibootModule>())
        .filter_map(|c| MultibootModule::read_from_bytes(c).ok())
}

/// Bytes needed to hold `count` module entries, or `None` on overflow.
pub const fn modules_len(count: u32) -> Option<usize> {
    (count as usize).checked_mul(core::mem::size_of::<MultibootModule>())
}

/// The bytes of a C string at the start of `buf`, up to (not including) its NUL; all of `buf`
/// if it has no NUL.
pub fn c_str(buf: &[u8]) -> &[u8] {
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..n]
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn entry(size: u32, addr: u64, len: u64, ty: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
        v
    }

    #[test]
    fn header_checksum() {
        let flags = header_flags::PAGE_ALIGN | header_flags::MEMORY_INFO;
        let h = MultibootHeader {
            magic: HEADER_MAGIC,
            flags,
            checksum: MultibootHeader::checksum_for(flags),
            ..Default::default()
        };
        assert!(h.is_valid());
        assert!(!MultibootHeader { checksum: h.checksum ^ 1, ..h }.is_valid());
    }

    #[test]
    fn mmap_parses_grub_layout() {
        let mut buf = entry(20, 0, 0x9fc00, memory_type::AVAILABLE);
        buf.extend(entry(20, 0x10_0000, 0x7ee0_0000, memory_type::AVAILABLE));
        // A larger `size` (a loader adding fields) is skipped over correctly.
        let mut big = entry(24, 0xfffc_0000, 0x4_0000, memory_type::RESERVED);
        big.extend_from_slice(&[0xaa; 4]);
        buf.extend(big);
        let v: Vec<_> = mmap_entries(&buf).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1], MmapEntry { base_addr: 0x10_0000, length: 0x7ee0_0000, type_: 1 });
        assert_eq!(v[2].type_, memory_type::RESERVED);
        assert!(v[0].is_available());
    }

    #[test]
    fn mmap_rejects_hostile_sizes() {
        // size 0 would never advance in a naive walker.
        assert_eq!(mmap_entries(&entry(0, 1, 2, 1)).count(), 0);
        // size past the end of the buffer.
        assert_eq!(mmap_entries(&entry(u32::MAX, 1, 2, 1)).count(), 0);
        // truncated entry.
        assert_eq!(mmap_entries(&entry(20, 1, 2, 1)[..23]).count(), 0);
        assert_eq!(MmapEntry { base_addr: u64::MAX, length: 5, type_: 1 }.end(), u64::MAX);
    }

    #[test]
    fn info_parse_short_and_long() {
        assert_eq!(MultibootInfo::parse(&[1, 2]), None);
        let mut raw = [0u8; 88];
        raw[0] = info_flags::MEM_MAP as u8 | info_flags::CMDLINE as u8;
        raw[44..48].copy_from_slice(&48u32.to_le_bytes());
        let info = MultibootInfo::parse(&raw).unwrap();
        assert!(info.has(info_flags::MEM_MAP | info_flags::CMDLINE));
        assert!(!info.has(info_flags::MODS));
        assert_eq!(info.mmap_length, 48);
        assert_eq!(info.framebuffer_addr, 0);
        assert!(MultibootInfo::parse(&[0xff; 200]).is_some());
    }

    #[test]
    fn modules_and_strings() {
        let m = MultibootModule { mod_start: 0x20_0000, mod_end: 0x30_0000, string: 0x1000, reserved: 0 };
        let mut buf = Vec::new();
        buf.extend_from_slice(m.as_bytes());
        buf.extend_from_slice(m.as_bytes());
        buf.extend_from_slice(&[1, 2, 3]); // trailing garbage shorter than an entry
        let mods: Vec<_> = modules(&buf).collect();
        assert_eq!(mods, [m, m]);
        assert_eq!(m.len(), Some(0x10_0000));
        assert!(MultibootModule { mod_start: 5, mod_end: 4, ..m }.is_empty());
        assert_eq!(modules_len(u32::MAX), Some(u32::MAX as usize * 16));
        assert_eq!(c_str(b"dom0_mem=512M\0junk"), b"dom0_mem=512M");
        assert_eq!(c_str(b"no-nul"), b"no-nul");
    }

    proptest! {
        #[test]
        fn mmap_walk_is_bounded(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            let n = mmap_entries(&buf).count();
            prop_assert!(n <= buf.len() / 24);
        }

        #[test]
        fn mmap_round_trips(entries in proptest::collection::vec((any::<u64>(), any::<u64>(), 1u32..6), 0..16)) {
            let mut buf = Vec::new();
            for &(a, l, t) in &entries {
                buf.extend(entry(20, a, l, t));
            }
            let got: Vec<_> = mmap_entries(&buf).map(|e| (e.base_addr, e.length, e.type_)).collect();
            prop_assert_eq!(got, entries);
        }
    }
}
