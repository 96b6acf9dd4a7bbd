//! XenBus, guest side: the xenstore client ([`client::Xenbus`]) over the domain's xenstore
//! ring ([`RingTransport`]), whose page and event channel the builder names in start_info
//! (`store_mfn`, `store_evtchn`). The byte-ring code ([`ring`]) is shared with dom0's
//! xenstored and console backend, which serve the other end of the same pages. The XenBus
//! state machine every split device's two ends follow is [`state`].

pub mod client;
pub mod ring;
pub mod state;

pub use client::{Transport, TxId, WatchEvent, Xenbus};

#[cfg(not(test))]
mod kernel;
#[cfg(not(test))]
pub use kernel::*;
