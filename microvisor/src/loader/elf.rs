//! Parsing a Xen PV kernel image: an ELF64 x86_64 executable whose `Xen` notes say where it is
//! linked, where to enter it and what it needs from the hypervisor.
//!
//! The bytes come from a boot module, so every read is bounds-checked and every address sum is
//! checked: no input makes this code panic, loop without bound or allocate more than a small
//! multiple of the input size. Semantics follow Xen's libelf (`elf_xen_parse`,
//! `elf_xen_note_check`, `elf_xen_addr_calc_check`) so that images built for Xen load the same
//! way here; where libelf is silently lenient with malformed input (odd-sized numeric notes,
//! truncated notes) this parser rejects the image instead. The legacy `__xen_guest` section is
//! not supported: every PV kernel since Xen 3.0 carries notes.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use hypercall_abi::elfnote::{feature, note, XEN_NOTE_NAME};

const PAGE_SIZE: u64 = hypercall_abi::PAGE_SIZE as u64;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;
/// PF_X | PF_W | PF_R: libelf only loads PT_LOAD segments with at least one of them.
const PF_RWX: u32 = 7;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const NHDR_SIZE: usize = 12;

/// Upper bound on notes scanned across all note segments and sections. Note regions may
/// overlap one another, so without it a small file could make the scan quadratic.
pub const MAX_NOTES: usize = 4096;
/// Longest string kept from a string note (libelf keeps even less: 16-48 bytes).
pub const MAX_NOTE_STRING: usize = 128;

/// Features (XENFEAT bits) microvisor offers a 64-bit PV guest. A guest that *requires*
/// (`!name` in its FEATURES note) anything outside this set is refused: microvisor has no
/// translated (HVM-style) physmap, never runs a kernel in ring 0 and has no HVM callback vector.
pub const HYPERVISOR_FEATURES: u32 = (1 << feature::WRITABLE_PAGE_TABLES)
    | (1 << feature::WRITABLE_DESCRIPTOR_TABLES)
    | (1 << feature::PAE_PGDIR_ABOVE_4GB)
    | (1 << feature::MMU_PT_UPDATE_PRESERVE_AD)
    | (1 << feature::HIGHMEM_ASSIST)
    | (1 << feature::GNTTAB_MAP_AVAIL_BITS)
    | (1 << feature::DOM0)
    | (1 << feature::DIRECT_MAPPED);

/// What `XENVER_get_features` reports (submap 0) to a 64-bit PV domain: what microvisor
/// really does, in the bits Xen 4.17 reports for PV: `PAE_PGDIR_ABOVE_4GB` (any CR3 works;
/// Xen sets it through the `pae_extended_cr3` assist its builders turn on for these kernels),
/// `MMU_PT_UPDATE_PRESERVE_AD`, `HIGHMEM_ASSIST` (`MMUEXT_CLEAR_PAGE`/`COPY_PAGE`, provided
/// by `mm::mmu`), `GNTTAB_MAP_AVAIL_BITS`, `DIRECT_MAPPED` (a PV domain sees machine frames),
/// and `DOM0` for the hardware domain. Xen also reports `memory_op_vnode_supported`;
/// microvisor has no vNUMA (`XENMEM_get_vnumainfo` is ENOSYS), so it does not claim it.
/// (Writable page tables, which a PV kernel may require in its notes, Xen turns on with
/// `VMASST_TYPE_writable_pagetables`, not with this bitmap.)
pub const fn reported_features(hardware_domain: bool) -> u32 {
    let pv = (1 << feature::PAE_PGDIR_ABOVE_4GB)
        | (1 << feature::MMU_PT_UPDATE_PRESERVE_AD)
        | (1 << feature::HIGHMEM_ASSIST)
        | (1 << feature::GNTTAB_MAP_AVAIL_BITS)
        | (1 << feature::DIRECT_MAPPED);
    if hardware_domain {
        pv | (1 << feature::DOM0)
    } else {
        pv
    }
}

const _: () = assert!(reported_features(true) & !HYPERVISOR_FEATURES == 0);

/// The `PAE_MODE` note. It only matters for 32-bit guests; a 64-bit guest's value is kept for
/// information (Xen does not reject any value for x86_64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PaeMode {
    /// Absent, or a value libelf does not recognise.
    #[default]
    No,
    /// `"yes"`: PAE with extended-cr3 support.
    ExtendedCr3,
    /// A value containing `"bimodal"`.
    Bimodal,
}

/// XENFEAT bitmaps announced by the image (submap 0, the only one defined).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Features the kernel can use (FEATURES names, `!`-names, SUPPORTED_FEATURES).
    pub supported: u32,
    /// Features the kernel cannot run without (`!`-names).
    pub required: u32,
}

impl Features {
    /// True if the kernel announced support for XENFEAT bit `bit`.
    pub fn supports(&self, bit: u32) -> bool {
        bit < 32 && self.supported & (1 << bit) != 0
    }
    /// True if the kernel requires XENFEAT bit `bit`.
    pub fn requires(&self, bit: u32) -> bool {
        bit < 32 && self.required & (1 << bit) != 0
    }
}

/// Every Xen note the image carries, as found (before defaults are applied). Strings are cut
/// at their first NUL and at [`MAX_NOTE_STRING`] bytes; invalid UTF-8 is replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XenNotes {
    pub entry: Option<u64>,
    pub hypercall_page: Option<u64>,
    pub virt_base: Option<u64>,
    pub paddr_offset: Option<u64>,
    pub xen_version: Option<String>,
    pub guest_os: Option<String>,
    pub guest_version: Option<String>,
    pub loader: Option<String>,
    pub pae_mode: PaeMode,
    pub features: Features,
    /// True if a SUPPORTED_FEATURES note was present (Xen then insists on XENFEAT_dom0 for
    /// dom0).
    pub supported_features_note: bool,
    /// BSD_SYMTAB was `"yes"`. microvisor does not load a symbol table; the guest sees none.
    pub bsd_symtab: bool,
    pub hv_start_low: Option<u64>,
    /// First (mask, value) pair of L1_MFN_VALID; a scalar note gives (v, v).
    pub l1_mfn_valid: Option<(u64, u64)>,
    pub suspend_cancel: Option<u64>,
    /// INIT_P2M: where the guest would like its P2M list. The builder maps it there with page
    /// tables of its own (`start_info.mfn_list`, `first_p2m_pfn`, `nr_p2m_frames`), or, if
    /// that place is unusable, in the bootstrap region as for kernels without the note.
    pub init_p2m: Option<u64>,
    /// MOD_START_PFN: the guest accepts an unmapped initrd, which the builder then places
    /// after the mapped region and names by pfn (`SIF_MOD_START_PFN`).
    pub mod_start_pfn: Option<u64>,
    /// PHYS32_ENTRY: a PVH entry point; irrelevant for PV, kept for information.
    pub phys32_entry: Option<u64>,
    /// Number of Xen notes seen.
    pub count: usize,
}

/// One PT_LOAD segment, placed at its final virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Index in the program header table (for messages).
    pub index: usize,
    /// File offset of the segment's bytes.
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    /// `p_paddr`, which libelf (and so Xen) uses for placement.
    pub paddr: u64,
    /// Where the segment lands: `paddr + virt_offset`.
    pub va: u64,
}

impl LoadSegment {
    /// The segment's file bytes in `image`, or `None` if `image` is not the parsed image.
    pub fn file_bytes<'a>(&self, image: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let len = usize::try_from(self.filesz).ok()?;
        image.get(start..start.checked_add(len)?)
    }
}

/// A parsed, validated PV kernel: what the domain builder needs, with libelf's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvImage {
    pub notes: XenNotes,
    /// Entry point (ENTRY note, else `e_entry`), inside `[virt_kstart, virt_kend)`.
    pub entry: u64,
    /// Start of the bootstrap mapping (VIRT_BASE, default 0). Page aligned.
    pub virt_base: u64,
    /// PADDR_OFFSET (default 0).
    pub paddr_offset: u64,
    /// `virt_base - paddr_offset` (wrapping, as in libelf): added to `p_paddr` to place segments.
    pub virt_offset: u64,
    /// Lowest loaded virtual address.
    pub virt_kstart: u64,
    /// One past the highest loaded virtual address (memsz included).
    pub virt_kend: u64,
    /// Page-aligned VA of the hypercall page, inside the kernel's pages.
    pub hypercall_page: Option<u64>,
    /// Loadable segments in program-header order; they do not overlap.
    pub segments: Vec<LoadSegment>,
}

