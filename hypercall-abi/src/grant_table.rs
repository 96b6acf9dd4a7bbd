//! Grant tables v1 (`public/grant_table.h`): how a domain lets another map or copy one of its
//! frames, the only way split drivers share memory. The entry flags are written by both the
//! granting guest and the hypervisor, so their bit meanings must match Xen exactly.

use crate::types::{DomId, GrantRef};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// v1 entries per 4 KiB grant-table frame.
pub const GRANT_ENTRIES_PER_FRAME_V1: u32 = (crate::PAGE_SIZE / core::mem::size_of::<GrantEntryV1>()) as u32;

/// Reference the toolstack seeds with the console ring frame.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = GrantRef(0);
/// Reference the toolstack seeds with the xenstore ring frame.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = GrantRef(1);
/// References below this are reserved for the toolstack.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// `GNTTABOP_*` commands of `grant_table_op`.
pub mod op {
    pub const MAP_GRANT_REF: u32 = 0;
    pub const UNMAP_GRANT_REF: u32 = 1;
    pub const SETUP_TABLE: u32 = 2;
    pub const DUMP_TABLE: u32 = 3;
    pub const TRANSFER: u32 = 4;
    pub const COPY: u32 = 5;
    pub const QUERY_SIZE: u32 = 6;
    pub const UNMAP_AND_REPLACE: u32 = 7;
    pub const SET_VERSION: u32 = 8;
    pub const GET_STATUS_FRAMES: u32 = 9;
    pub const GET_VERSION: u32 = 10;
    pub const SWAP_GRANT_REF: u32 = 11;
    pub const CACHE_FLUSH: u32 = 12;
}

/// `GTF_*`: bits of [`GrantEntryV1::flags`].
pub mod gtf {
    /// Entry type field.
    pub const TYPE_MASK: u16 = 3;
    pub const INVALID: u16 = 0;
    /// `domid` may map or copy `frame`.
    pub const PERMIT_ACCESS: u16 = 1;
    pub const ACCEPT_TRANSFER: u16 = 2;
    pub const TRANSITIVE: u16 = 3;
    /// Grantee may only map/copy read-only.
    pub const READONLY: u16 = 1 << 2;
    /// Set by the hypervisor while the grantee has the frame mapped/copied for reading.
    pub const READING: u16 = 1 << 3;
    /// Set by the hypervisor while the grantee has the frame mapped/copied for writing.
    pub const WRITING: u16 = 1 << 4;
    /// Cache attributes the grantee's mapping must use.
    pub const PWT: u16 = 1 << 5;
    pub const PCD: u16 = 1 << 6;
    pub const PAT: u16 = 1 << 7;
    /// v2 only: the grant covers part of the frame.
    pub const SUB_PAGE: u16 = 1 << 8;
    /// Transfer entries: the hypervisor has committed to the transfer.
    pub const TRANSFER_COMMITTED: u16 = 1 << 2;
    /// Transfer entries: the transfer has completed.
    pub const TRANSFER_COMPLETED: u16 = 1 << 3;
}

/// `GNTMAP_*`: [`GnttabMapGrantRef::flags`].
pub mod gntmap {
    pub const DEVICE_MAP: u32 = 1 << 0;
    /// Map at `host_addr` in the caller's page tables.
    pub const HOST_MAP: u32 = 1 << 1;
    pub const READONLY: u32 = 1 << 2;
    /// Map with `_PAGE_USER` (the mapping is for user space).
    pub const APPLICATION_MAP: u32 = 1 << 3;
    /// `host_addr` is the machine address of the L1 entry to write.
    pub const CONTAINS_PTE: u32 = 1 << 4;
    /// Bits from here up carry values for the PTE's software-available bits
    /// (with `XENFEAT_gnttab_map_avail_bits`).
    pub const GUEST_AVAIL0_SHIFT: u32 = 16;
    pub const GUEST_AVAIL_MASK: u32 = !0 << GUEST_AVAIL0_SHIFT;
}

/// `GNTCOPY_*`: [`GnttabCopy::flags`].
pub mod gntcopy {
    /// `source.u` is a grant reference (otherwise a gmfn of the caller).
    pub const SOURCE_GREF: u16 = 1 << 0;
    /// `dest.u` is a grant reference (otherwise a gmfn of the caller).
    pub const DEST_GREF: u16 = 1 << 1;
}

/// `GNTST_*`: per-operation status codes (`i16` `status` fields).
pub mod gntst {
    pub const OKAY: i16 = 0;
    pub const GENERAL_ERROR: i16 = -1;
    pub const BAD_DOMAIN: i16 = -2;
    pub const BAD_GNTREF: i16 = -3;
    pub const BAD_HANDLE: i16 = -4;
    pub const BAD_VIRT_ADDR: i16 = -5;
    pub const BAD_DEV_ADDR: i16 = -6;
    pub const NO_DEVICE_SPACE: i16 = -7;
    pub const PERMISSION_DENIED: i16 = -8;
    pub const BAD_PAGE: i16 = -9;
    pub const BAD_COPY_ARG: i16 = -10;
    pub const ADDRESS_TOO_BIG: i16 = -11;
    pub const EAGAIN: i16 = -12;
    pub const NO_SPACE: i16 = -13;

