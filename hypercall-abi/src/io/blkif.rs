//! The PV block protocol (`public/io/blkif.h`): requests and responses on a ring of
//! 32 slots per page (a multi-page ring of `2^ring-page-order` pages holds more), data passed
//! through granted pages in 512-byte sector units, directly in the request (up to 11
//! segments) or, for `BLKIF_OP_INDIRECT`, in granted pages of segment descriptors.
//!
//! Requests come from an untrusted frontend, so besides the layouts this module has the pure
//! checks a backend applies to its private copy of a request: segment count, sector bounds
//! within a page, and the sector range against the disk size without overflow.

use super::ring::{ring_size, ring_size_for, slot_size, BackRing, FrontRing};
use crate::types::GrantRef;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Segments a direct request can carry.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Grant references of segment pages an indirect request can carry.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors in one indirect page.
pub const SEGS_PER_INDIRECT_FRAME: usize = crate::PAGE_SIZE / core::mem::size_of::<BlkifRequestSegment>();

/// The unit of `sector_number`, `first_sect` and `last_sect`, whatever the disk's sector-size.
pub const BLKIF_SECTOR_SIZE: u64 = 512;
/// `log2(BLKIF_SECTOR_SIZE)`.
pub const BLKIF_SECTOR_SHIFT: u32 = 9;
/// 512-byte sectors in a page: the highest `last_sect` is one less.
pub const SECTORS_PER_PAGE: u8 = (crate::PAGE_SIZE / BLKIF_SECTOR_SIZE as usize) as u8;

/// Value of the `protocol` xenstore key of a 64-bit frontend.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";

/// The xenstore side of a vbd (`blkif.h`'s "Backend/Frontend XenBus Nodes"): the device
/// class and the keys both ends name, written once so the two can never disagree.
pub mod keys {
    /// The device class: `device/vbd/<id>` and `backend/vbd/<domid>/<id>`.
    pub const KIND: &str = "vbd";
    /// `virtual-device` (frontend): the device number (`xvda` is 51712).
    pub const VIRTUAL_DEVICE: &str = "virtual-device";
    /// `device-type` (frontend): `disk`, `cdrom`, ...
    pub const DEVICE_TYPE: &str = "device-type";
    /// `feature-flush-cache` (backend): `BLKIF_OP_FLUSH_DISKCACHE` works.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// `feature-barrier` (backend): `BLKIF_OP_WRITE_BARRIER` works.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// `feature-discard` (backend): `BLKIF_OP_DISCARD` works.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// `feature-persistent` (both): grants are kept mapped across requests.
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// `max-ring-page-order` (backend): the largest multi-page ring offered.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// `ring-page-order` (frontend): the ring has `2^order` pages, granted as `ring-ref0`,
    /// `ring-ref1`, ... (without it, one page as `ring-ref`).
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// `feature-max-indirect-segments` (backend): `BLKIF_OP_INDIRECT` works with up to this
    /// many segments.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// `sectors` (backend): the disk's size in 512-byte sectors.
    pub const SECTORS: &str = "sectors";
    /// `sector-size` (backend): the logical sector size.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// `physical-sector-size` (backend).
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// `info` (backend): `VDISK_*` bits.
    pub const INFO: &str = "info";
    /// `mode` (backend): `r` or `w`.
    pub const MODE: &str = "mode";
}

/// `BLKIF_OP_*`.
pub mod op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    /// Write with ordering before and after (`feature-barrier`).
    pub const WRITE_BARRIER: u8 = 2;
    /// Flush the disk's write cache (`feature-flush-cache`).
    pub const FLUSH_DISKCACHE: u8 = 3;
    pub const RESERVED_1: u8 = 4;
    /// [`super::BlkifRequestDiscard`] (`feature-discard`).
    pub const DISCARD: u8 = 5;
    /// [`super::BlkifRequestIndirect`] (`feature-max-indirect-segments`).
    pub const INDIRECT: u8 = 6;
}

/// `BLKIF_RSP_*`: [`BlkifResponse::status`].
pub mod rsp {
    pub const EOPNOTSUPP: i16 = -2;
    pub const ERROR: i16 = -1;
    pub const OKAY: i16 = 0;
}