/// Why an image was refused. `Display` gives a one-line message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort { len: usize },
    BadMagic,
    NotElf64 { class: u8 },
    NotLittleEndian { data: u8 },
    NotX86_64 { machine: u16 },
    NotExecutable { e_type: u16 },
    BadPhentsize { size: u16 },
    PhdrTableOutOfBounds { offset: u64, count: u16 },
    BadShentsize { size: u16 },
    ShdrTableOutOfBounds { offset: u64, count: u16 },
    SegmentOutOfFile { index: usize, offset: u64, size: u64 },
    SectionOutOfFile { index: usize, offset: u64, size: u64 },
    FileszExceedsMemsz { index: usize, filesz: u64, memsz: u64 },
    SegmentAddressOverflow { index: usize, paddr: u64, memsz: u64 },
    OverlappingSegments { first: usize, second: usize },
    NoLoadableSegment,
    NoteTruncated { offset: u64 },
    TooManyNotes,
    BadNumericNote { note_type: u32, size: u64 },
    NotXenImage,
    UnknownRequiredFeature { name: String },
    UnsupportedRequiredFeature { bit: u32 },
    WrongLoader { loader: Option<String>, guest_os: Option<String> },
    WrongXenVersion { found: Option<String> },
    PaddrOffsetWithoutVirtBase,
    VirtBaseMisaligned { virt_base: u64 },
    KernelRangeWraps { start: u64, end: u64 },
    VirtBaseAboveKernel { virt_base: u64, kernel_start: u64 },
    EntryOutsideImage { entry: u64, start: u64, end: u64 },
    HypercallPageMisaligned { va: u64 },
    HypercallPageOutsideImage { va: u64, start: u64, end: u64 },
    P2mBaseInsideImage { p2m_base: u64 },
    ImageTooLarge { size: u64, limit: u64 },
}

fn feature_name(bit: u32) -> &'static str {
    feature::NAMES.iter().find(|&&(_, b)| b == bit).map_or("?", |&(n, _)| n)
}

fn opt_str(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("(none)")
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ElfError::*;
        match self {
            TooShort { len } => write!(f, "image of {len} bytes is shorter than an ELF64 header"),
            BadMagic => write!(f, "not an ELF image (bad magic)"),
            NotElf64 { class } => write!(f, "not a 64-bit ELF image (class {class})"),
            NotLittleEndian { data } => write!(f, "not a little-endian ELF image (data encoding {data})"),
            NotX86_64 { machine } => write!(f, "not an x86_64 image (machine {machine})"),
            NotExecutable { e_type } => write!(f, "not an executable (ELF type {e_type}, want ET_EXEC)"),
            BadPhentsize { size } => write!(f, "program header entry size is {size}, want 56"),
            PhdrTableOutOfBounds { offset, count } => {
                write!(
                    f,
                    "program header table ({count} entries at {offset:#x}) extends past the end of the file"
                )
            }
            BadShentsize { size } => write!(f, "section header entry size is {size}, want 64"),
            ShdrTableOutOfBounds { offset, count } => {
                write!(
                    f,
                    "section header table ({count} entries at {offset:#x}) extends past the end of the file"
                )
            }
            SegmentOutOfFile { index, offset, size } => write!(
                f,
                "segment {index} extends past the end of the file (offset {offset:#x} size {size:#x})"
            ),
            SectionOutOfFile { index, offset, size } => write!(
                f,
                "note section {index} extends past the end of the file (offset {offset:#x} size {size:#x})"
            ),
            FileszExceedsMemsz { index, filesz, memsz } => {
                write!(f, "segment {index} has file size {filesz:#x} above its memory size {memsz:#x}")
            }
            SegmentAddressOverflow { index, paddr, memsz } => {
                write!(f, "segment {index} wraps the address space (paddr {paddr:#x} size {memsz:#x})")
            }
            OverlappingSegments { first, second } => {
                write!(f, "loadable segments {first} and {second} overlap")
            }
            NoLoadableSegment => write!(f, "image has no loadable segment"),
            NoteTruncated { offset } => {
                write!(f, "ELF note at file offset {offset:#x} extends past its region")
            }
            TooManyNotes => write!(f, "image has more than {MAX_NOTES} ELF notes"),
            BadNumericNote { note_type, size } => {
                write!(f, "Xen note {note_type} holds a number of {size} bytes (want 1, 2, 4 or 8)")
            }
            NotXenImage => write!(f, "not a Xen PV image: no Xen ELF notes"),
            UnknownRequiredFeature { name } => write!(f, "image requires unknown Xen feature '{name}'"),
            UnsupportedRequiredFeature { bit } => write!(
                f,
                "image requires Xen feature '{}' (bit {bit}), which microvisor does not provide",
                feature_name(*bit)
            ),
            WrongLoader { loader, guest_os } => write!(
                f,
                "image is built for neither the generic loader nor Linux (LOADER '{}', GUEST_OS '{}')",
                opt_str(loader),
                opt_str(guest_os)
            ),
            WrongXenVersion { found } => {
                write!(f, "image is not built for Xen 3.0 (XEN_VERSION '{}')", opt_str(found))
            }
            PaddrOffsetWithoutVirtBase => write!(f, "PADDR_OFFSET note given without VIRT_BASE"),
            VirtBaseMisaligned { virt_base } => write!(f, "VIRT_BASE {virt_base:#x} is not page aligned"),
            KernelRangeWraps { start, end } => {
                write!(f, "kernel range {start:#x}..{end:#x} wraps the address space")
            }
            VirtBaseAboveKernel { virt_base, kernel_start } => {
                write!(f, "VIRT_BASE {virt_base:#x} is above the kernel start {kernel_start:#x}")
            }
            EntryOutsideImage { entry, start, end } => {
                write!(f, "entry point {entry:#x} is outside the loaded image {start:#x}..{end:#x}")
            }
            HypercallPageMisaligned { va } => write!(f, "hypercall page {va:#x} is not page aligned"),
            HypercallPageOutsideImage { va, start, end } => {
                write!(f, "hypercall page {va:#x} is outside the loaded image {start:#x}..{end:#x}")
            }
            P2mBaseInsideImage { p2m_base } => {
                write!(f, "INIT_P2M address {p2m_base:#x} lies inside the kernel")
            }
            ImageTooLarge { size, limit } => {
                write!(f, "image needs {size:#x} bytes of memory, above the limit of {limit:#x}")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds-checked little-endian reads. Fixed-size records are copied out of the input first, then
// decoded from the copy.

/// Copies `N` bytes at `offset` out of `image`, or `None` if they are not all inside it.
fn record<const N: usize>(image: &[u8], offset: u64) -> Option<[u8; N]> {
    let start = usize::try_from(offset).ok()?;
    image.get(start..start.checked_add(N)?)?.try_into().ok()
}

fn le16<const N: usize>(r: &[u8; N], at: usize) -> u16 {
    u16::from_le_bytes([r[at], r[at + 1]])
}

fn le32<const N: usize>(r: &[u8; N], at: usize) -> u32 {
    u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]])
}

fn le64<const N: usize>(r: &[u8; N], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&r[at..at + 8]);
    u64::from_le_bytes(b)
}

/// `[offset, offset + size)` as a slice of `image`, if it lies inside.
fn region(image: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let len = usize::try_from(size).ok()?;
    image.get(start..start.checked_add(len)?)
}

struct Ehdr {
    e_type: u16,
    machine: u16,
    entry: u64,
    phoff: u64,
    shoff: u64,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
    shnum: u16,
}

struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn parse_ehdr(image: &[u8]) -> Result<Ehdr, ElfError> {
    let h: [u8; EHDR_SIZE] = record(image, 0).ok_or(ElfError::TooShort { len: image.len() })?;
    if h[..4] != ELF_MAGIC {
        return Err(ElfError::BadMagic);
    }
    if h[4] != ELFCLASS64 {
        return Err(ElfError::NotElf64 { class: h[4] });
    }
    if h[5] != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian { data: h[5] });
    }
    let ehdr = Ehdr {
        e_type: le16(&h, 16),
        machine: le16(&h, 18),
        entry: le64(&h, 24),
        phoff: le64(&h, 32),
        shoff: le64(&h, 40),
        phentsize: le16(&h, 54),
        phnum: le16(&h, 56),
        shentsize: le16(&h, 58),
        shnum: le16(&h, 60),
    };
    if ehdr.machine != EM_X86_64 {
        return Err(ElfError::NotX86_64 { machine: ehdr.machine });
    }
    if ehdr.e_type != ET_EXEC {
        return Err(ElfError::NotExecutable { e_type: ehdr.e_type });
    }
    Ok(ehdr)
}

/// Checks that a table of `count` entries of `entsize` bytes at `offset` lies in the file.
fn table_in_file(image: &[u8], offset: u64, count: u16, entsize: usize) -> bool {
    let len = (count as u64) * entsize as u64;
    offset.checked_add(len).is_some_and(|end| end <= image.len() as u64)
}

fn phdr_at(image: &[u8], ehdr: &Ehdr, index: usize) -> Phdr {
    // In bounds: the table was checked against the file size before any entry is read.
    let r: [u8; PHDR_SIZE] = record(image, ehdr.phoff + (index * PHDR_SIZE) as u64).unwrap_or([0; PHDR_SIZE]);
    Phdr {
        p_type: le32(&r, 0),
        flags: le32(&r, 4),
        offset: le64(&r, 8),
        paddr: le64(&r, 24),
        filesz: le64(&r, 32),
        memsz: le64(&r, 40),
    }
}

// ---------------------------------------------------------------------------------------------
// Notes

/// Accumulates Xen notes across all note regions.
struct NoteScan {
    notes: XenNotes,
    total: usize,
}

const fn align4(v: u64) -> Option<u64> {
    match v.checked_add(3) {
        Some(x) => Some(x & !3),
        None => None,
    }
}

impl NoteScan {
    /// Walks the notes in `bytes`, which start at file offset `base`. Returns the number of Xen
    /// notes found.
    fn scan(&mut self, bytes: &[u8], base: u64) -> Result<usize, ElfError> {
        let mut found = 0;
        let mut pos: u64 = 0;
        let len = bytes.len() as u64;
        // Fewer than a header's worth of bytes left is trailing padding.
        while len - pos >= NHDR_SIZE as u64 {
            self.total += 1;
            if self.total > MAX_NOTES {
                return Err(ElfError::TooManyNotes);
            }
            let truncated = ElfError::NoteTruncated { offset: base.saturating_add(pos) };
            let h: [u8; NHDR_SIZE] = record(bytes, pos).ok_or(truncated.clone())?;
            let namesz = le32(&h, 0) as u64;
            let descsz = le32(&h, 4) as u64;
            let n_type = le32(&h, 8);
            let name_start = pos + NHDR_SIZE as u64;
            let name_end = name_start + namesz;
            let desc_start = align4(name_end).ok_or(truncated.clone())?;
            let desc_end = desc_start + descsz;
            if desc_end > len || name_end > len {
                return Err(truncated);
            }
            let name = region(bytes, name_start, namesz).ok_or(truncated.clone())?;
            let desc = region(bytes, desc_start, descsz).ok_or(truncated)?;
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            if name == XEN_NOTE_NAME {
                self.xen_note(n_type, desc)?;
                found += 1;
            }
            // The final note's padding may run past the region end; that ends the walk.
            pos = match align4(desc_end) {
                Some(next) if next < len => next,
                _ => break,
            };
        }
        self.notes.count += found;
        Ok(found)
    }

    fn xen_note(&mut self, n_type: u32, desc: &[u8]) -> Result<(), ElfError> {
        let n = &mut self.notes;
        match n_type {
            note::ENTRY => n.entry = Some(numeric(n_type, desc)?),
            note::HYPERCALL_PAGE => n.hypercall_page = Some(numeric(n_type, desc)?),
            note::VIRT_BASE => n.virt_base = Some(numeric(n_type, desc)?),
            note::PADDR_OFFSET => n.paddr_offset = Some(numeric(n_type, desc)?),
            note::INIT_P2M => n.init_p2m = Some(numeric(n_type, desc)?),
            note::HV_START_LOW => n.hv_start_low = Some(numeric(n_type, desc)?),
            note::SUSPEND_CANCEL => n.suspend_cancel = Some(numeric(n_type, desc)?),
            note::MOD_START_PFN => n.mod_start_pfn = Some(numeric(n_type, desc)?),
            note::PHYS32_ENTRY => n.phys32_entry = Some(numeric(n_type, desc)?),
            note::L1_MFN_VALID => {
                // Linux writes a (mask, value) pair of quads.
                n.l1_mfn_valid = Some(match (record::<8>(desc, 0), record::<8>(desc, 8)) {
                    (Some(m), Some(v)) => (u64::from_le_bytes(m), u64::from_le_bytes(v)),
                    _ => {
                        let v = numeric(n_type, desc)?;
                        (v, v)
                    }
                });
            }
            note::XEN_VERSION => n.xen_version = Some(note_string(desc)),
            note::GUEST_OS => n.guest_os = Some(note_string(desc)),
            note::GUEST_VERSION => n.guest_version = Some(note_string(desc)),
            note::LOADER => n.loader = Some(note_string(desc)),
            note::PAE_MODE => {
                // libelf's rules: exactly "yes", else anything mentioning "bimodal".
                let s = c_str(desc);
                if s == b"yes" {
                    n.pae_mode = PaeMode::ExtendedCr3;
                }
                if s.windows(7).any(|w| w == b"bimodal") {
                    n.pae_mode = PaeMode::Bimodal;
                }
            }
            note::BSD_SYMTAB if c_str(desc) == b"yes" => n.bsd_symtab = true,
            note::FEATURES => parse_features(c_str(desc), &mut n.features)?,
            note::SUPPORTED_FEATURES => {
                n.supported_features_note = true;
                // An array of u32 submaps; only submap 0 exists.
                if desc.len().is_multiple_of(4) {
                    if let Some(w) = record::<4>(desc, 0) {
                        n.features.supported |= u32::from_le_bytes(w);
                    }
                }
            }
            // INFO, PHYS32_RELOC and future types mean nothing to a PV builder.
            _ => {}
        }
        Ok(())
    }
}

/// A numeric note: libelf accepts 1, 2, 4 and 8 byte values.
fn numeric(note_type: u32, desc: &[u8]) -> Result<u64, ElfError> {
    let mut b = [0u8; 8];
    match desc.len() {
        1 | 2 | 4 | 8 => {
            b[..desc.len()].copy_from_slice(desc);
            Ok(u64::from_le_bytes(b))
        }
        size => Err(ElfError::BadNumericNote { note_type, size: size as u64 }),
    }
}

/// The bytes of a string note up to its first NUL.
fn c_str(desc: &[u8]) -> &[u8] {
    desc.split(|&b| b == 0).next().unwrap_or(&[])
}

fn note_string(desc: &[u8]) -> String {
    let s = c_str(desc);
    String::from_utf8_lossy(&s[..s.len().min(MAX_NOTE_STRING)]).into_owned()
}