    /// The status's name in `GNTST_*` without the prefix ("bad_gntref").
    pub const fn name(status: i16) -> &'static str {
        match status {
            OKAY => "okay",
            GENERAL_ERROR => "general_error",
            BAD_DOMAIN => "bad_domain",
            BAD_GNTREF => "bad_gntref",
            BAD_HANDLE => "bad_handle",
            BAD_VIRT_ADDR => "bad_virt_addr",
            BAD_DEV_ADDR => "bad_dev_addr",
            NO_DEVICE_SPACE => "no_device_space",
            PERMISSION_DENIED => "permission_denied",
            BAD_PAGE => "bad_page",
            BAD_COPY_ARG => "bad_copy_arg",
            ADDRESS_TOO_BIG => "address_too_big",
            EAGAIN => "eagain",
            NO_SPACE => "no_space",
            _ => "unknown",
        }
    }
}

/// `struct grant_entry_v1`: one entry of a v1 grant table, written by the granting domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// [`gtf`] bits. Written last when granting (after a write barrier).
    pub flags: u16,
    /// The domain allowed to use the grant.
    pub domid: DomId,
    /// The granted frame (gfn; the mfn for a PV guest).
    pub frame: u32,
}
assert_layout!(GrantEntryV1, size = 8, flags = 0, domid = 2, frame = 4);

/// `struct gnttab_map_grant_ref`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabMapGrantRef {
    /// VA to map at, or the MA of the PTE with [`gntmap::CONTAINS_PTE`].
    pub host_addr: u64,
    /// [`gntmap`] bits.
    pub flags: u32,
    pub ref_: GrantRef,
    /// The granting domain.
    pub dom: DomId,
    /// OUT: [`gntst`].
    pub status: i16,
    /// OUT: handle for the unmap.
    pub handle: u32,
    /// OUT: bus address for [`gntmap::DEVICE_MAP`].
    pub dev_bus_addr: u64,
}
assert_layout!(
    GnttabMapGrantRef,
    size = 32,
    host_addr = 0,
    flags = 8,
    ref_ = 12,
    dom = 16,
    status = 18,
    handle = 20,
    dev_bus_addr = 24
);

/// `struct gnttab_unmap_grant_ref`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: u32,
    /// OUT: [`gntst`].
    pub status: i16,
    pub _pad: u16,
}
assert_layout!(GnttabUnmapGrantRef, size = 24, host_addr = 0, dev_bus_addr = 8, handle = 16, status = 20);

/// `struct gnttab_unmap_and_replace`: unmap the host mapping of `handle` at `host_addr`,
/// moving the caller's own entry for `new_addr` into its place (0: just unmap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabUnmapAndReplace {
    pub host_addr: u64,
    pub new_addr: u64,
    pub handle: u32,
    /// OUT: [`gntst`].
    pub status: i16,
    pub _pad: u16,
}
assert_layout!(GnttabUnmapAndReplace, size = 24, host_addr = 0, new_addr = 8, handle = 16, status = 20);

/// `struct gnttab_get_status_frames` (v2 tables): the frames of `dom`'s status array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabGetStatusFrames {
    pub nr_frames: u32,
    pub dom: DomId,
    /// OUT: [`gntst`].
    pub status: i16,
    /// Guest handle of `nr_frames` `u64` frame numbers.
    pub frame_list: u64,
}
assert_layout!(GnttabGetStatusFrames, size = 16, nr_frames = 0, dom = 4, status = 6, frame_list = 8);

/// `struct gnttab_setup_table`: size the caller's table and learn its frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabSetupTable {
    pub dom: DomId,
    pub _pad0: u16,
    pub nr_frames: u32,
    /// OUT: [`gntst`].
    pub status: i16,
    pub _pad1: [u8; 6],
    /// Guest handle of a `xen_pfn_t[nr_frames]` array that receives the table's frames.
    pub frame_list: u64,
}
assert_layout!(GnttabSetupTable, size = 24, dom = 0, nr_frames = 4, status = 8, frame_list = 16);

/// One side of a [`GnttabCopy`] (`struct gnttab_copy_ptr` in Xen's anonymous struct).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabCopyPtr {
    /// `union { grant_ref_t ref; xen_pfn_t gmfn; }`: a gref in the low 32 bits when the
    /// matching `GNTCOPY_*_gref` flag is set, else a gmfn. Use the accessors.
    pub u: u64,
    pub domid: DomId,
    /// Byte offset in the frame.
    pub offset: u16,
    pub _pad: u32,
}
assert_layout!(GnttabCopyPtr, size = 16, u = 0, domid = 8, offset = 10);

impl GnttabCopyPtr {
    /// A pointer through a grant of `domid`.
    pub const fn gref(gref: GrantRef, domid: DomId, offset: u16) -> Self {
        GnttabCopyPtr { u: gref.0 as u64, domid, offset, _pad: 0 }
    }
    /// A pointer at a frame of the caller (`domid` is normally `DOMID_SELF`).
    pub const fn gmfn(gmfn: u64, domid: DomId, offset: u16) -> Self {
        GnttabCopyPtr { u: gmfn, domid, offset, _pad: 0 }
    }
    /// `u.ref`: only the low 32 bits are the reference, as in C's union.
    pub const fn as_gref(&self) -> GrantRef {
        GrantRef(self.u as u32)
    }
    /// `u.gmfn`.
    pub const fn as_gmfn(&self) -> u64 {
        self.u
    }
}

