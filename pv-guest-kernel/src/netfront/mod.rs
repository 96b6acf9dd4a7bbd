//! The network frontend (`hypercall_abi::io::netif`, Xen's `vif`): a Linux-compatible
//! netfront on the split-driver framework — two rings (`tx-ring-ref`, `rx-ring-ref`) on one
//! event channel — and a [`smoltcp`] device over it (`kernel::NetFront`), so a domU has a
//! TCP/IP stack ([`crate::net`]).
//!
//! Buffers are granted once, for the life of the connection: [`TX_BUFS`] pages read-only
//! (a frame is copied into one and the backend grant-copies it out) and [`RX_BUFS`] pages
//! writable (posted on the rx ring; the backend grant-copies a frame in). The backend only
//! copies, never maps, so every grant can be revoked at once when the device closes.
//!
//! The backend is another domain: a tx response is accepted only for an id in flight, an rx
//! response only for a buffer posted, with a length that fits its page and no flag this
//! frontend did not negotiate (no `feature-sg`, no GSO: no `more_data`, no extra info). A
//! backend breaking those rules makes the device broken ([`Slots`], [`check_rx`]).

use hypercall_abi::io::netif::{netif_rsp, netrxf, NetifRxResponse, NetifTxResponse};
use hypercall_abi::PAGE_SIZE;

#[cfg(not(test))]
mod kernel;
#[cfg(not(test))]
pub use kernel::*;

/// Pages for frames being sent (at most this many in flight).
pub const TX_BUFS: usize = 64;
/// Pages posted for frames to receive.
pub const RX_BUFS: usize = 128;
/// Largest frame sent: MTU 1500 plus the Ethernet header.
pub const MTU_FRAME: usize = 1514;

/// The backend broke the protocol: the device is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol(pub &'static str);

/// Which of `N` buffers are with the backend.
#[derive(Debug)]
pub struct Slots<const N: usize> {
    busy: [bool; N],
    free: alloc::vec::Vec<u16>,
}

impl<const N: usize> Default for Slots<N> {
    fn default() -> Self {
        Slots { busy: [false; N], free: (0..N as u16).rev().collect() }
    }
}

impl<const N: usize> Slots<N> {
    /// A free buffer, now with the backend.
    pub fn take(&mut self) -> Option<u16> {
        let id = self.free.pop()?;
        self.busy[usize::from(id)] = true;
        Some(id)
    }
    /// The backend gave buffer `id` back: it must have had it.
    pub fn complete(&mut self, id: u16) -> Result<(), Protocol> {
        match self.busy.get_mut(usize::from(id)) {
            Some(b) if *b => {
                *b = false;
                self.free.push(id);
                Ok(())
            }
            Some(_) => Err(Protocol("response for a buffer not in flight")),
            None => Err(Protocol("response id out of range")),
        }
    }
    /// Marks `id` with the backend again without it going through the free list (an rx
    /// buffer re-posted as soon as it is consumed).
    pub fn repost(&mut self, id: u16) -> Result<(), Protocol> {
        match self.busy.get_mut(usize::from(id)) {
            Some(b) if !*b => {
                *b = true;
                self.free.retain(|f| *f != id);
                Ok(())
            }
            _ => Err(Protocol("re-posting a buffer in flight")),
        }
    }
    /// Buffers with the backend.
    pub fn in_flight(&self) -> usize {
        N - self.free.len()
    }
}

/// A tx response: `Ok(Some(ok))` for a packet's slot (`ok`: sent), `Ok(None)` for an
/// extra-info slot's `NULL`.
pub fn check_tx(r: &NetifTxResponse, slots: &mut Slots<TX_BUFS>) -> Result<Option<bool>, Protocol> {
    if r.status == netif_rsp::NULL {
        return Ok(None);
    }
    slots.complete(r.id)?;
    Ok(Some(r.status == netif_rsp::OKAY))
}

/// What to do with an rx response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rx {
    /// Buffer `id` holds a frame of `len` bytes at `offset`; `validated`: its checksums are
    /// known good.
    Frame { id: u16, offset: u16, len: u16, validated: bool },
    /// Buffer `id` came back without a frame (the backend's error): re-post it.
    Empty { id: u16 },
}

