//! The PV random-number protocol (`vrng`): ours, as Xen has none. A frontend asks for random
//! bytes by naming a piece of one of its granted pages; the backend fills it and answers
//! with how many bytes it wrote.
//!
//! One-page ring of 16-byte slots (128 requests). Xenstore: the backend directory is
//! `backend/vrng/<domid>/<devid>`, the frontend's `device/vrng/<devid>`; the frontend
//! publishes the usual `ring-ref`, `event-channel` and `protocol`; the backend publishes
//! `max-request` when it connects.
//!
//! Everything in a request is the frontend's word and is checked by the backend on its
//! private copy ([`RngRequest::check`]): `len` in `1..=4096`, `offset + len <= 4096`, and the
//! grant must be one the frontend let the backend write (the hypervisor refuses a copy into a
//! read-only or unknown grant, which the backend answers with `-EFAULT`).

use super::ring::{ring_size, slot_size, BackRing, FrontRing};
use crate::types::GrantRef;
use crate::{Errno, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The device class in xenstore paths.
pub const KIND: &str = "vrng";
/// Backend key: the largest `len` a request may ask for.
pub const MAX_REQUEST: &str = "max-request";

/// Ask for `len` random bytes at `offset` in the page granted as `gref`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RngRequest {
    /// Echoed in the response.
    pub id: u64,
    pub gref: GrantRef,
    pub offset: u16,
    pub len: u16,
}
assert_layout!(RngRequest, size = 16, id = 0, gref = 8, offset = 12, len = 14);

/// The answer to the request `id`: `status` 0 and `len` bytes written, or `-errno` and 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RngResponse {
    pub id: u64,
    /// 0, or a negated [`Errno`].
    pub status: i32,
    pub len: u32,
}
assert_layout!(RngResponse, size = 16, id = 0, status = 8, len = 12);

impl RngRequest {
    /// The backend's checks of a request copy, before anything is done for it: `EINVAL`
    /// for an empty piece, one longer than a page, or one leaving the page.
    pub const fn check(&self) -> Result<(), Errno> {
        let (off, len) = (self.offset as usize, self.len as usize);
        if len == 0 || len > PAGE_SIZE || off + len > PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }
}

impl RngResponse {
    /// `len` bytes written for request `id`.
    pub const fn ok(id: u64, len: u32) -> Self {
        RngResponse { id, status: 0, len }
    }
    /// Request `id` failed with `e`.
    pub const fn error(id: u64, e: Errno) -> Self {
        RngResponse { id, status: -e.0, len: 0 }
    }
}

/// Slots of a one-page ring.
pub const RNG_RING_SIZE: u32 = ring_size(slot_size::<RngRequest, RngResponse>());
const _: () = assert!(RNG_RING_SIZE == 128);

/// The frontend's ring.
pub type RngFrontRing = FrontRing<RngRequest, RngResponse>;
/// The backend's ring.
pub type RngBackRing = BackRing<RngRequest, RngResponse>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_pieces_are_refused() {
        let r = |offset, len| RngRequest { id: 1, gref: GrantRef(8), offset, len };
        assert_eq!(r(0, 4096).check(), Ok(()));
        assert_eq!(r(4095, 1).check(), Ok(()));
        assert_eq!(r(0, 0).check(), Err(Errno::EINVAL));
        assert_eq!(r(0, 4097).check(), Err(Errno::EINVAL));
        assert_eq!(r(4000, 200).check(), Err(Errno::EINVAL));
        assert_eq!(r(u16::MAX, u16::MAX).check(), Err(Errno::EINVAL));
        assert_eq!(RngResponse::error(7, Errno::EFAULT), RngResponse { id: 7, status: -14, len: 0 });
    }

    proptest! {
        #[test]
        fn accepted_pieces_stay_in_the_page(offset: u16, len: u16) {
            let ok = RngRequest { id: 0, gref: GrantRef(0), offset, len }.check().is_ok();
            prop_assert_eq!(ok, len > 0 && offset as usize + len as usize <= PAGE_SIZE);
        }
    }
}