/// `struct gnttab_copy`: copy `len` bytes without mapping; neither side may cross its page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabCopy {
    pub source: GnttabCopyPtr,
    pub dest: GnttabCopyPtr,
    pub len: u16,
    /// [`gntcopy`] bits.
    pub flags: u16,
    /// OUT: [`gntst`].
    pub status: i16,
    pub _pad: u16,
}
assert_layout!(
    GnttabCopy,
    size = 40,
    source.u = 0,
    source.domid = 8,
    source.offset = 10,
    dest.u = 16,
    dest.domid = 24,
    dest.offset = 26,
    len = 32,
    flags = 34,
    status = 36
);

impl GnttabCopy {
    /// True if `offset + len` stays within one page on both sides (Xen rejects the copy with
    /// [`gntst::BAD_COPY_ARG`] otherwise).
    pub const fn within_pages(&self) -> bool {
        let len = self.len as usize;
        self.source.offset as usize + len <= crate::PAGE_SIZE
            && self.dest.offset as usize + len <= crate::PAGE_SIZE
    }
}

/// `struct gnttab_query_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabQuerySize {
    pub dom: DomId,
    pub _pad0: u16,
    /// OUT.
    pub nr_frames: u32,
    /// OUT.
    pub max_nr_frames: u32,
    /// OUT: [`gntst`].
    pub status: i16,
    pub _pad1: u16,
}
assert_layout!(GnttabQuerySize, size = 16, dom = 0, nr_frames = 4, max_nr_frames = 8, status = 12);

/// `struct gnttab_set_version`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabSetVersion {
    /// IN: requested version; OUT: the version in force.
    pub version: u32,
}
assert_layout!(GnttabSetVersion, size = 4, version = 0);

/// `struct gnttab_get_version`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabGetVersion {
    pub dom: DomId,
    pub pad: u16,
    /// OUT.
    pub version: u32,
}
assert_layout!(GnttabGetVersion, size = 8, dom = 0, version = 4);

/// `struct gnttab_dump_table`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabDumpTable {
    pub dom: DomId,
    /// OUT: [`gntst`].
    pub status: i16,
}
assert_layout!(GnttabDumpTable, size = 4, dom = 0, status = 2);

/// A `grant_table_op` argument: each structure is the argument of exactly one `GNTTABOP_*`
/// command, so a typed call cannot name one and pass the other.
pub trait GrantTableOp: zerocopy::IntoBytes + zerocopy::FromBytes {
    /// The `GNTTABOP_*` command taking an array of these.
    const CMD: u32;
}

macro_rules! grant_table_op {
    ($($ty:ty => $cmd:expr),* $(,)?) => {
        $(impl GrantTableOp for $ty {
            const CMD: u32 = $cmd;
        })*
    };
}

grant_table_op! {
    GnttabMapGrantRef => op::MAP_GRANT_REF,
    GnttabUnmapGrantRef => op::UNMAP_GRANT_REF,
    GnttabSetupTable => op::SETUP_TABLE,
    GnttabDumpTable => op::DUMP_TABLE,
    GnttabCopy => op::COPY,
    GnttabQuerySize => op::QUERY_SIZE,
    GnttabSetVersion => op::SET_VERSION,
    GnttabGetVersion => op::GET_VERSION,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_xen() {
        assert_eq!(GRANT_ENTRIES_PER_FRAME_V1, 512);
        assert_eq!(gtf::PERMIT_ACCESS | gtf::READONLY, 5);
        assert_eq!(gtf::READING | gtf::WRITING, 0x18);
        assert_eq!(gntst::name(gntst::BAD_GNTREF), "bad_gntref");
        assert_eq!(gntst::name(gntst::NO_SPACE), "no_space");
        assert_eq!(gntst::name(-14), "unknown");
        assert_eq!(gntst::name(i16::MIN), "unknown");
    }

    #[test]
    fn copy_ptr_union_and_bounds() {
        let mut c = GnttabCopy {
            source: GnttabCopyPtr::gref(GrantRef(0xdead_beef), DomId(3), 4000),
            dest: GnttabCopyPtr::gmfn(0x1_2345_6789, DomId::SELF, 0),
            len: 96,
            flags: gntcopy::SOURCE_GREF,
            ..Default::default()
        };
        assert_eq!(c.source.as_gref(), GrantRef(0xdead_beef));
        assert_eq!(&c.as_bytes()[0..8], &0xdead_beefu64.to_le_bytes());
        assert_eq!(c.dest.as_gmfn(), 0x1_2345_6789);
        assert!(c.within_pages());
        c.len = 97;
        assert!(!c.within_pages());
        c.len = u16::MAX;
        c.source.offset = u16::MAX;
        assert!(!c.within_pages());
    }
}