/// `BLKIF_DISCARD_SECURE`: [`BlkifRequestDiscard::flag`].
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// `VDISK_*`: bits of the backend's `info` key.
pub mod vdisk {
    pub const CDROM: u32 = 0x1;
    pub const REMOVABLE: u32 = 0x2;
    pub const READONLY: u32 = 0x4;
}

/// `struct blkif_request_segment`: one granted page and the sectors of it to transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifRequestSegment {
    pub gref: GrantRef,
    /// First 512-byte sector of the page to transfer.
    pub first_sect: u8,
    /// Last sector, inclusive.
    pub last_sect: u8,
    pub _pad: u16,
}
assert_layout!(BlkifRequestSegment, size = 8, gref = 0, first_sect = 4, last_sect = 5);

impl BlkifRequestSegment {
    /// Sectors covered, or `None` if `first_sect > last_sect` or the range leaves the page.
    pub const fn sectors(&self) -> Option<u64> {
        if self.first_sect <= self.last_sect && self.last_sect < SECTORS_PER_PAGE {
            Some((self.last_sect - self.first_sect) as u64 + 1)
        } else {
            None
        }
    }
    /// Byte offset of the transfer within the page.
    pub const fn offset(&self) -> usize {
        self.first_sect as usize * BLKIF_SECTOR_SIZE as usize
    }
}

/// `struct blkif_request` (read/write form): also the ring slot type, being the largest request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifRequest {
    /// [`op`].
    pub operation: u8,
    pub nr_segments: u8,
    /// `blkif_vdev_t`: only for read/write requests.
    pub handle: u16,
    pub _pad: u32,
    /// Frontend's cookie, echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: u64,
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}
assert_layout!(
    BlkifRequest,
    size = 112,
    operation = 0,
    nr_segments = 1,
    handle = 2,
    id = 8,
    sector_number = 16,
    seg = 24
);

/// Why a backend refuses a read/write request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkifRequestError {
    /// `nr_segments` is 0 or above [`BLKIF_MAX_SEGMENTS_PER_REQUEST`].
    BadSegmentCount,
    /// Segment `i` has an empty or out-of-page sector range.
    BadSegment(usize),
    /// The sector range overflows or ends past the disk.
    OutOfRange,
    /// An indirect request whose `indirect_op` is neither READ nor WRITE.
    BadIndirectOp,
}

/// Checks the segments of a read/write request (direct or indirect) starting at `sector`
/// against a disk of `capacity` 512-byte sectors and returns the number of sectors they
/// transfer. Every segment must cover a non-empty range within its page.
pub fn check_segments(
    segs: &[BlkifRequestSegment],
    sector: u64,
    capacity: u64,
) -> Result<u64, BlkifRequestError> {
    if segs.is_empty() {
        return Err(BlkifRequestError::BadSegmentCount);
    }
    let mut total = 0u64;
    for (i, s) in segs.iter().enumerate() {
        // At most 8 sectors per segment and at most u16::MAX segments: no overflow.
        total += s.sectors().ok_or(BlkifRequestError::BadSegment(i))?;
    }
    match sector.checked_add(total) {
        Some(end) if end <= capacity => Ok(total),
        _ => Err(BlkifRequestError::OutOfRange),
    }
}

impl BlkifRequest {
    /// The segments the request claims, or `None` if `nr_segments` is larger than the array.
    pub fn segments(&self) -> Option<&[BlkifRequestSegment]> {
        self.seg.get(..self.nr_segments as usize)
    }

    /// Checks a read/write request against a disk of `capacity` 512-byte sectors and returns
    /// the number of sectors it transfers.
    pub fn check_rw(&self, capacity: u64) -> Result<u64, BlkifRequestError> {
        match self.segments() {
            Some(s) if !s.is_empty() => check_segments(s, self.sector_number, capacity),
            _ => Err(BlkifRequestError::BadSegmentCount),
        }
    }

    /// The slot's bytes as a discard request (meaningful when `operation == DISCARD`).
    pub fn as_discard(&self) -> BlkifRequestDiscard {
        // A prefix of a 112-byte request always holds the 32-byte discard form.
        BlkifRequestDiscard::read_from_prefix(self.as_bytes()).map(|(d, _)| d).unwrap_or_default()
    }

