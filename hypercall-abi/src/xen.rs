//! The core of `public/xen.h` and `public/arch-x86/xen{,-x86_64}.h`: the boot-time structures a
//! PV guest finds (start_info, shared_info, vcpu_info), trap and register layouts, page-table
//! update requests, and the fixed x86_64 PV address-space layout.

use crate::types::{DomId, Port};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------------------------
// Address space (arch-x86/xen-x86_64.h, asm/config.h)

/// Start of the hypervisor's reserved hole: L4 slots 256..=271.
pub const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End (exclusive) of the hypervisor's reserved hole.
pub const HYPERVISOR_VIRT_END: u64 = 0xffff_8800_0000_0000;
/// First L4 slot reserved for the hypervisor.
pub const FIRST_HYPERVISOR_L4_SLOT: usize = 256;
/// Last L4 slot reserved for the hypervisor.
pub const LAST_HYPERVISOR_L4_SLOT: usize = 271;
/// Start of the read-only machine-to-phys table, `u64 pfn[mfn]`, readable by guests.
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End (exclusive) of the read-only M2P window.
pub const MACH2PHYS_VIRT_END: u64 = 0xffff_8040_0000_0000;
/// M2P value of a frame with no pseudo-physical address.
pub const INVALID_P2M_ENTRY: u64 = !0;

/// True if `va` lies in the hypervisor's reserved hole.
pub const fn in_hypervisor_hole(va: u64) -> bool {
    va >= HYPERVISOR_VIRT_START && va < HYPERVISOR_VIRT_END
}

/// True if `va` is canonical for 48-bit virtual addresses.
pub const fn is_canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

// ---------------------------------------------------------------------------------------------
// Flat segment selectors (arch-x86/xen-x86_64.h) in Xen's reserved GDT area.

/// First GDT entry reserved for Xen; guests' own GDTs stop below it.
pub const FIRST_RESERVED_GDT_ENTRY: usize = 7168;
/// First reserved GDT byte (14 pages in).
pub const FIRST_RESERVED_GDT_BYTE: usize = FIRST_RESERVED_GDT_ENTRY * 8;
/// Most GDT frames a guest may install with `set_gdt`.
pub const MAX_GUEST_GDT_FRAMES: usize = 16;

/// 32-bit ring-3 code.
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// Ring-3 data and 64-bit stack segment.
pub const FLAT_RING3_DS32: u16 = 0xe02b;
/// 64-bit ring-3 code.
pub const FLAT_RING3_CS64: u16 = 0xe033;
/// The 64-bit data segment is the null selector.
pub const FLAT_RING3_DS64: u16 = 0;
/// 64-bit ring-3 stack segment.
pub const FLAT_RING3_SS64: u16 = 0xe02b;
/// A PV kernel's code segment (it runs in ring 3).
pub const FLAT_KERNEL_CS: u16 = FLAT_RING3_CS64;
/// A PV kernel's stack segment.
pub const FLAT_KERNEL_SS: u16 = FLAT_RING3_SS64;
/// A PV kernel's data segment.
pub const FLAT_KERNEL_DS: u16 = FLAT_RING3_DS64;
/// User-mode code segment (same descriptor as the kernel's).
pub const FLAT_USER_CS: u16 = FLAT_RING3_CS64;
/// User-mode stack segment.
pub const FLAT_USER_SS: u16 = FLAT_RING3_SS64;

// ---------------------------------------------------------------------------------------------
// Constants of xen.h

/// Virtual interrupt numbers, bound with `EVTCHNOP_bind_virq`.
pub mod virq {
    pub const TIMER: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const CONSOLE: u32 = 2;
    pub const DOM_EXC: u32 = 3;
    pub const TBUF: u32 = 4;
    pub const DEBUGGER: u32 = 6;
    pub const XENOPROF: u32 = 7;
    pub const CON_RING: u32 = 8;
    pub const PCPU_STATE: u32 = 9;
    pub const MEM_EVENT: u32 = 10;
    pub const ARGO: u32 = 11;
    pub const ENOMEM: u32 = 12;
    pub const XENPMU: u32 = 13;
    pub const ARCH_0: u32 = 16;
    /// Number of VIRQs.
    pub const NR_VIRQS: u32 = 24;
}

/// `mmu_update` request types, in the low two bits of `ptr`.
pub mod mmu {
    pub const NORMAL_PT_UPDATE: u64 = 0;
    pub const MACHPHYS_UPDATE: u64 = 1;
    pub const PT_UPDATE_PRESERVE_AD: u64 = 2;
    pub const PT_UPDATE_NO_TRANSLATE: u64 = 3;
}

