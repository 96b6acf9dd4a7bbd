//! Newtypes for the numbers Xen's interface passes around, so a machine frame can never be
//! mistaken for a pseudo-physical one, nor a port for a grant reference.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The numbers below: each a `#[repr(transparent)]` newtype with the same derives (plain
/// value semantics, ordering for maps, and zerocopy's so ABI structs can hold them).
macro_rules! abi_numbers {
    ($($(#[$doc:meta])* $name:ident($int:ty);)*) => {$(
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            FromBytes, IntoBytes, Immutable, KnownLayout,
        )]
        #[repr(transparent)]
        pub struct $name(pub $int);
    )*};
}

abi_numbers! {
    /// Machine frame number: an index of a 4 KiB frame of real RAM.
    Mfn(u64);
    /// Pseudo-physical frame number: an index into a guest's own contiguous view of its memory.
    Pfn(u64);
    /// Domain identifier (`domid_t`).
    DomId(u16);
    /// Event-channel port (`evtchn_port_t`).
    Port(u32);
    /// Grant reference (`grant_ref_t`): an index into a domain's grant table.
    GrantRef(u32);
}

impl DomId {
    /// The first domain, the privileged control and device domain.
    pub const DOM0: DomId = DomId(0);
    /// First id reserved for special meanings; real domains are below it.
    pub const FIRST_RESERVED: DomId = DomId(0x7FF0);
    /// "The calling domain" (same value as `FIRST_RESERVED`).
    pub const SELF: DomId = DomId(0x7FF0);
    /// Owner of I/O memory: mapping with this foreign domain maps device frames.
    pub const IO: DomId = DomId(0x7FF1);
    /// The hypervisor itself as an owner of frames.
    pub const XEN: DomId = DomId(0x7FF2);
    /// Copy-on-write frames.
    pub const COW: DomId = DomId(0x7FF3);
    /// No domain.
    pub const INVALID: DomId = DomId(0x7FF4);
    /// Any domain (for `alloc_unbound`'s remote end, etc.).
    pub const ANY: DomId = DomId(0x7FF5);
    /// The idle domain.
    pub const IDLE: DomId = DomId(0x7FFF);

    /// True for ids that name a real domain rather than a special meaning.
    pub const fn is_real(self) -> bool {
        self.0 < Self::FIRST_RESERVED.0
    }
}

impl Mfn {
    /// Machine address of the frame's first byte.
    pub const fn addr(self) -> u64 {
        self.0 << crate::PAGE_SHIFT
    }
    /// The frame that holds machine address `addr`.
    pub const fn containing(addr: u64) -> Mfn {
        Mfn(addr >> crate::PAGE_SHIFT)
    }
}

impl Pfn {
    /// Pseudo-physical address of the frame's first byte.
    pub const fn addr(self) -> u64 {
        self.0 << crate::PAGE_SHIFT
    }
}

impl core::fmt::Display for DomId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "d{}", self.0)
    }
}