    /// The slot's bytes as an indirect request (meaningful when `operation == INDIRECT`).
    pub fn as_indirect(&self) -> BlkifRequestIndirect {
        BlkifRequestIndirect::read_from_prefix(self.as_bytes()).map(|(d, _)| d).unwrap_or_default()
    }

    /// A ring slot carrying `d`, the rest zeroed.
    pub fn from_discard(d: &BlkifRequestDiscard) -> BlkifRequest {
        Self::from_prefix_bytes(d.as_bytes())
    }

    /// A ring slot carrying `r`, the rest zeroed.
    pub fn from_indirect(r: &BlkifRequestIndirect) -> BlkifRequest {
        Self::from_prefix_bytes(r.as_bytes())
    }

    /// A ring slot carrying an indirect `indirect_op` request of `nr_segments` segments from
    /// `sector_number`, described in the pages `indirect_grefs` (at most
    /// [`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`]; more are left out).
    pub fn indirect(
        indirect_op: u8,
        id: u64,
        sector_number: u64,
        nr_segments: u16,
        indirect_grefs: &[GrantRef],
    ) -> BlkifRequest {
        let mut r = BlkifRequestIndirect {
            operation: op::INDIRECT,
            indirect_op,
            nr_segments,
            id,
            sector_number,
            ..Default::default()
        };
        for (d, g) in r.indirect_grefs.iter_mut().zip(indirect_grefs) {
            *d = *g;
        }
        Self::from_indirect(&r)
    }

    fn from_prefix_bytes(b: &[u8]) -> BlkifRequest {
        let mut req = BlkifRequest::default();
        req.as_mut_bytes()[..b.len()].copy_from_slice(b);
        req
    }
}

/// `struct blkif_request_discard`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifRequestDiscard {
    /// [`op::DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or 0.
    pub flag: u8,
    pub handle: u16,
    pub _pad: u32,
    pub id: u64,
    pub sector_number: u64,
    pub nr_sectors: u64,
}
assert_layout!(
    BlkifRequestDiscard,
    size = 32,
    operation = 0,
    flag = 1,
    handle = 2,
    id = 8,
    sector_number = 16,
    nr_sectors = 24
);

impl BlkifRequestDiscard {
    /// True if the range lies within a disk of `capacity` sectors (without overflow).
    pub const fn in_range(&self, capacity: u64) -> bool {
        matches!(self.sector_number.checked_add(self.nr_sectors), Some(end) if end <= capacity)
    }
}

/// `struct blkif_request_indirect`: segments live in granted pages of
/// [`BlkifRequestSegment`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifRequestIndirect {
    /// [`op::INDIRECT`].
    pub operation: u8,
    /// [`op::READ`] or [`op::WRITE`].
    pub indirect_op: u8,
    pub nr_segments: u16,
    pub _pad0: u32,
    pub id: u64,
    pub sector_number: u64,
    pub handle: u16,
    pub _pad1: u16,
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    pub _pad2: u32,
}
assert_layout!(
    BlkifRequestIndirect,
    size = 64,
    operation = 0,
    indirect_op = 1,
    nr_segments = 2,
    id = 8,
    sector_number = 16,
    handle = 24,
    indirect_grefs = 28
);

impl BlkifRequestIndirect {
    /// Indirect pages needed for `nr_segments` (`INDIRECT_PAGES`), or `None` if more than
    /// [`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`] would be.
    pub const fn indirect_pages(&self) -> Option<usize> {
        let n = (self.nr_segments as usize).div_ceil(SEGS_PER_INDIRECT_FRAME);
        if n <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
            Some(n)
        } else {
            None
        }
    }

    /// Checks the header of an indirect request against a backend offering `max_segments`
    /// (`feature-max-indirect-segments`): the operation is READ or WRITE and the segment
    /// count is 1..=`max_segments` (and fits the indirect pages a request can name). Returns
    /// the grants of the indirect pages that hold the segments, each with the bytes of it
    /// that do; the segments themselves are checked with [`check_segments`] once copied.
    pub fn check(&self, max_segments: u16) -> Result<IndirectPages, BlkifRequestError> {
        if self.indirect_op != op::READ && self.indirect_op != op::WRITE {
            return Err(BlkifRequestError::BadIndirectOp);
        }
        let n = self.nr_segments as usize;
        let pages = match self.indirect_pages() {
            Some(p) if n > 0 && self.nr_segments <= max_segments => p,
            _ => return Err(BlkifRequestError::BadSegmentCount),
        };
        Ok(IndirectPages { grefs: self.indirect_grefs, pages, nr_segments: n })
    }
}

