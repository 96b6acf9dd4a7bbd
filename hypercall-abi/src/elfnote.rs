//! Xen ELF notes (`public/elfnote.h`) and feature flags (`public/features.h`): how a PV kernel
//! image tells the domain builder where to enter, where it is linked and what it supports.

/// Name field of every Xen note.
pub const XEN_NOTE_NAME: &[u8] = b"Xen";

/// Note types.
pub mod note {
    pub const INFO: u32 = 0;
    pub const ENTRY: u32 = 1;
    pub const HYPERCALL_PAGE: u32 = 2;
    pub const VIRT_BASE: u32 = 3;
    pub const PADDR_OFFSET: u32 = 4;
    pub const XEN_VERSION: u32 = 5;
    pub const GUEST_OS: u32 = 6;
    pub const GUEST_VERSION: u32 = 7;
    pub const LOADER: u32 = 8;
    pub const PAE_MODE: u32 = 9;
    pub const FEATURES: u32 = 10;
    pub const BSD_SYMTAB: u32 = 11;
    pub const HV_START_LOW: u32 = 12;
    pub const L1_MFN_VALID: u32 = 13;
    pub const SUSPEND_CANCEL: u32 = 14;
    pub const INIT_P2M: u32 = 15;
    pub const MOD_START_PFN: u32 = 16;
    pub const SUPPORTED_FEATURES: u32 = 17;
    pub const PHYS32_ENTRY: u32 = 18;
    pub const PHYS32_RELOC: u32 = 19;
}

/// `XENFEAT_*` bit numbers, as reported by `XENVER_get_features` and named (as strings) in
/// the FEATURES note.
pub mod feature {
    pub const WRITABLE_PAGE_TABLES: u32 = 0;
    pub const WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
    pub const AUTO_TRANSLATED_PHYSMAP: u32 = 2;
    pub const SUPERVISOR_MODE_KERNEL: u32 = 3;
    pub const PAE_PGDIR_ABOVE_4GB: u32 = 4;
    pub const MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
    pub const HIGHMEM_ASSIST: u32 = 6;
    pub const GNTTAB_MAP_AVAIL_BITS: u32 = 7;
    pub const HVM_CALLBACK_VECTOR: u32 = 8;
    pub const HVM_SAFE_PVCLOCK: u32 = 9;
    pub const HVM_PIRQS: u32 = 10;
    pub const DOM0: u32 = 11;
    pub const GRANT_MAP_IDENTITY: u32 = 12;
    pub const MEMORY_OP_VNODE_SUPPORTED: u32 = 13;
    pub const ARM_SMCCC_SUPPORTED: u32 = 14;
    pub const LINUX_RSDP_UNRESTRICTED: u32 = 15;
    /// Xen 4.15+: the domain's frames are not 1:1 (gfn != mfn).
    pub const NOT_DIRECT_MAPPED: u32 = 16;
    /// Xen 4.15+: the domain is direct-mapped (gfn == mfn), as every non-translated PV domain.
    pub const DIRECT_MAPPED: u32 = 17;
    pub const NR_SUBMAPS: u32 = 1;

    /// Feature names as they appear in the FEATURES note, with their bit numbers.
    pub const NAMES: &[(&str, u32)] = &[
        ("writable_page_tables", WRITABLE_PAGE_TABLES),
        ("writable_descriptor_tables", WRITABLE_DESCRIPTOR_TABLES),
        ("auto_translated_physmap", AUTO_TRANSLATED_PHYSMAP),
        ("supervisor_mode_kernel", SUPERVISOR_MODE_KERNEL),
        ("pae_pgdir_above_4gb", PAE_PGDIR_ABOVE_4GB),
        ("hvm_callback_vector", HVM_CALLBACK_VECTOR),
        ("dom0", DOM0),
    ];

    /// Bit number of a feature named in a FEATURES note.
    pub fn by_name(name: &str) -> Option<u32> {
        NAMES.iter().find(|(n, _)| *n == name).map(|&(_, b)| b)
    }
}