/// `mmuext_op` commands.
pub mod mmuext {
    pub const PIN_L1_TABLE: u32 = 0;
    pub const PIN_L2_TABLE: u32 = 1;
    pub const PIN_L3_TABLE: u32 = 2;
    pub const PIN_L4_TABLE: u32 = 3;
    pub const UNPIN_TABLE: u32 = 4;
    pub const NEW_BASEPTR: u32 = 5;
    pub const TLB_FLUSH_LOCAL: u32 = 6;
    pub const INVLPG_LOCAL: u32 = 7;
    pub const TLB_FLUSH_MULTI: u32 = 8;
    pub const INVLPG_MULTI: u32 = 9;
    pub const TLB_FLUSH_ALL: u32 = 10;
    pub const INVLPG_ALL: u32 = 11;
    pub const FLUSH_CACHE: u32 = 12;
    pub const SET_LDT: u32 = 13;
    pub const NEW_USER_BASEPTR: u32 = 15;
    pub const CLEAR_PAGE: u32 = 16;
    pub const COPY_PAGE: u32 = 17;
    pub const FLUSH_CACHE_GLOBAL: u32 = 18;
    pub const MARK_SUPER: u32 = 19;
    pub const UNMARK_SUPER: u32 = 20;
}

/// `update_va_mapping` flags.
pub mod uvmf {
    pub const NONE: u64 = 0;
    pub const TLB_FLUSH: u64 = 1;
    pub const INVLPG: u64 = 2;
    pub const FLUSHTYPE_MASK: u64 = 3;
    pub const MULTI: u64 = 0;
    pub const LOCAL: u64 = 0;
    pub const ALL: u64 = 4;
}

/// `vm_assist` commands and types.
pub mod vmasst {
    pub const CMD_ENABLE: u32 = 0;
    pub const CMD_DISABLE: u32 = 1;
    pub const TYPE_4GB_SEGMENTS: u32 = 0;
    pub const TYPE_4GB_SEGMENTS_NOTIFY: u32 = 1;
    pub const TYPE_WRITABLE_PAGETABLES: u32 = 2;
    pub const TYPE_PAE_EXTENDED_CR3: u32 = 3;
    pub const TYPE_ARCHITECTURAL_IOPL: u32 = 4;
    pub const TYPE_RUNSTATE_UPDATE_FLAG: u32 = 5;
    pub const TYPE_M2P_STRICT: u32 = 32;
    /// Types a 64-bit PV guest may enable (`VM_ASSIST_VALID` for PV64).
    pub const VALID_MASK: u64 = (1 << TYPE_4GB_SEGMENTS)
        | (1 << TYPE_4GB_SEGMENTS_NOTIFY)
        | (1 << TYPE_WRITABLE_PAGETABLES)
        | (1 << TYPE_PAE_EXTENDED_CR3)
        | (1 << TYPE_ARCHITECTURAL_IOPL)
        | (1 << TYPE_RUNSTATE_UPDATE_FLAG)
        | (1 << TYPE_M2P_STRICT);
}

/// `console_io` commands.
pub mod consoleio {
    pub const WRITE: u64 = 0;
    pub const READ: u64 = 1;
}

/// `start_info.flags`.
pub mod sif {
    pub const PRIVILEGED: u32 = 1 << 0;
    pub const INITDOMAIN: u32 = 1 << 1;
    pub const MULTIBOOT_MOD: u32 = 1 << 2;
    pub const MOD_START_PFN: u32 = 1 << 3;
    pub const VIRT_P2M_4TOOLS: u32 = 1 << 4;
    pub const PM_MASK: u32 = 0xff << 8;
}

/// `vcpu_guest_context.flags`.
pub mod vgcf {
    pub const I387_VALID: u64 = 1 << 0;
    pub const IN_KERNEL: u64 = 1 << 2;
    pub const FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
    pub const SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
    pub const ONLINE: u64 = 1 << 5;
    /// In an `iret` frame's `flags`: return through the sysret path (restore only
    /// rax/rip/rflags/rsp).
    pub const IN_SYSCALL: u64 = 1 << 8;
}

/// `trap_info.flags`: DPL in bits 0-1; bit 2 clears event delivery on entry.
pub mod trap_flags {
    pub const DPL_MASK: u8 = 3;
    pub const DISABLES_EVENTS: u8 = 4;
}

