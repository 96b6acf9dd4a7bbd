//! Hypercall numbers (`public/xen.h`) and the x86_64 hypercall page (`x86/pv/hypercall.c`).
//!
//! A PV guest calls hypercall `nr` by calling `hypercall_page + nr * 32`; the stub there executes
//! `syscall` with the number in `%rax` and arguments in `%rdi, %rsi, %rdx, %r10, %r8`. All five
//! argument registers, `%rcx` and `%r11` may be clobbered; the result comes back in `%rax`.

/// Hypercall numbers, as in `public/xen.h`.
pub mod nr {
    pub const SET_TRAP_TABLE: u64 = 0;
    pub const MMU_UPDATE: u64 = 1;
    pub const SET_GDT: u64 = 2;
    pub const STACK_SWITCH: u64 = 3;
    pub const SET_CALLBACKS: u64 = 4;
    pub const FPU_TASKSWITCH: u64 = 5;
    pub const SCHED_OP_COMPAT: u64 = 6;
    pub const PLATFORM_OP: u64 = 7;
    pub const SET_DEBUGREG: u64 = 8;
    pub const GET_DEBUGREG: u64 = 9;
    pub const UPDATE_DESCRIPTOR: u64 = 10;
    pub const MEMORY_OP: u64 = 12;
    pub const MULTICALL: u64 = 13;
    pub const UPDATE_VA_MAPPING: u64 = 14;
    pub const SET_TIMER_OP: u64 = 15;
    pub const EVENT_CHANNEL_OP_COMPAT: u64 = 16;
    pub const XEN_VERSION: u64 = 17;
    pub const CONSOLE_IO: u64 = 18;
    pub const PHYSDEV_OP_COMPAT: u64 = 19;
    pub const GRANT_TABLE_OP: u64 = 20;
    pub const VM_ASSIST: u64 = 21;
    pub const UPDATE_VA_MAPPING_OTHERDOMAIN: u64 = 22;
    pub const IRET: u64 = 23;
    pub const VCPU_OP: u64 = 24;
    pub const SET_SEGMENT_BASE: u64 = 25;
    pub const MMUEXT_OP: u64 = 26;
    pub const XSM_OP: u64 = 27;
    pub const NMI_OP: u64 = 28;
    pub const SCHED_OP: u64 = 29;
    pub const CALLBACK_OP: u64 = 30;
    pub const XENOPROF_OP: u64 = 31;
    pub const EVENT_CHANNEL_OP: u64 = 32;
    pub const PHYSDEV_OP: u64 = 33;
    pub const HVM_OP: u64 = 34;
    pub const SYSCTL: u64 = 35;
    pub const DOMCTL: u64 = 36;
    pub const KEXEC_OP: u64 = 37;
    pub const TMEM_OP: u64 = 38;
    pub const ARGO_OP: u64 = 39;
    pub const XENPMU_OP: u64 = 40;
    pub const DM_OP: u64 = 41;
    pub const HYPFS_OP: u64 = 42;
    /// First of the eight architecture-specific hypercalls (`__HYPERVISOR_arch_0`).
    pub const ARCH_0: u64 = 48;
    /// microvisor's debug hypercall (`arch_7`): hypervisor-side figures for tests and benchmarks.
    /// See [`crate::hypercall::debug`].
    pub const ARCH_DEBUG: u64 = 55;

    /// Xen's name for hypercall `nr` (for traces and messages).
    pub const fn name(nr: u64) -> &'static str {
        match nr {
            SET_TRAP_TABLE => "set_trap_table",
            MMU_UPDATE => "mmu_update",
            SET_GDT => "set_gdt",
            STACK_SWITCH => "stack_switch",
            SET_CALLBACKS => "set_callbacks",
            FPU_TASKSWITCH => "fpu_taskswitch",
            SCHED_OP_COMPAT => "sched_op_compat",
            PLATFORM_OP => "platform_op",
            SET_DEBUGREG => "set_debugreg",
            GET_DEBUGREG => "get_debugreg",
            UPDATE_DESCRIPTOR => "update_descriptor",
            MEMORY_OP => "memory_op",
            MULTICALL => "multicall",
            UPDATE_VA_MAPPING => "update_va_mapping",
            SET_TIMER_OP => "set_timer_op",
            EVENT_CHANNEL_OP_COMPAT => "event_channel_op_compat",
            XEN_VERSION => "xen_version",
            CONSOLE_IO => "console_io",
            PHYSDEV_OP_COMPAT => "physdev_op_compat",
            GRANT_TABLE_OP => "grant_table_op",
            VM_ASSIST => "vm_assist",
            UPDATE_VA_MAPPING_OTHERDOMAIN => "update_va_mapping_otherdomain",
            IRET => "iret",
            VCPU_OP => "vcpu_op",
            SET_SEGMENT_BASE => "set_segment_base",
            MMUEXT_OP => "mmuext_op",
            XSM_OP => "xsm_op",
            NMI_OP => "nmi_op",
            SCHED_OP => "sched_op",
            CALLBACK_OP => "callback_op",
            XENOPROF_OP => "xenoprof_op",
            EVENT_CHANNEL_OP => "event_channel_op",
            PHYSDEV_OP => "physdev_op",
            HVM_OP => "hvm_op",
            SYSCTL => "sysctl",
            DOMCTL => "domctl",
            KEXEC_OP => "kexec_op",
            TMEM_OP => "tmem_op",
            ARGO_OP => "argo_op",
            XENPMU_OP => "xenpmu_op",
            DM_OP => "dm_op",
            HYPFS_OP => "hypfs_op",
            ARCH_DEBUG => "arch_debug",
            _ => "unknown",
        }
    }
}