/// Where the segments of a checked indirect request are: page `i` of `pages` is granted as
/// `grefs[i]` and holds [`bytes`](Self::bytes)`(i)` bytes of descriptors from offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndirectPages {
    pub grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    pub pages: usize,
    pub nr_segments: usize,
}

impl IndirectPages {
    /// Bytes of segment descriptors in page `i`.
    pub const fn bytes(&self, i: usize) -> usize {
        let before = i * SEGS_PER_INDIRECT_FRAME;
        let left = self.nr_segments.saturating_sub(before);
        let n = if left < SEGS_PER_INDIRECT_FRAME { left } else { SEGS_PER_INDIRECT_FRAME };
        n * core::mem::size_of::<BlkifRequestSegment>()
    }
}

/// `struct blkif_response`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    pub _pad0: u8,
    /// [`rsp`] code.
    pub status: i16,
    pub _pad1: u32,
}
assert_layout!(BlkifResponse, size = 16, id = 0, operation = 8, status = 10);

/// `BLK_RING_SIZE` for one page.
pub const BLK_RING_SIZE: u32 = ring_size(slot_size::<BlkifRequest, BlkifResponse>());
const _: () = assert!(BLK_RING_SIZE == 32 && slot_size::<BlkifRequest, BlkifResponse>() == 112);

/// `BLK_RING_SIZE` of a ring of `2^order` pages (`__CONST_RING_SIZE(blkif, PAGE_SIZE << order)`).
pub const fn blk_ring_size(order: u32) -> u32 {
    ring_size_for(slot_size::<BlkifRequest, BlkifResponse>(), crate::PAGE_SIZE << order)
}
const _: () = assert!(blk_ring_size(0) == 32 && blk_ring_size(1) == 64 && blk_ring_size(4) == 512);

/// The largest ring Linux's xenbus grants (`XENBUS_MAX_RING_GRANT_ORDER`: 16 pages).
pub const XENBUS_MAX_RING_GRANT_ORDER: u32 = 4;