/// `set_segment_base` selectors.
pub mod segbase {
    pub const FS: u32 = 0;
    pub const GS_USER: u32 = 1;
    pub const GS_KERNEL: u32 = 2;
    pub const GS_USER_SEL: u32 = 3;
}

/// `vcpu_time_info.flags`.
pub mod xen_pvclock {
    pub const TSC_STABLE_BIT: u8 = 1;
    pub const GUEST_STOPPED: u8 = 2;
}

/// Number of vCPUs with a slot in `shared_info` (`XEN_LEGACY_MAX_VCPUS`).
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// Length of `start_info.cmd_line`.
pub const MAX_GUEST_CMDLINE: usize = 1024;
/// `start_info.magic` of a 64-bit PV guest.
pub const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";

// ---------------------------------------------------------------------------------------------
// Structures

/// `struct vcpu_time_info`: the PV clock. Guests compute
/// `system_time + ((tsc - tsc_timestamp) shifted by tsc_shift) * tsc_to_system_mul >> 32`.
/// `version` is a seqlock (odd while being updated).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuTimeInfo {
    pub version: u32,
    pub pad0: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub pad1: [u8; 2],
}
assert_layout!(
    VcpuTimeInfo,
    size = 32,
    version = 0,
    tsc_timestamp = 8,
    system_time = 16,
    tsc_to_system_mul = 24,
    tsc_shift = 28,
    flags = 29
);

/// `struct arch_vcpu_info`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ArchVcpuInfo {
    /// Faulting address of the last #PF bounced to the guest.
    pub cr2: u64,
    pub pad: u64,
}

/// `struct vcpu_info`: per-vCPU event state and clock, inside `shared_info`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuInfo {
    /// Set by the hypervisor when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Set by the guest to hold off upcalls (its "interrupt flag").
    pub evtchn_upcall_mask: u8,
    pub _pad: [u8; 6],
    /// Bit i set: word i of `evtchn_pending` may have pending ports.
    pub evtchn_pending_sel: u64,
    pub arch: ArchVcpuInfo,
    pub time: VcpuTimeInfo,
}
assert_layout!(
    VcpuInfo,
    size = 64,
    evtchn_upcall_pending = 0,
    evtchn_upcall_mask = 1,
    evtchn_pending_sel = 8,
    arch.cr2 = 16,
    arch.pad = 24,
    time = 32
);

/// `struct arch_shared_info`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ArchSharedInfo {
    pub max_pfn: u64,
    pub pfn_to_mfn_frame_list_list: u64,
    pub nmi_reason: u64,
    pub p2m_cr3: u64,
    pub p2m_vaddr: u64,
    pub p2m_generation: u64,
}

/// `struct shared_info`: the page every domain shares with the hypervisor.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SharedInfo {
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// 2-level event channels: bit `p` of this bitmap is port `p`'s pending flag.
    pub evtchn_pending: [u64; 64],
    /// Bit `p` set: port `p` is masked.
    pub evtchn_mask: [u64; 64],
    pub wc_version: u32,
    pub wc_sec: u32,
    pub wc_nsec: u32,
    pub wc_sec_hi: u32,
    pub arch: ArchSharedInfo,
}
assert_layout!(
    SharedInfo,
    size = 3136,
    vcpu_info = 0,
    evtchn_pending = 2048,
    evtchn_mask = 2560,
    wc_version = 3072,
    wc_sec = 3076,
    wc_nsec = 3080,
    wc_sec_hi = 3084,
    arch = 3088,
    arch.max_pfn = 3088,
    arch.pfn_to_mfn_frame_list_list = 3096,
    arch.nmi_reason = 3104,
    arch.p2m_cr3 = 3112,
    arch.p2m_vaddr = 3120,
    arch.p2m_generation = 3128
);

impl SharedInfo {
    /// Byte offset of `vcpu_info[vcpu]` in the page.
    pub const fn vcpu_info_offset(vcpu: usize) -> usize {
        vcpu * core::mem::size_of::<VcpuInfo>()
    }
    /// Byte offset of word `w` of `evtchn_pending`.
    pub const fn pending_word_offset(w: usize) -> usize {
        core::mem::offset_of!(SharedInfo, evtchn_pending) + w * 8
    }
    /// Byte offset of word `w` of `evtchn_mask`.
    pub const fn mask_word_offset(w: usize) -> usize {
        core::mem::offset_of!(SharedInfo, evtchn_mask) + w * 8
    }
}

