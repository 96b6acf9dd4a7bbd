//! Ring fuzzing for backends' host tests: what a hostile frontend does to its shared ring
//! page between two services of the backend ([`Scribble`], made from arbitrary [`RawStep`]s
//! a property test generates), and the check that a backend wrote nothing but what a backend
//! may write ([`check_backend_writes`]). Used by the framework's own tests and, through the
//! `test-doubles` feature, by dom0's backends' tests (blkback, rngback). (No proptest here:
//! this module is built into dom0's test builds, whose binary must stay free of std.)

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::ring::{
    RingMemory, REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RING_OFFSET, RSP_EVENT_OFFSET, RSP_PROD_OFFSET,
};
use hypercall_abi::PAGE_SIZE;

/// One step of a hostile frontend.
#[derive(Clone, Debug)]
pub enum Scribble {
    /// Any bytes anywhere in the page: requests, responses, the header's indexes.
    Bytes { off: u16, bytes: Vec<u8> },
    /// `req_prod` set to any value.
    ReqProd(u32),
    /// `req_prod` moved on by a few from where it is (a plausible burst of requests, whatever
    /// their slots hold).
    Publish(u8),
    /// `rsp_event` set to any value.
    RspEvent(u32),
    /// Slot `slot`'s bytes rewritten (a request rewritten after it was published).
    Slot { slot: u8, bytes: Vec<u8> },
    /// The backend serves now.
    Service,
}

/// What a property test generates for one step: any kind, offset, bytes and value; e.g.
/// `proptest::collection::vec(any::<RawStep>(), 1..150)`.
pub type RawStep = (u8, u16, Vec<u8>, u32);

impl Scribble {
    /// The step `raw` stands for: about a quarter services, the rest spread over the kinds
    /// of scribbling, plausible bursts of requests the most common.
    pub fn from_raw(raw: &RawStep) -> Scribble {
        let (kind, off, bytes, v) = raw;
        let bytes = if bytes.is_empty() { alloc::vec![0] } else { bytes.clone() };
        match kind % 16 {
            0 | 1 => Scribble::Bytes { off: off % PAGE_SIZE as u16, bytes },
            2 => Scribble::ReqProd(*v),
            3..=5 => Scribble::Publish((v % 7 + 1) as u8),
            6 => Scribble::RspEvent(*v),
            7..=9 => Scribble::Slot { slot: *off as u8, bytes },
            _ => Scribble::Service,
        }
    }
}

/// Applies a step (other than [`Scribble::Service`]) to the ring page; `slot_size` is the
/// ring's entry size.
pub fn apply<M: RingMemory + ?Sized>(page: &M, s: &Scribble, slot_size: usize) {
    match s {
        Scribble::Bytes { off, bytes } => {
            let off = usize::from(*off);
            let n = bytes.len().min(PAGE_SIZE - off);
            page.write_bytes(off, &bytes[..n]);
        }
        Scribble::ReqProd(v) => page.store_u32_release(REQ_PROD_OFFSET, *v),
        Scribble::Publish(n) => {
            let p = page.load_u32_acquire(REQ_PROD_OFFSET);
            page.store_u32_release(REQ_PROD_OFFSET, p.wrapping_add(u32::from(*n)));
        }
        Scribble::RspEvent(v) => page.store_u32_release(RSP_EVENT_OFFSET, *v),
        Scribble::Slot { slot, bytes } => {
            let slots = (PAGE_SIZE - RING_OFFSET) / slot_size;
            let at = RING_OFFSET + usize::from(*slot) % slots * slot_size;
            let n = bytes.len().min(slot_size);
            page.write_bytes(at, &bytes[..n]);
        }
        Scribble::Service => {}
    }
}

/// Checks that between `before` and `after` (the page around one service) the backend wrote
/// only what a backend may: the `rsp_prod` and `req_event` words, and the response slots it
/// produced, `[rsp_prod_pvt_before, rsp_prod_pvt_after)` of a ring of `size` slots of
/// `slot_size` bytes. The first byte written elsewhere is the error.
pub fn check_backend_writes(
    before: &[u8],
    after: &[u8],
    slot_size: usize,
    size: u32,
    rsp_prod_pvt: (u32, u32),
) -> Result<(), String> {
    let produced = rsp_prod_pvt.1.wrapping_sub(rsp_prod_pvt.0);
    if produced > size {
        return Err(format!("{produced} responses produced in one service of a {size}-slot ring"));
    }
    let own_slot =
        |slot: usize| (0..produced).any(|k| (rsp_prod_pvt.0.wrapping_add(k) % size) as usize == slot);
    for (off, (b, a)) in before.iter().zip(after).enumerate() {
        if b == a {
            continue;
        }
        let allowed = if off < RING_OFFSET {
            (RSP_PROD_OFFSET..RSP_PROD_OFFSET + 4).contains(&off)
                || (REQ_EVENT_OFFSET..REQ_EVENT_OFFSET + 4).contains(&off)
        } else {
            let slot = (off - RING_OFFSET) / slot_size;
            slot < size as usize && own_slot(slot)
        };
        if !allowed {
            return Err(format!("the backend wrote byte {off:#x} ({b:#04x} -> {a:#04x})"));
        }
    }
    Ok(())
}