/// Checks an rx response against the buffers posted.
pub fn check_rx(r: &NetifRxResponse, slots: &mut Slots<RX_BUFS>) -> Result<Rx, Protocol> {
    if r.flags & (netrxf::MORE_DATA | netrxf::EXTRA_INFO | netrxf::GSO_PREFIX) != 0 {
        return Err(Protocol("rx flags that were not negotiated"));
    }
    if r.status > 0 && usize::from(r.offset) + r.status as usize > PAGE_SIZE {
        return Err(Protocol("rx frame past its page"));
    }
    slots.complete(r.id)?;
    if r.status <= 0 {
        return Ok(Rx::Empty { id: r.id });
    }
    let len = r.status as u16;
    Ok(Rx::Frame { id: r.id, offset: r.offset, len, validated: r.flags & netrxf::DATA_VALIDATED != 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn responses_must_match_buffers_in_flight() {
        let mut s = Slots::<RX_BUFS>::default();
        let a = s.take().unwrap();
        let ok = NetifRxResponse { id: a, offset: 0, flags: netrxf::DATA_VALIDATED, status: 60 };
        assert_eq!(check_rx(&ok, &mut s), Ok(Rx::Frame { id: a, offset: 0, len: 60, validated: true }));
        assert_eq!(check_rx(&ok, &mut s), Err(Protocol("response for a buffer not in flight")), "twice");
        s.repost(a).unwrap();
        assert!(s.repost(a).is_err());
        let past = NetifRxResponse { id: a, offset: 4000, flags: 0, status: 100 };
        assert_eq!(check_rx(&past, &mut s), Err(Protocol("rx frame past its page")));
        assert_eq!(s.in_flight(), 1, "a refused response does not retire its buffer");
        let err = NetifRxResponse { id: a, offset: 0, flags: 0, status: netif_rsp::ERROR };
        assert_eq!(check_rx(&err, &mut s), Ok(Rx::Empty { id: a }));
        s.repost(a).unwrap();
        for flags in [netrxf::MORE_DATA, netrxf::EXTRA_INFO, netrxf::GSO_PREFIX] {
            assert!(check_rx(&NetifRxResponse { id: a, offset: 0, flags, status: 60 }, &mut s).is_err());
        }
        assert_eq!(
            check_rx(&NetifRxResponse { id: 999, ..ok }, &mut s),
            Err(Protocol("response id out of range"))
        );
        let mut t = Slots::<TX_BUFS>::default();
        let id = t.take().unwrap();
        let null = NetifTxResponse { id: 12345, status: netif_rsp::NULL };
        assert_eq!(check_tx(&null, &mut t), Ok(None));
        assert_eq!(check_tx(&NetifTxResponse { id, status: netif_rsp::DROPPED }, &mut t), Ok(Some(false)));
        assert!(check_tx(&NetifTxResponse { id, status: 0 }, &mut t).is_err());
        assert_eq!(t.in_flight(), 0);
    }

    proptest! {
        /// Whatever a backend answers, no buffer is handed back twice or while not in flight,
        /// and an accepted frame always lies inside its page.
        #[test]
        fn any_rx_responses_keep_the_books(rsps in proptest::collection::vec((0u16..140, any::<u16>(), any::<u16>(), any::<i16>()), 0..300)) {
            let mut s = Slots::<RX_BUFS>::default();
            while s.take().is_some() {}
            let mut out = 0usize;
            for (id, offset, flags, status) in rsps {
                match check_rx(&NetifRxResponse { id, offset, flags, status }, &mut s) {
                    Ok(Rx::Frame { id: i, offset: o, len, .. }) => {
                        prop_assert_eq!(i, id);
                        prop_assert!(usize::from(o) + usize::from(len) <= PAGE_SIZE && len > 0);
                        out += 1;
                    }
                    Ok(Rx::Empty { .. }) => out += 1,
                    Err(_) => {}
                }
                prop_assert_eq!(s.in_flight() + out, RX_BUFS);
            }
        }
    }
}