/// The domU view of `start_info.console`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StartInfoConsoleDomU {
    /// Machine frame of the console ring (`xencons_interface`).
    pub mfn: u64,
    /// Guest-local port bound to the console backend.
    pub evtchn: Port,
    pub _pad: u32,
}

/// `struct start_info`: what the domain builder tells a PV guest at boot (pointed to by `%rsi`).
///
/// For dom0 the console fields are `info_off`/`info_size` of a VGA console description instead;
/// read them with [`StartInfo::dom0_console_info`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StartInfo {
    /// "xen-3.0-x86_64", NUL padded.
    pub magic: [u8; 32],
    /// Total pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared_info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    pub _pad0: u32,
    /// Machine frame of the xenstore ring.
    pub store_mfn: u64,
    /// Port bound to xenstored.
    pub store_evtchn: Port,
    pub _pad1: u32,
    pub console: StartInfoConsoleDomU,
    /// Virtual address of the bootstrap L4 page table.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the P2M array (`u64 mfn[nr_pages]`).
    pub mfn_list: u64,
    /// Virtual address (or pfn with `SIF_MOD_START_PFN`) of the initial ramdisk.
    pub mod_start: u64,
    /// Size of the initial ramdisk in bytes.
    pub mod_len: u64,
    /// NUL-terminated command line.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First pfn of the initial P2M (only with `XEN_ELFNOTE_INIT_P2M`).
    pub first_p2m_pfn: u64,
    /// Number of frames of the initial P2M.
    pub nr_p2m_frames: u64,
}
assert_layout!(
    StartInfo,
    size = 1168,
    magic = 0,
    nr_pages = 32,
    shared_info = 40,
    flags = 48,
    store_mfn = 56,
    store_evtchn = 64,
    console.mfn = 72,
    console.evtchn = 80,
    pt_base = 88,
    nr_pt_frames = 96,
    mfn_list = 104,
    mod_start = 112,
    mod_len = 120,
    cmd_line = 128,
    first_p2m_pfn = 1152,
    nr_p2m_frames = 1160
);

impl StartInfo {
    /// A zeroed start_info with the magic filled in.
    pub fn new() -> StartInfo {
        let mut si = StartInfo::new_zeroed();
        si.magic[..START_INFO_MAGIC.len()].copy_from_slice(START_INFO_MAGIC);
        si
    }

    /// True if the magic names a 64-bit PV guest.
    pub fn magic_ok(&self) -> bool {
        self.magic.starts_with(START_INFO_MAGIC)
    }

    /// dom0's view of the console field: `(info_off, info_size)` of `dom0_vga_console_info`.
    pub fn dom0_console_info(&self) -> (u32, u32) {
        (self.console.mfn as u32, (self.console.mfn >> 32) as u32)
    }

    /// The command line up to its first NUL, if it is UTF-8.
    pub fn cmdline(&self) -> &str {
        let len = self.cmd_line.iter().position(|&b| b == 0).unwrap_or(self.cmd_line.len());
        core::str::from_utf8(&self.cmd_line[..len]).unwrap_or("")
    }

    /// Stores `cmdline`, truncated to fit with its NUL.
    pub fn set_cmdline(&mut self, cmdline: &str) {
        let n = cmdline.len().min(MAX_GUEST_CMDLINE - 1);
        self.cmd_line = [0; MAX_GUEST_CMDLINE];
        self.cmd_line[..n].copy_from_slice(&cmdline.as_bytes()[..n]);
    }
}

impl Default for StartInfo {
    fn default() -> Self {
        StartInfo::new()
    }
}

/// `struct trap_info`: one entry of `set_trap_table`'s array (terminated by `address == 0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TrapInfo {
    pub vector: u8,
    /// DPL in bits 0-1; [`trap_flags::DISABLES_EVENTS`].
    pub flags: u8,
    pub cs: u16,
    pub _pad: u32,
    pub address: u64,
}
assert_layout!(TrapInfo, size = 16, vector = 0, flags = 1, cs = 2, address = 8);