/// Per-hypercall tallies printed as `key=value` fields: the run-time audit's count of what
/// each domain called and a guest's count of what it issued (the fuzzer's), which the host
/// compares. Numbers below [`tally::COUNTED`] each have a bucket; all others share the last.
pub mod tally {
    use core::fmt;

    /// Hypercall numbers with a bucket of their own.
    pub const COUNTED: usize = 64;
    /// Buckets in a tally.
    pub const BUCKETS: usize = COUNTED + 1;

    /// The bucket of hypercall `nr`.
    pub const fn bucket(nr: u64) -> usize {
        if nr < COUNTED as u64 {
            nr as usize
        } else {
            COUNTED
        }
    }

    /// A bucket's key: Xen's name, `nr<N>` for a number without one, `other` for the last.
    pub struct Key(pub usize);

    impl fmt::Display for Key {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                COUNTED.. => f.write_str("other"),
                n => match super::nr::name(n as u64) {
                    "unknown" => write!(f, "nr{n}"),
                    name => f.write_str(name),
                },
            }
        }
    }
}

/// Number of stubs in the hypercall page.
pub const HYPERCALL_PAGE_STUBS: usize = 128;
/// Bytes per stub.
pub const HYPERCALL_STUB_SIZE: usize = 32;

/// Machine code of the regular stub for hypercall `nr`:
/// `push %rcx; push %r11; mov $nr,%eax; syscall; pop %r11; pop %rcx; ret`.
pub const fn hypercall_stub(nr: u32) -> [u8; 16] {
    let n = nr.to_le_bytes();
    [
        0x51, // push %rcx
        0x41, 0x53, // push %r11
        0xb8, n[0], n[1], n[2], n[3], // mov $nr, %eax
        0x0f, 0x05, // syscall
        0x41, 0x5b, // pop %r11
        0x59, // pop %rcx
        0xc3, // ret
        0xcc, 0xcc, // int3 padding
    ]
}

/// Machine code of the `iret` stub (#23), which the guest jumps to rather than calls:
/// `push %rcx; push %r11; push %rax; mov $23,%eax; syscall` (it never returns).
pub const fn iret_stub() -> [u8; 13] {
    let n = (nr::IRET as u32).to_le_bytes();
    [
        0x51, // push %rcx
        0x41, 0x53, // push %r11
        0x50, // push %rax
        0xb8, n[0], n[1], n[2], n[3], // mov $23, %eax
        0x0f, 0x05, // syscall
        0xcc, 0xcc, // never reached
    ]
}

/// Fills `page` as Xen fills a 64-bit PV guest's hypercall page.
pub fn fill_hypercall_page(page: &mut [u8; crate::PAGE_SIZE]) {
    page.fill(0xcc);
    for (i, stub) in page.chunks_exact_mut(HYPERCALL_STUB_SIZE).enumerate() {
        if i as u64 == nr::IRET {
            stub[..13].copy_from_slice(&iret_stub());
        } else {
            stub[..16].copy_from_slice(&hypercall_stub(i as u32));
        }
    }
}

/// Sub-operations of microvisor's debug hypercall ([`nr::ARCH_DEBUG`]). They expose hypervisor
/// bookkeeping that tests and benchmarks assert on; they change nothing.
pub mod debug {
    /// Returns the number of free machine frames.
    pub const FREE_FRAMES: u64 = 0;
    /// Returns the number of frames owned by domain `arg`.
    pub const DOMAIN_FRAMES: u64 = 1;
    /// Prints the per-domain frame accounting on the hypervisor console.
    pub const DUMP_MEMORY: u64 = 2;
    /// Returns the longest page-table operation (a memory hypercall or multicall, one call
    /// up to its continuation) since the last query, in TSC ticks, and restarts the count:
    /// the longest stretch a guest's page-table work kept interrupts off.
    pub const LONGEST_MM_OP: u64 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_layout_matches_xen() {
        let mut page = [0u8; crate::PAGE_SIZE];
        fill_hypercall_page(&mut page);
        // xen_version (#17) stub at 17*32.
        let s = &page[17 * 32..17 * 32 + 14];
        assert_eq!(s, &[0x51, 0x41, 0x53, 0xb8, 17, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3]);
        let i = &page[23 * 32..23 * 32 + 11];
        assert_eq!(i, &[0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0x0f, 0x05]);
    }

    #[test]
    fn tally_keys() {
        let key = |nr| tally::Key(tally::bucket(nr)).to_string();
        assert_eq!(key(nr::MMU_UPDATE), "mmu_update");
        assert_eq!(key(11), "nr11");
        assert_eq!(key(63), "nr63");
        assert_eq!(key(64), "other");
        assert_eq!(key(u64::MAX), "other");
    }
}