/// `blkif_front_ring_t`.
pub type BlkifFrontRing = FrontRing<BlkifRequest, BlkifResponse>;
/// `blkif_back_ring_t`.
pub type BlkifBackRing = BackRing<BlkifRequest, BlkifResponse>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rw(nr: u8, sector: u64) -> BlkifRequest {
        let mut r = BlkifRequest {
            operation: op::READ,
            nr_segments: nr,
            sector_number: sector,
            ..Default::default()
        };
        for s in r.seg.iter_mut() {
            s.first_sect = 0;
            s.last_sect = 7;
        }
        r
    }

    #[test]
    fn check_rw_bounds() {
        assert_eq!(rw(1, 0).check_rw(8), Ok(8));
        assert_eq!(rw(11, 0).check_rw(88), Ok(88));
        assert_eq!(rw(11, 1).check_rw(88), Err(BlkifRequestError::OutOfRange));
        assert_eq!(rw(0, 0).check_rw(100), Err(BlkifRequestError::BadSegmentCount));
        assert_eq!(rw(12, 0).check_rw(1000), Err(BlkifRequestError::BadSegmentCount));
        assert_eq!(rw(255, 0).check_rw(u64::MAX), Err(BlkifRequestError::BadSegmentCount));
        assert_eq!(rw(1, u64::MAX - 3).check_rw(u64::MAX), Err(BlkifRequestError::OutOfRange));
        let mut r = rw(2, 0);
        r.seg[1].first_sect = 5;
        r.seg[1].last_sect = 4;
        assert_eq!(r.check_rw(100), Err(BlkifRequestError::BadSegment(1)));
        r.seg[1].last_sect = 8;
        assert_eq!(r.check_rw(100), Err(BlkifRequestError::BadSegment(1)));
    }

    #[test]
    fn other_forms_share_the_slot() {
        let d = BlkifRequestDiscard {
            operation: op::DISCARD,
            flag: BLKIF_DISCARD_SECURE,
            id: 9,
            sector_number: 100,
            nr_sectors: 50,
            ..Default::default()
        };
        let slot = BlkifRequest::from_discard(&d);
        assert_eq!(slot.operation, op::DISCARD);
        assert_eq!(slot.id, 9);
        assert_eq!(slot.as_discard(), d);
        assert!(d.in_range(150) && !d.in_range(149));
        assert!(!BlkifRequestDiscard { sector_number: u64::MAX, nr_sectors: 1, ..d }.in_range(u64::MAX));

        let mut ind = BlkifRequestIndirect {
            operation: op::INDIRECT,
            indirect_op: op::WRITE,
            nr_segments: 513,
            ..Default::default()
        };
        ind.indirect_grefs[7] = GrantRef(77);
        let slot = BlkifRequest::from_indirect(&ind);
        assert_eq!(slot.as_indirect(), ind);
        assert_eq!(ind.indirect_pages(), Some(2));
        assert_eq!(BlkifRequestIndirect { nr_segments: 4097, ..ind }.indirect_pages(), None);
    }

    #[test]
    fn indirect_header_checks() {
        let ind = |indirect_op, nr_segments| BlkifRequestIndirect {
            operation: op::INDIRECT,
            indirect_op,
            nr_segments,
            ..Default::default()
        };
        assert_eq!(ind(op::READ, 0).check(32), Err(BlkifRequestError::BadSegmentCount));
        assert_eq!(ind(op::READ, 33).check(32), Err(BlkifRequestError::BadSegmentCount));
        assert_eq!(ind(op::FLUSH_DISKCACHE, 8).check(32), Err(BlkifRequestError::BadIndirectOp));
        assert_eq!(ind(op::INDIRECT, 8).check(32), Err(BlkifRequestError::BadIndirectOp));
        let p = ind(op::WRITE, 32).check(32).unwrap();
        assert_eq!((p.pages, p.bytes(0), p.bytes(1)), (1, 256, 0));
        let p = ind(op::READ, 513).check(u16::MAX).unwrap();
        assert_eq!((p.pages, p.bytes(0), p.bytes(1)), (2, 4096, 8));
        assert_eq!(ind(op::READ, 4097).check(u16::MAX), Err(BlkifRequestError::BadSegmentCount));
        assert_eq!(ind(op::READ, 4096).check(u16::MAX).map(|p| p.pages), Ok(8));
    }

    #[test]
    fn ring_sizes_follow_the_order() {
        // Xen's __RING_SIZE: (bytes - 64) / 112 rounded down to a power of two.
        assert_eq!([0, 1, 2, 3, 4].map(blk_ring_size), [32, 64, 128, 256, 512]);
    }

    proptest! {
        #[test]
        fn indirect_checks_bound_everything(bytes in proptest::collection::vec(any::<u8>(), 64), max in 0u16..5000) {
            let r = BlkifRequestIndirect::read_from_bytes(&bytes[..]).unwrap();
            if let Ok(p) = r.check(max) {
                prop_assert!(r.indirect_op == op::READ || r.indirect_op == op::WRITE);
                prop_assert!(p.nr_segments >= 1 && p.nr_segments <= max as usize);
                prop_assert!(p.pages >= 1 && p.pages <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
                let total: usize = (0..p.pages).map(|i| p.bytes(i)).sum();
                prop_assert_eq!(total, p.nr_segments * 8);
                prop_assert!((0..p.pages).all(|i| p.bytes(i) > 0 && p.bytes(i) <= crate::PAGE_SIZE));
            }
        }

        #[test]
        fn check_rw_never_overflows(bytes in proptest::collection::vec(any::<u8>(), 112), cap: u64) {
            let r = BlkifRequest::read_from_bytes(&bytes[..]).unwrap();
            if let Ok(n) = r.check_rw(cap) {
                prop_assert!((1..=88).contains(&n));
                prop_assert!(r.sector_number + n <= cap);
            }
        }
    }
}