/// `struct cpu_user_regs`: a vCPU's general registers, as in `vcpu_guest_context`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    pub cs: u16,
    pub _pad0: u16,
    pub saved_upcall_mask: u8,
    pub _pad1: [u8; 3],
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub _pad2: [u16; 3],
    pub es: u16,
    pub _pad3: [u16; 3],
    pub ds: u16,
    pub _pad4: [u16; 3],
    pub fs: u16,
    pub _pad5: [u16; 3],
    pub gs: u16,
    pub _pad6: [u16; 3],
}
assert_layout!(
    CpuUserRegs,
    size = 200,
    r15 = 0,
    r14 = 8,
    r13 = 16,
    r12 = 24,
    rbp = 32,
    rbx = 40,
    r11 = 48,
    r10 = 56,
    r9 = 64,
    r8 = 72,
    rax = 80,
    rcx = 88,
    rdx = 96,
    rsi = 104,
    rdi = 112,
    error_code = 120,
    entry_vector = 124,
    rip = 128,
    cs = 136,
    saved_upcall_mask = 140,
    rflags = 144,
    rsp = 152,
    ss = 160,
    es = 168,
    ds = 176,
    fs = 184,
    gs = 192
);

/// `struct vcpu_guest_context` (x86_64): a whole vCPU, for `VCPUOP_initialise` and domctls.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuGuestContext {
    /// FXSAVE image.
    pub fpu_ctxt: [u8; 512],
    /// `VGCF_*`.
    pub flags: u64,
    pub user_regs: CpuUserRegs,
    pub trap_ctxt: [TrapInfo; 256],
    pub ldt_base: u64,
    pub ldt_ents: u64,
    pub gdt_frames: [u64; 16],
    pub gdt_ents: u64,
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    /// `ctrlreg[3]` = kernel L4 (`mfn << 12`), `ctrlreg[1]` = user L4.
    pub ctrlreg: [u64; 8],
    pub debugreg: [u64; 8],
    pub event_callback_eip: u64,
    pub failsafe_callback_eip: u64,
    pub syscall_callback_eip: u64,
    pub vm_assist: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}
assert_layout!(
    VcpuGuestContext,
    size = 5168,
    fpu_ctxt = 0,
    flags = 512,
    user_regs = 520,
    trap_ctxt = 720,
    ldt_base = 4816,
    ldt_ents = 4824,
    gdt_frames = 4832,
    gdt_ents = 4960,
    kernel_ss = 4968,
    kernel_sp = 4976,
    ctrlreg = 4984,
    debugreg = 5048,
    event_callback_eip = 5112,
    failsafe_callback_eip = 5120,
    syscall_callback_eip = 5128,
    vm_assist = 5136,
    fs_base = 5144,
    gs_base_kernel = 5152,
    gs_base_user = 5160
);

/// `struct iret_context`: what the `iret` hypercall reads at the guest's stack pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IretContext {
    pub rax: u64,
    pub r11: u64,
    pub rcx: u64,
    /// [`vgcf::IN_SYSCALL`].
    pub flags: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
assert_layout!(
    IretContext,
    size = 72,
    rax = 0,
    r11 = 8,
    rcx = 16,
    flags = 24,
    rip = 32,
    cs = 40,
    rflags = 48,
    rsp = 56,
    ss = 64
);

/// `struct mmu_update`: one request of the `mmu_update` hypercall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the entry to update, with the request type in bits 0-1.
    pub ptr: u64,
    /// New contents.
    pub val: u64,
}
assert_layout!(MmuUpdate, size = 16, ptr = 0, val = 8);

/// `struct mmuext_op`: one request of the `mmuext_op` hypercall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MmuextOp {
    pub cmd: u32,
    pub _pad: u32,
    /// `mfn` or `linear_addr`.
    pub arg1: u64,
    /// `nr_ents`, `vcpumask` or `src_mfn`.
    pub arg2: u64,
}
assert_layout!(MmuextOp, size = 24, cmd = 0, arg1 = 8, arg2 = 16);

/// `struct multicall_entry`: one call of a `multicall` batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MulticallEntry {
    pub op: u64,
    pub result: u64,
    pub args: [u64; 6],
}
assert_layout!(MulticallEntry, size = 64, op = 0, result = 8, args = 16);

/// `struct dom0_vga_console_info` is not provided: microvisor's dom0 has a serial console only,
/// and `start_info.console.dom0.info_size` is 0.
pub const DOM0_VGA_CONSOLE_INFO_SIZE: u32 = 0;

/// Convenience: a domain id in a `u16` field that may also hold `DOMID_SELF`.
pub const fn resolve_domid(d: DomId, caller: DomId) -> DomId {
    if d.0 == DomId::SELF.0 {
        caller
    } else {
        d
    }
}