/// Parses a FEATURES string: `|`-separated names, `!` marking a required one. Unknown names
/// are ignored unless required (libelf `elf_xen_parse_features`).
pub fn parse_features(s: &[u8], features: &mut Features) -> Result<(), ElfError> {
    for token in s.split(|&b| b == b'|') {
        let (required, name) = match token.split_first() {
            Some((b'!', rest)) => (true, rest),
            _ => (false, token),
        };
        let bit = core::str::from_utf8(name).ok().and_then(feature::by_name);
        match bit {
            Some(bit) => {
                features.supported |= 1 << bit;
                if required {
                    features.required |= 1 << bit;
                }
            }
            None if required => {
                let shown = &name[..name.len().min(MAX_NOTE_STRING)];
                return Err(ElfError::UnknownRequiredFeature {
                    name: String::from_utf8_lossy(shown).into_owned(),
                });
            }
            None => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The image

/// Parses and validates a Xen PV kernel image. `max_image_size` bounds the memory its loaded
/// segments may span (page-rounded), so a tiny file cannot claim gigabytes of bss.
pub fn parse_pv_image(image: &[u8], max_image_size: u64) -> Result<PvImage, ElfError> {
    let ehdr = parse_ehdr(image)?;
    if ehdr.phnum != 0 && ehdr.phentsize as usize != PHDR_SIZE {
        return Err(ElfError::BadPhentsize { size: ehdr.phentsize });
    }
    if !table_in_file(image, ehdr.phoff, ehdr.phnum, PHDR_SIZE) {
        return Err(ElfError::PhdrTableOutOfBounds { offset: ehdr.phoff, count: ehdr.phnum });
    }
    if ehdr.shnum != 0 {
        if ehdr.shentsize as usize != SHDR_SIZE {
            return Err(ElfError::BadShentsize { size: ehdr.shentsize });
        }
        if !table_in_file(image, ehdr.shoff, ehdr.shnum, SHDR_SIZE) {
            return Err(ElfError::ShdrTableOutOfBounds { offset: ehdr.shoff, count: ehdr.shnum });
        }
    }

    // Loadable segments.
    let mut segments = Vec::new();
    for index in 0..ehdr.phnum as usize {
        let ph = phdr_at(image, &ehdr, index);
        if ph.p_type != PT_LOAD || ph.flags & PF_RWX == 0 {
            continue;
        }
        if region(image, ph.offset, ph.filesz).is_none() {
            return Err(ElfError::SegmentOutOfFile { index, offset: ph.offset, size: ph.filesz });
        }
        if ph.filesz > ph.memsz {
            return Err(ElfError::FileszExceedsMemsz { index, filesz: ph.filesz, memsz: ph.memsz });
        }
        if ph.paddr.checked_add(ph.memsz).is_none() {
            return Err(ElfError::SegmentAddressOverflow { index, paddr: ph.paddr, memsz: ph.memsz });
        }
        segments.push(LoadSegment {
            index,
            offset: ph.offset,
            filesz: ph.filesz,
            memsz: ph.memsz,
            paddr: ph.paddr,
            va: 0,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadableSegment);
    }
    check_overlaps(&segments)?;

    // Notes: PT_NOTE segments first, SHT_NOTE sections only if they held no Xen note.
    let mut scan = NoteScan { notes: XenNotes::default(), total: 0 };
    let mut xen_notes = 0;
    for index in 0..ehdr.phnum as usize {
        let ph = phdr_at(image, &ehdr, index);
        // Some binutils versions leave p_offset 0 in note segments; libelf skips those.
        if ph.p_type != PT_NOTE || ph.offset == 0 {
            continue;
        }
        let bytes = region(image, ph.offset, ph.filesz).ok_or(ElfError::SegmentOutOfFile {
            index,
            offset: ph.offset,
            size: ph.filesz,
        })?;
        xen_notes += scan.scan(bytes, ph.offset)?;
    }
    if xen_notes == 0 {
        // Entry 0 is the null section.
        for index in 1..ehdr.shnum as usize {
            let r: [u8; SHDR_SIZE] =
                record(image, ehdr.shoff + (index * SHDR_SIZE) as u64).unwrap_or([0; SHDR_SIZE]);
            if le32(&r, 4) != SHT_NOTE {
                continue;
            }
            let (offset, size) = (le64(&r, 24), le64(&r, 32));
            let bytes =
                region(image, offset, size).ok_or(ElfError::SectionOutOfFile { index, offset, size })?;
            xen_notes += scan.scan(bytes, offset)?;
        }
    }
    let notes = scan.notes;
    check_notes(&notes, xen_notes)?;
    finish(ehdr.entry, notes, segments, max_image_size)
}

/// Rejects loadable segments whose physical ranges intersect.
fn check_overlaps(segments: &[LoadSegment]) -> Result<(), ElfError> {
    let mut sorted: Vec<&LoadSegment> = segments.iter().filter(|s| s.memsz != 0).collect();
    sorted.sort_unstable_by_key(|s| s.paddr);
    for pair in sorted.windows(2) {
        // No overflow: every paddr + memsz was checked.
        if pair[0].paddr + pair[0].memsz > pair[1].paddr {
            let (a, b) = (pair[0].index.min(pair[1].index), pair[0].index.max(pair[1].index));
            return Err(ElfError::OverlappingSegments { first: a, second: b });
        }
    }
    Ok(())
}

/// libelf's `elf_xen_note_check` and feature checks.
fn check_notes(notes: &XenNotes, xen_notes: usize) -> Result<(), ElfError> {
    if xen_notes == 0 {
        return Err(ElfError::NotXenImage);
    }
    let starts = |s: &Option<String>, p: &str| s.as_deref().is_some_and(|s| s.starts_with(p));
    if !starts(&notes.loader, "generic") && !starts(&notes.guest_os, "linux") {
        return Err(ElfError::WrongLoader { loader: notes.loader.clone(), guest_os: notes.guest_os.clone() });
    }
    if !starts(&notes.xen_version, "xen-3.0") {
        return Err(ElfError::WrongXenVersion { found: notes.xen_version.clone() });
    }
    let missing = notes.features.required & !HYPERVISOR_FEATURES;
    if missing != 0 {
        return Err(ElfError::UnsupportedRequiredFeature { bit: missing.trailing_zeros() });
    }
    Ok(())
}

/// libelf's `elf_xen_addr_calc_check`, plus the checks the builders make on the result.
fn finish(
    e_entry: u64,
    notes: XenNotes,
    mut segments: Vec<LoadSegment>,
    max_image_size: u64,
) -> Result<PvImage, ElfError> {
    if notes.paddr_offset.is_some() && notes.virt_base.is_none() {
        return Err(ElfError::PaddrOffsetWithoutVirtBase);
    }
    let virt_base = notes.virt_base.unwrap_or(0);
    // With notes (the only format supported) an absent PADDR_OFFSET means 0.
    let paddr_offset = notes.paddr_offset.unwrap_or(0);
    if !virt_base.is_multiple_of(PAGE_SIZE) {
        return Err(ElfError::VirtBaseMisaligned { virt_base });
    }
    let virt_offset = virt_base.wrapping_sub(paddr_offset);

    let pstart = segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let pend = segments.iter().map(|s| s.paddr + s.memsz).max().unwrap_or(0);
    let virt_kstart = pstart.wrapping_add(virt_offset);
    let virt_kend = pend.wrapping_add(virt_offset);
    if virt_kstart > virt_kend {
        return Err(ElfError::KernelRangeWraps { start: virt_kstart, end: virt_kend });
    }
    if virt_base > virt_kstart {
        return Err(ElfError::VirtBaseAboveKernel { virt_base, kernel_start: virt_kstart });
    }
    // Every segment lies in [pstart, pend], which maps without wrapping.
    for s in &mut segments {
        s.va = s.paddr.wrapping_add(virt_offset);
    }

    let entry = notes.entry.unwrap_or(e_entry);
    if entry < virt_kstart || entry >= virt_kend {
        return Err(ElfError::EntryOutsideImage { entry, start: virt_kstart, end: virt_kend });
    }
    if let Some(p2m) = notes.init_p2m {
        if p2m >= virt_kstart && p2m < virt_kend {
            return Err(ElfError::P2mBaseInsideImage { p2m_base: p2m });
        }
    }

    let page_start = virt_kstart & !(PAGE_SIZE - 1);
    let page_end = virt_kend
        .checked_add(PAGE_SIZE - 1)
        .map(|e| e & !(PAGE_SIZE - 1))
        .ok_or(ElfError::KernelRangeWraps { start: virt_kstart, end: virt_kend })?;
    if let Some(va) = notes.hypercall_page {
        if !va.is_multiple_of(PAGE_SIZE) {
            return Err(ElfError::HypercallPageMisaligned { va });
        }
        if va < page_start || va >= page_end {
            return Err(ElfError::HypercallPageOutsideImage { va, start: virt_kstart, end: virt_kend });
        }
    }
    let size = page_end - page_start;
    if size > max_image_size {
        return Err(ElfError::ImageTooLarge { size, limit: max_image_size });
    }

    Ok(PvImage {
        entry,
        virt_base,
        paddr_offset,
        virt_offset,
        virt_kstart,
        virt_kend,
        hypercall_page: notes.hypercall_page,
        segments,
        notes,
    })
}

/// A small ELF writer for tests: builds Xen PV images (and broken variants) in memory.
#[cfg(test)]
pub(crate) mod testelf {
    use super::*;
    use alloc::vec;

    pub const BASE: u64 = 0xffff_ffff_8000_0000;

    pub struct Seg {
        pub p_type: u32,
        pub flags: u32,
        pub paddr: u64,
        pub vaddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    pub struct Note {
        pub name: Vec<u8>,
        pub n_type: u32,
        pub desc: Vec<u8>,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum NotePlace {
        Segment,
        Section,
        Both,
    }

    pub struct TestElf {
        pub class: u8,
        pub data: u8,
        pub e_type: u16,
        pub machine: u16,
        pub entry: u64,
        pub segs: Vec<Seg>,
        pub notes: Vec<Note>,
        pub note_place: NotePlace,
    }

    pub fn str_desc(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    pub fn u64_desc(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// Recognisable bytes for segment `seed`.
    pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1).collect()
    }

    /// File offset of program header `i` in images built by [`TestElf::build`].
    pub fn phdr_offset(i: usize) -> usize {
        EHDR_SIZE + i * PHDR_SIZE
    }

    impl TestElf {
        /// A PV kernel linked like pv-guest-kernel's guest.ld: text (with the hypercall page
        /// at BASE + 0x1000), then data + bss, VIRT_BASE = BASE, PADDR_OFFSET = 0.
        pub fn kernel() -> TestElf {
            let mut t = TestElf {
                class: ELFCLASS64,
                data: ELFDATA2LSB,
                e_type: ET_EXEC,
                machine: EM_X86_64,
                entry: BASE,
                segs: vec![
                    Seg {
                        p_type: PT_LOAD,
                        flags: 5,
                        paddr: 0,
                        vaddr: BASE,
                        data: pattern(1, 0x2000),
                        memsz: 0x2000,
                    },
                    Seg {
                        p_type: PT_LOAD,
                        flags: 6,
                        paddr: 0x2000,
                        vaddr: BASE + 0x2000,
                        data: pattern(2, 0x800),
                        memsz: 0x3000,
                    },
                ],
                notes: Vec::new(),
                note_place: NotePlace::Segment,
            };
            t.set_note(note::XEN_VERSION, str_desc("xen-3.0"));
            t.set_note(note::GUEST_OS, str_desc("microvisor-test"));
            t.set_note(note::GUEST_VERSION, str_desc("0.1"));
            t.set_note(note::LOADER, str_desc("generic"));
            t.set_note(note::VIRT_BASE, u64_desc(BASE));
            t.set_note(note::PADDR_OFFSET, u64_desc(0));
            t.set_note(note::ENTRY, u64_desc(BASE + 0x10));
            t.set_note(note::HYPERCALL_PAGE, u64_desc(BASE + 0x1000));
            t.set_note(note::FEATURES, str_desc("!writable_page_tables|pae_pgdir_above_4gb"));
            t.set_note(note::PAE_MODE, str_desc("yes"));
            t
        }

        /// Replaces (or adds) the Xen note of type `n_type`.
        pub fn set_note(&mut self, n_type: u32, desc: Vec<u8>) {
            self.remove_note(n_type);
            self.notes.push(Note { name: b"Xen\0".to_vec(), n_type, desc });
        }

        pub fn remove_note(&mut self, n_type: u32) {
            self.notes.retain(|n| !(n.name == b"Xen\0" && n.n_type == n_type));
        }

        pub fn note_blob(&self) -> Vec<u8> {
            let mut out = Vec::new();
            for n in &self.notes {
                out.extend_from_slice(&(n.name.len() as u32).to_le_bytes());
                out.extend_from_slice(&(n.desc.len() as u32).to_le_bytes());
                out.extend_from_slice(&n.n_type.to_le_bytes());
                out.extend_from_slice(&n.name);
                out.resize(out.len().next_multiple_of(4), 0);
                out.extend_from_slice(&n.desc);
                out.resize(out.len().next_multiple_of(4), 0);
            }
            out
        }

        pub fn build(&self) -> Vec<u8> {
            let blob = self.note_blob();
            let note_seg = matches!(self.note_place, NotePlace::Segment | NotePlace::Both);
            let note_sec = matches!(self.note_place, NotePlace::Section | NotePlace::Both);
            let phnum = self.segs.len() + note_seg as usize;
            let mut out = vec![0u8; EHDR_SIZE + phnum * PHDR_SIZE];
            let notes_off = out.len();
            out.extend_from_slice(&blob);
            let mut seg_offs = Vec::new();
            for s in &self.segs {
                out.resize(out.len().next_multiple_of(16), 0);
                seg_offs.push(out.len());
                out.extend_from_slice(&s.data);
            }
            out.resize(out.len().next_multiple_of(8), 0);
            let shoff = out.len();
            let shnum: u16 = if note_sec { 2 } else { 0 };
            if note_sec {
                out.extend_from_slice(&[0u8; SHDR_SIZE]);
                let mut sh = [0u8; SHDR_SIZE];
                sh[4..8].copy_from_slice(&SHT_NOTE.to_le_bytes());
                sh[24..32].copy_from_slice(&(notes_off as u64).to_le_bytes());
                sh[32..40].copy_from_slice(&(blob.len() as u64).to_le_bytes());
                sh[48..56].copy_from_slice(&4u64.to_le_bytes());
                out.extend_from_slice(&sh);
            }

            let h = &mut out[..EHDR_SIZE];
            h[..4].copy_from_slice(&ELF_MAGIC);
            h[4] = self.class;
            h[5] = self.data;
            h[6] = 1;
            h[16..18].copy_from_slice(&self.e_type.to_le_bytes());
            h[18..20].copy_from_slice(&self.machine.to_le_bytes());
            h[20..24].copy_from_slice(&1u32.to_le_bytes());
            h[24..32].copy_from_slice(&self.entry.to_le_bytes());
            h[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
            h[40..48].copy_from_slice(&(if note_sec { shoff as u64 } else { 0 }).to_le_bytes());
            h[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
            h[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
            h[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
            h[58..60].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
            h[60..62].copy_from_slice(&shnum.to_le_bytes());

            let mut phdrs: Vec<(u32, u32, u64, u64, u64, u64, u64)> = self
                .segs
                .iter()
                .zip(&seg_offs)
                .map(|(s, &o)| (s.p_type, s.flags, o as u64, s.vaddr, s.paddr, s.data.len() as u64, s.memsz))
                .collect();
            if note_seg {
                let n = blob.len() as u64;
                phdrs.push((PT_NOTE, 4, notes_off as u64, 0, 0, n, n));
            }
            for (i, (t, fl, off, va, pa, fsz, msz)) in phdrs.into_iter().enumerate() {
                let p = &mut out[phdr_offset(i)..phdr_offset(i) + PHDR_SIZE];
                p[0..4].copy_from_slice(&t.to_le_bytes());
                p[4..8].copy_from_slice(&fl.to_le_bytes());
                p[8..16].copy_from_slice(&off.to_le_bytes());
                p[16..24].copy_from_slice(&va.to_le_bytes());
                p[24..32].copy_from_slice(&pa.to_le_bytes());
                p[32..40].copy_from_slice(&fsz.to_le_bytes());
                p[40..48].copy_from_slice(&msz.to_le_bytes());
                p[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testelf::*;
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    const LIMIT: u64 = 64 << 20;

    fn parse(t: &TestElf) -> Result<PvImage, ElfError> {
        parse_pv_image(&t.build(), LIMIT)
    }

    fn err(t: &TestElf) -> ElfError {
        parse(t).expect_err("image should be refused")
    }

    fn put(bytes: &mut [u8], at: usize, v: &[u8]) {
        bytes[at..at + v.len()].copy_from_slice(v);
    }

    #[test]
    fn accepts_a_pv_kernel() {
        let t = TestElf::kernel();
        let bytes = t.build();
        let img = parse_pv_image(&bytes, LIMIT).unwrap();
        assert_eq!(img.virt_base, BASE);
        assert_eq!(img.paddr_offset, 0);
        assert_eq!(img.virt_offset, BASE);
        assert_eq!(img.virt_kstart, BASE);
        assert_eq!(img.virt_kend, BASE + 0x5000);
        assert_eq!(img.entry, BASE + 0x10, "the ENTRY note wins over e_entry");
        assert_eq!(img.hypercall_page, Some(BASE + 0x1000));
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.segments[1].va, BASE + 0x2000);
        assert_eq!(img.segments[1].file_bytes(&bytes).unwrap(), &t.segs[1].data[..]);
        let n = &img.notes;
        assert_eq!(n.guest_os.as_deref(), Some("microvisor-test"));
        assert_eq!(n.guest_version.as_deref(), Some("0.1"));
        assert_eq!(n.xen_version.as_deref(), Some("xen-3.0"));
        assert_eq!(n.loader.as_deref(), Some("generic"));
        assert_eq!(n.pae_mode, PaeMode::ExtendedCr3);
        assert!(n.features.requires(feature::WRITABLE_PAGE_TABLES));
        assert!(n.features.supports(feature::PAE_PGDIR_ABOVE_4GB));
        assert!(!n.features.requires(feature::PAE_PGDIR_ABOVE_4GB));
        assert!(!n.supported_features_note);
        assert_eq!(n.count, 10);
    }

    #[test]
    fn entry_defaults_to_e_entry() {
        let mut t = TestElf::kernel();
        t.remove_note(note::ENTRY);
        t.entry = BASE + 0x44;
        assert_eq!(parse(&t).unwrap().entry, BASE + 0x44);
        t.entry = BASE + 0x5000;
        assert!(matches!(err(&t), ElfError::EntryOutsideImage { entry, .. } if entry == BASE + 0x5000));
        t.entry = BASE - 1;
        assert!(matches!(err(&t), ElfError::EntryOutsideImage { .. }));
    }

    #[test]
    fn low_linked_kernel_without_virt_base() {
        // Like a classic mini-os: linked at 1 MiB, no VIRT_BASE/PADDR_OFFSET, 4-byte numbers.
        let mut t = TestElf::kernel();
        t.remove_note(note::VIRT_BASE);
        t.remove_note(note::PADDR_OFFSET);
        t.segs[0].paddr = 0x10_0000;
        t.segs[1].paddr = 0x10_2000;
        t.set_note(note::ENTRY, 0x10_0000u32.to_le_bytes().to_vec());
        t.set_note(note::HYPERCALL_PAGE, 0x10_1000u32.to_le_bytes().to_vec());
        let img = parse(&t).unwrap();
        assert_eq!((img.virt_base, img.paddr_offset), (0, 0));
        assert_eq!((img.virt_kstart, img.virt_kend), (0x10_0000, 0x10_5000));
        assert_eq!(img.entry, 0x10_0000);
        assert_eq!(img.hypercall_page, Some(0x10_1000));
    }

    #[test]
    fn paddr_offset_shifts_placement() {
        // Old Linux style: paddrs equal vaddrs, PADDR_OFFSET = VIRT_BASE.
        let mut t = TestElf::kernel();
        t.set_note(note::PADDR_OFFSET, u64_desc(BASE));
        t.segs[0].paddr = BASE + 0x20_0000;
        t.segs[1].paddr = BASE + 0x20_2000;
        t.set_note(note::ENTRY, u64_desc(BASE + 0x20_0000));
        t.set_note(note::HYPERCALL_PAGE, u64_desc(BASE + 0x20_1000));
        let img = parse(&t).unwrap();
        assert_eq!(img.virt_offset, 0);
        assert_eq!(img.virt_kstart, BASE + 0x20_0000);
        assert_eq!(img.segments[1].va, BASE + 0x20_2000);

        t.remove_note(note::VIRT_BASE);
        assert_eq!(err(&t), ElfError::PaddrOffsetWithoutVirtBase);
    }

    #[test]
    fn header_rejections() {
        let good = TestElf::kernel().build();
        assert_eq!(parse_pv_image(&good[..40], LIMIT), Err(ElfError::TooShort { len: 40 }));
        assert_eq!(parse_pv_image(&[], LIMIT), Err(ElfError::TooShort { len: 0 }));
        let mut b = good.clone();
        b[1] = b'e';
        assert_eq!(parse_pv_image(&b, LIMIT), Err(ElfError::BadMagic));

        let mut t = TestElf::kernel();
        t.class = 1;
        assert_eq!(err(&t), ElfError::NotElf64 { class: 1 });
        let mut t = TestElf::kernel();
        t.data = 2;
        assert_eq!(err(&t), ElfError::NotLittleEndian { data: 2 });
        let mut t = TestElf::kernel();
        t.machine = 3;
        assert_eq!(err(&t), ElfError::NotX86_64 { machine: 3 });
        let mut t = TestElf::kernel();
        t.e_type = 3;
        assert_eq!(err(&t), ElfError::NotExecutable { e_type: 3 });

        let mut b = good.clone();
        put(&mut b, 54, &32u16.to_le_bytes());
        assert_eq!(parse_pv_image(&b, LIMIT), Err(ElfError::BadPhentsize { size: 32 }));
        let mut b = good.clone();
        put(&mut b, 32, &(good.len() as u64 - 100).to_le_bytes());
        assert!(matches!(parse_pv_image(&b, LIMIT), Err(ElfError::PhdrTableOutOfBounds { count: 3, .. })));
        let mut b = good.clone();
        put(&mut b, 32, &u64::MAX.to_le_bytes());
        assert!(matches!(parse_pv_image(&b, LIMIT), Err(ElfError::PhdrTableOutOfBounds { .. })));
        let mut b = good.clone();
        put(&mut b, 56, &0xffffu16.to_le_bytes());
        assert!(matches!(
            parse_pv_image(&b, LIMIT),
            Err(ElfError::PhdrTableOutOfBounds { count: 0xffff, .. })
        ));

        let mut t = TestElf::kernel();
        t.note_place = NotePlace::Both;
        let good = t.build();
        assert!(parse_pv_image(&good, LIMIT).is_ok());
        let mut b = good.clone();
        put(&mut b, 58, &40u16.to_le_bytes());
        assert_eq!(parse_pv_image(&b, LIMIT), Err(ElfError::BadShentsize { size: 40 }));
        let mut b = good.clone();
        put(&mut b, 40, &(good.len() as u64 - 64).to_le_bytes());
        assert!(matches!(parse_pv_image(&b, LIMIT), Err(ElfError::ShdrTableOutOfBounds { count: 2, .. })));
    }

    #[test]
    fn segment_rejections() {
        let good = TestElf::kernel().build();
        // Segment 1: offset past the end, then size past the end, then size overflowing.
        for (field, val) in [(8, good.len() as u64), (32, good.len() as u64), (32, u64::MAX)] {
            let mut b = good.clone();
            put(&mut b, phdr_offset(1) + field, &val.to_le_bytes());
            put(&mut b, phdr_offset(1) + 40, &u64::MAX.to_le_bytes());
            assert!(
                matches!(parse_pv_image(&b, LIMIT), Err(ElfError::SegmentOutOfFile { index: 1, .. })),
                "field {field} = {val:#x}"
            );
        }
        // The note segment (index 2) too.
        let mut b = good.clone();
        put(&mut b, phdr_offset(2) + 32, &(good.len() as u64).to_le_bytes());
        let e = parse_pv_image(&b, LIMIT).unwrap_err();
        assert!(matches!(e, ElfError::SegmentOutOfFile { index: 2, .. }));
        assert!(e.to_string().starts_with("segment 2 extends past the end of the file (offset 0x"), "{e}");

        let mut t = TestElf::kernel();
        t.segs[1].memsz = 0x100;
        assert_eq!(err(&t), ElfError::FileszExceedsMemsz { index: 1, filesz: 0x800, memsz: 0x100 });

        let mut t = TestElf::kernel();
        t.segs[1].paddr = u64::MAX - 0x1000;
        assert!(matches!(err(&t), ElfError::SegmentAddressOverflow { index: 1, .. }));

        let mut t = TestElf::kernel();
        t.segs[1].paddr = 0x1fff;
        assert_eq!(err(&t), ElfError::OverlappingSegments { first: 0, second: 1 });
        t.segs[1].paddr = 0x1000_0000;
        t.segs[0].paddr = 0x1000_1000;
        assert_eq!(err(&t), ElfError::OverlappingSegments { first: 0, second: 1 });
        // Touching is fine, and empty segments overlap nothing.
        let mut t = TestElf::kernel();
        t.segs.push(Seg { p_type: PT_LOAD, flags: 4, paddr: 0x1000, vaddr: 0, data: vec![], memsz: 0 });
        assert!(parse(&t).is_ok());

        let mut t = TestElf::kernel();
        for s in &mut t.segs {
            s.flags = 0;
        }
        assert_eq!(err(&t), ElfError::NoLoadableSegment, "PT_LOAD without R/W/X is not loadable");
        t.segs.clear();
        assert_eq!(err(&t), ElfError::NoLoadableSegment);
    }

    #[test]
    fn unloadable_load_segments_are_ignored() {
        // A PT_LOAD with no permission bits is skipped entirely, even if it overlaps.
        let mut t = TestElf::kernel();
        t.segs.push(Seg { p_type: PT_LOAD, flags: 0, paddr: 0, vaddr: 0, data: vec![1; 16], memsz: 1 << 40 });
        let img = parse(&t).unwrap();
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.virt_kend, BASE + 0x5000);
    }

    #[test]
    fn address_checks() {
        let mut t = TestElf::kernel();
        t.set_note(note::HYPERCALL_PAGE, u64_desc(BASE + 0x1800));
        assert_eq!(err(&t), ElfError::HypercallPageMisaligned { va: BASE + 0x1800 });
        t.set_note(note::HYPERCALL_PAGE, u64_desc(BASE + 0x5000));
        assert!(matches!(err(&t), ElfError::HypercallPageOutsideImage { .. }));
        t.set_note(note::HYPERCALL_PAGE, u64_desc(BASE - 0x1000));
        assert!(matches!(err(&t), ElfError::HypercallPageOutsideImage { .. }));
        // The last page (partly bss) is still the kernel's.
        t.set_note(note::HYPERCALL_PAGE, u64_desc(BASE + 0x4000));
        assert!(parse(&t).is_ok());
        t.remove_note(note::HYPERCALL_PAGE);
        assert_eq!(parse(&t).unwrap().hypercall_page, None);

        // VIRT_BASE below the kernel start is fine (the gap is mapped too); above it is not.
        let mut t = TestElf::kernel();
        t.set_note(note::VIRT_BASE, u64_desc(BASE - 0x10_0000));
        t.set_note(note::PADDR_OFFSET, u64_desc(0u64.wrapping_sub(0x10_0000)));
        let img = parse(&t).unwrap();
        assert_eq!((img.virt_base, img.virt_kstart), (BASE - 0x10_0000, BASE));
        t.set_note(note::VIRT_BASE, u64_desc(BASE + 0x1000));
        t.set_note(note::PADDR_OFFSET, u64_desc(0x1000));
        assert_eq!(err(&t), ElfError::VirtBaseAboveKernel { virt_base: BASE + 0x1000, kernel_start: BASE });

        let mut t = TestElf::kernel();
        t.set_note(note::VIRT_BASE, u64_desc(BASE + 0x10));
        assert_eq!(err(&t), ElfError::VirtBaseMisaligned { virt_base: BASE + 0x10 });

        let mut t = TestElf::kernel();
        t.set_note(note::VIRT_BASE, u64_desc(0xffff_ffff_ffff_e000));
        t.set_note(note::ENTRY, u64_desc(0xffff_ffff_ffff_e000));
        t.remove_note(note::HYPERCALL_PAGE);
        assert!(matches!(err(&t), ElfError::KernelRangeWraps { .. }));

        let mut t = TestElf::kernel();
        t.set_note(note::INIT_P2M, u64_desc(BASE + 0x3000));
        assert_eq!(err(&t), ElfError::P2mBaseInsideImage { p2m_base: BASE + 0x3000 });
        t.set_note(note::INIT_P2M, u64_desc(0xffff_ea00_0000_0000));
        assert_eq!(parse(&t).unwrap().notes.init_p2m, Some(0xffff_ea00_0000_0000));
    }

    #[test]
    fn image_size_limit() {
        let mut t = TestElf::kernel();
        t.segs[1].memsz = 1 << 30;
        assert_eq!(err(&t), ElfError::ImageTooLarge { size: 0x2000 + (1 << 30), limit: LIMIT });
        let t = TestElf::kernel();
        assert_eq!(parse_pv_image(&t.build(), 0x5000).unwrap().virt_kend, BASE + 0x5000);
        assert!(matches!(parse_pv_image(&t.build(), 0x4fff), Err(ElfError::ImageTooLarge { .. })));
    }

    #[test]
    fn loader_and_version_rules() {
        let mut t = TestElf::kernel();
        t.remove_note(note::GUEST_OS);
        assert!(parse(&t).is_ok(), "LOADER=generic suffices");
        t.set_note(note::LOADER, str_desc("elf"));
        assert!(matches!(err(&t), ElfError::WrongLoader { .. }));
        t.set_note(note::GUEST_OS, str_desc("linux"));
        assert!(parse(&t).is_ok(), "GUEST_OS=linux suffices");
        t.remove_note(note::LOADER);
        assert!(parse(&t).is_ok());
        t.set_note(note::GUEST_OS, str_desc("Mini-OS"));
        let e = err(&t);
        assert_eq!(
            e.to_string(),
            "image is built for neither the generic loader nor Linux (LOADER '(none)', GUEST_OS 'Mini-OS')"
        );
        t.set_note(note::LOADER, str_desc("generic-ish"));
        assert!(parse(&t).is_ok(), "libelf compares prefixes");

        t.remove_note(note::XEN_VERSION);
        assert_eq!(err(&t), ElfError::WrongXenVersion { found: None });
        t.set_note(note::XEN_VERSION, str_desc("xen-2.0"));
        assert!(matches!(err(&t), ElfError::WrongXenVersion { found: Some(_) }));
        t.set_note(note::XEN_VERSION, str_desc("xen-3.0-x86_64"));
        assert!(parse(&t).is_ok());
    }

    #[test]
    fn feature_rules() {
        for (name, bit) in [
            ("auto_translated_physmap", feature::AUTO_TRANSLATED_PHYSMAP),
            ("supervisor_mode_kernel", feature::SUPERVISOR_MODE_KERNEL),
            ("hvm_callback_vector", feature::HVM_CALLBACK_VECTOR),
        ] {
            let mut t = TestElf::kernel();
            t.set_note(note::FEATURES, str_desc(&format!("writable_page_tables|!{name}")));
            let e = err(&t);
            assert_eq!(e, ElfError::UnsupportedRequiredFeature { bit });
            assert!(e.to_string().contains(name), "{e}");
            // Merely supported is fine.
            t.set_note(note::FEATURES, str_desc(name));
            let img = parse(&t).unwrap();
            assert!(img.notes.features.supports(bit) && !img.notes.features.requires(bit));
        }
        let mut t = TestElf::kernel();
        t.set_note(note::FEATURES, str_desc("!no_such_feature"));
        assert_eq!(err(&t), ElfError::UnknownRequiredFeature { name: "no_such_feature".into() });
        t.set_note(note::FEATURES, str_desc("!"));
        assert!(matches!(err(&t), ElfError::UnknownRequiredFeature { .. }));
        t.set_note(note::FEATURES, str_desc("no_such_feature||dom0|"));
        let img = parse(&t).unwrap();
        assert_eq!(img.notes.features, Features { supported: 1 << feature::DOM0, required: 0 });

        // SUPPORTED_FEATURES adds to the supported map (4 or 8 bytes: first u32 submap).
        t.set_note(note::SUPPORTED_FEATURES, 0x5u32.to_le_bytes().to_vec());
        let img = parse(&t).unwrap();
        assert!(img.notes.supported_features_note);
        assert_eq!(img.notes.features.supported, 0x5 | (1 << feature::DOM0));
        t.set_note(note::SUPPORTED_FEATURES, u64_desc(0x8_0000_0002));
        assert_eq!(parse(&t).unwrap().notes.features.supported, 0x2 | (1 << feature::DOM0));
        t.set_note(note::SUPPORTED_FEATURES, vec![1, 2, 3]);
        assert_eq!(parse(&t).unwrap().notes.features.supported, 1 << feature::DOM0);

        let mut f = Features::default();
        parse_features(b"!writable_page_tables|writable_descriptor_tables", &mut f).unwrap();
        assert_eq!(f, Features { supported: 3, required: 1 });
    }

    #[test]
    fn numeric_notes_of_any_libelf_size() {
        let mut t = TestElf::kernel();
        for (desc, want) in [
            (vec![0x42], 0x42),
            (vec![0x34, 0x12], 0x1234),
            (0xdead_beefu32.to_le_bytes().to_vec(), 0xdead_beef),
            (u64_desc(1 << 40), 1 << 40),
        ] {
            t.set_note(note::SUSPEND_CANCEL, desc);
            assert_eq!(parse(&t).unwrap().notes.suspend_cancel, Some(want));
        }
        for size in [0usize, 3, 5, 16] {
            t.set_note(note::VIRT_BASE, vec![0; size]);
            assert_eq!(err(&t), ElfError::BadNumericNote { note_type: note::VIRT_BASE, size: size as u64 });
        }
    }

    #[test]
    fn informational_notes() {
        let mut t = TestElf::kernel();
        t.set_note(note::PAE_MODE, str_desc("bimodal"));
        t.set_note(note::BSD_SYMTAB, str_desc("yes"));
        t.set_note(note::HV_START_LOW, u64_desc(0xf580_0000));
        let mut pair = u64_desc(1);
        pair.extend_from_slice(&u64_desc(1));
        t.set_note(note::L1_MFN_VALID, pair);
        t.set_note(note::MOD_START_PFN, 1u32.to_le_bytes().to_vec());
        t.set_note(note::PHYS32_ENTRY, 0x100_0000u32.to_le_bytes().to_vec());
        t.set_note(note::INFO, vec![1, 2, 3]);
        t.set_note(99, vec![9; 5]);
        let n = parse(&t).unwrap().notes;
        assert_eq!(n.pae_mode, PaeMode::Bimodal);
        assert!(n.bsd_symtab);
        assert_eq!(n.hv_start_low, Some(0xf580_0000));
        assert_eq!(n.l1_mfn_valid, Some((1, 1)));
        assert_eq!(n.mod_start_pfn, Some(1));
        assert_eq!(n.phys32_entry, Some(0x100_0000));
        t.set_note(note::PAE_MODE, str_desc("no"));
        t.set_note(note::L1_MFN_VALID, 7u32.to_le_bytes().to_vec());
        let n = parse(&t).unwrap().notes;
        assert_eq!(n.pae_mode, PaeMode::No, "no PAE_MODE value is refused for a 64-bit guest");
        assert_eq!(n.l1_mfn_valid, Some((7, 7)));
        // Long and non-UTF-8 strings are kept, cut and repaired.
        let mut long = vec![b'x'; 300];
        long.push(0xff);
        t.set_note(note::GUEST_VERSION, long);
        let v = parse(&t).unwrap().notes.guest_version.unwrap();
        assert_eq!(v, "x".repeat(MAX_NOTE_STRING));
    }

    #[test]
    fn notes_from_sections_and_foreign_notes() {
        let mut t = TestElf::kernel();
        t.note_place = NotePlace::Section;
        let img = parse(&t).unwrap();
        assert_eq!(img.entry, BASE + 0x10);
        // With both, the segment's notes are used and the section is not scanned again.
        t.note_place = NotePlace::Both;
        assert_eq!(parse(&t).unwrap().notes.count, 10);

        // Notes of other owners are skipped; with no Xen note the image is not a PV kernel.
        let mut t = TestElf::kernel();
        for n in &mut t.notes {
            n.name = b"GNU\0".to_vec();
        }
        assert_eq!(err(&t), ElfError::NotXenImage);
        t.notes.clear();
        assert_eq!(err(&t), ElfError::NotXenImage);
        // A name of "Xen" without its NUL still counts.
        let mut t = TestElf::kernel();
        for n in &mut t.notes {
            n.name = b"Xen".to_vec();
        }
        assert!(parse(&t).is_ok());
    }

    #[test]
    fn note_segment_at_offset_zero_is_skipped() {
        let t = TestElf::kernel();
        let mut b = t.build();
        put(&mut b, phdr_offset(2) + 8, &0u64.to_le_bytes());
        assert_eq!(parse_pv_image(&b, LIMIT), Err(ElfError::NotXenImage));
    }

    #[test]
    fn truncated_and_excessive_notes() {
        let t = TestElf::kernel();
        let good = t.build();
        let notes_off = phdr_offset(3);
        // First note's descsz far past the segment.
        let mut b = good.clone();
        put(&mut b, notes_off + 4, &0xffff_fff0u32.to_le_bytes());
        assert_eq!(parse_pv_image(&b, LIMIT), Err(ElfError::NoteTruncated { offset: notes_off as u64 }));
        let mut b = good.clone();
        put(&mut b, notes_off, &u32::MAX.to_le_bytes());
        assert!(matches!(parse_pv_image(&b, LIMIT), Err(ElfError::NoteTruncated { .. })));
        // Trailing bytes shorter than a note header are padding.
        let mut b = good.clone();
        let blob_len = t.note_blob().len() as u64;
        put(&mut b, phdr_offset(2) + 32, &(blob_len + 8).to_le_bytes());
        assert!(parse_pv_image(&b, LIMIT).is_ok());

        let mut t = TestElf::kernel();
        for _ in 0..MAX_NOTES {
            t.notes.push(Note { name: vec![], n_type: 0, desc: vec![] });
        }
        assert_eq!(err(&t), ElfError::TooManyNotes);
    }

    #[test]
    fn every_error_displays_on_one_line() {
        let errors = [
            ElfError::TooShort { len: 1 },
            ElfError::SegmentOutOfFile { index: 2, offset: 0x40, size: 0x1000 },
            ElfError::UnsupportedRequiredFeature { bit: 2 },
            ElfError::WrongXenVersion { found: Some("xen-2.0".into()) },
            ElfError::ImageTooLarge { size: 1, limit: 0 },
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s}");
        }
        assert_eq!(
            ElfError::SegmentOutOfFile { index: 2, offset: 0x40, size: 0x1000 }.to_string(),
            "segment 2 extends past the end of the file (offset 0x40 size 0x1000)"
        );
    }

    /// Invariants of any image the parser accepts.
    fn check_accepted(bytes: &[u8], img: &PvImage) {
        assert!(img.virt_base <= img.virt_kstart && img.virt_kstart <= img.virt_kend);
        assert!(img.entry >= img.virt_kstart && img.entry < img.virt_kend);
        assert_eq!(img.virt_base % PAGE_SIZE, 0);
        for s in &img.segments {
            assert!(s.file_bytes(bytes).is_some());
            assert!(s.filesz <= s.memsz);
            assert!(s.va >= img.virt_kstart && s.va + s.memsz <= img.virt_kend);
        }
        if let Some(hc) = img.hypercall_page {
            assert_eq!(hc % PAGE_SIZE, 0);
        }
        assert!(img.virt_kend - img.virt_kstart <= LIMIT);
    }

    fn interesting() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 0xfff),
            Just(0x8000_0000_0000_0000),
            Just(u32::MAX as u64),
            Just(0x1000),
            Just(BASE),
            any::<u64>(),
            0u64..0x4000,
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_pv_image(&bytes, LIMIT);
            // Same, behind a valid ELF64 x86_64 identification.
            let mut b = TestElf::kernel().build()[..64].to_vec();
            b.extend_from_slice(&bytes);
            if let Ok(img) = parse_pv_image(&b, LIMIT) {
                check_accepted(&b, &img);
            }
        }

        #[test]
        fn byte_mutations_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let mut b = TestElf::kernel().build();
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            if let Ok(img) = parse_pv_image(&b, LIMIT) {
                check_accepted(&b, &img);
            }
        }

        #[test]
        fn field_mutations_never_panic(
            at in any::<prop::sample::Index>(),
            width in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
            val in interesting(),
            headers_only in any::<bool>(),
        ) {
            let t = TestElf::kernel();
            let mut b = t.build();
            // Bias towards the headers and notes, where the structure lives.
            let span = if headers_only { phdr_offset(3) + t.note_blob().len() } else { b.len() };
            let at = (at.index(span) & !(width - 1)).min(b.len() - width);
            b[at..at + width].copy_from_slice(&val.to_le_bytes()[..width]);
            if let Ok(img) = parse_pv_image(&b, LIMIT) {
                check_accepted(&b, &img);
            }
        }
    }
}
