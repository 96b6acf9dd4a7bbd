//! `event_channel_op` (`public/event_channel.h`): the operations that create, bind, signal and
//! close event channels, Xen's only asynchronous notification mechanism, and the 2-level ABI's
//! port limit.

use crate::types::{DomId, Port};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Ports of the 2-level ABI for a 64-bit guest: 64 words of 64 pending/mask bits.
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

/// `EVTCHNOP_*` sub-operations of `event_channel_op`.
pub mod op {
    pub const BIND_INTERDOMAIN: u32 = 0;
    pub const BIND_VIRQ: u32 = 1;
    pub const BIND_PIRQ: u32 = 2;
    pub const CLOSE: u32 = 3;
    pub const SEND: u32 = 4;
    pub const STATUS: u32 = 5;
    pub const ALLOC_UNBOUND: u32 = 6;
    pub const BIND_IPI: u32 = 7;
    pub const BIND_VCPU: u32 = 8;
    pub const UNMASK: u32 = 9;
    pub const RESET: u32 = 10;
    /// FIFO ABI only.
    pub const INIT_CONTROL: u32 = 11;
    /// FIFO ABI only.
    pub const EXPAND_ARRAY: u32 = 12;
    /// FIFO ABI only.
    pub const SET_PRIORITY: u32 = 13;
    pub const RESET_CONT: u32 = 14;
}

/// `EVTCHNSTAT_*`: what [`EvtchnStatus::status`] reports.
pub mod evtchnstat {
    pub const CLOSED: u32 = 0;
    /// Waiting for a remote domain to bind (`alloc_unbound`).
    pub const UNBOUND: u32 = 1;
    pub const INTERDOMAIN: u32 = 2;
    pub const PIRQ: u32 = 3;
    pub const VIRQ: u32 = 4;
    pub const IPI: u32 = 5;
}

/// `BIND_PIRQ__WILL_SHARE`: the guest accepts sharing the physical IRQ.
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `struct evtchn_alloc_unbound`: allocate a port in `dom` that `remote_dom` may bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnAllocUnbound {
    pub dom: DomId,
    pub remote_dom: DomId,
    /// OUT.
    pub port: Port,
}
assert_layout!(EvtchnAllocUnbound, size = 8, dom = 0, remote_dom = 2, port = 4);

/// `struct evtchn_init_control` (FIFO ABI): register vCPU `vcpu`'s control block at
/// `offset` in guest frame `control_gfn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnInitControl {
    pub control_gfn: u64,
    pub offset: u32,
    pub vcpu: u32,
    /// OUT: bits of an event word's LINK field.
    pub link_bits: u8,
    pub _pad: [u8; 7],
}
assert_layout!(EvtchnInitControl, size = 24, control_gfn = 0, offset = 8, vcpu = 12, link_bits = 16);

/// `struct evtchn_expand_array` (FIFO ABI): add guest frame `array_gfn` to the event array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnExpandArray {
    pub array_gfn: u64,
}
assert_layout!(EvtchnExpandArray, size = 8, array_gfn = 0);

/// `struct evtchn_set_priority` (FIFO ABI).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnSetPriority {
    pub port: Port,
    pub priority: u32,
}
assert_layout!(EvtchnSetPriority, size = 8, port = 0, priority = 4);

/// FIFO ABI sizes (`public/event_channel.h`).
pub mod fifo {
    /// Queues (priorities) per vCPU.
    pub const MAX_QUEUES: usize = 16;
    /// `sizeof(struct evtchn_fifo_control_block)`: `ready`, a reserved word, one head per
    /// queue. It must fit in the page at the registered offset.
    pub const CONTROL_BLOCK_SIZE: usize = 8 + 4 * MAX_QUEUES;
    /// `EVTCHN_FIFO_LINK_BITS`.
    pub const LINK_BITS: u8 = 17;
}

/// `struct evtchn_bind_interdomain`: connect a new local port to `remote_dom:remote_port`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    pub remote_dom: DomId,
    pub _pad: u16,
    pub remote_port: Port,
    /// OUT.
    pub local_port: Port,
}
assert_layout!(EvtchnBindInterdomain, size = 12, remote_dom = 0, remote_port = 4, local_port = 8);

/// `struct evtchn_bind_virq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindVirq {
    /// [`crate::xen::virq`] number.
    pub virq: u32,
    pub vcpu: u32,
    /// OUT.
    pub port: Port,
}
assert_layout!(EvtchnBindVirq, size = 12, virq = 0, vcpu = 4, port = 8);

/// `struct evtchn_bind_pirq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindPirq {
    pub pirq: u32,
    /// [`BIND_PIRQ_WILL_SHARE`].
    pub flags: u32,
    /// OUT.
    pub port: Port,
}
assert_layout!(EvtchnBindPirq, size = 12, pirq = 0, flags = 4, port = 8);

/// `struct evtchn_bind_ipi`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindIpi {
    pub vcpu: u32,
    /// OUT.
    pub port: Port,
}
assert_layout!(EvtchnBindIpi, size = 8, vcpu = 0, port = 4);

/// `struct evtchn_close`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnClose {
    pub port: Port,
}
assert_layout!(EvtchnClose, size = 4, port = 0);

/// `struct evtchn_send`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnSend {
    pub port: Port,
}
assert_layout!(EvtchnSend, size = 4, port = 0);

/// `struct evtchn_unmask`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnUnmask {
    pub port: Port,
}
assert_layout!(EvtchnUnmask, size = 4, port = 0);

/// `struct evtchn_bind_vcpu`: deliver `port` to `vcpu` from now on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindVcpu {
    pub port: Port,
    pub vcpu: u32,
}
assert_layout!(EvtchnBindVcpu, size = 8, port = 0, vcpu = 4);

/// `struct evtchn_reset`: close every port of `dom`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnReset {
    pub dom: DomId,
}
assert_layout!(EvtchnReset, size = 2, dom = 0);

/// `struct evtchn_status`. The union `u` is kept as raw bytes (its variant depends on
/// `status`); read and write it with the accessors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnStatus {
    pub dom: DomId,
    pub _pad: u16,
    pub port: Port,
    /// OUT: [`evtchnstat`].
    pub status: u32,
    /// OUT: vCPU the port is bound to.
    pub vcpu: u32,
    /// OUT: `unbound{dom}`, `interdomain{dom, port}`, `pirq` or `virq`.
    pub u: [u8; 8],
}
assert_layout!(EvtchnStatus, size = 24, dom = 0, port = 4, status = 8, vcpu = 12, u = 16);

impl EvtchnStatus {
    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.u[off], self.u[off + 1]])
    }
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes([self.u[off], self.u[off + 1], self.u[off + 2], self.u[off + 3]])
    }

    /// `u.unbound.dom`: who may bind an unbound port.
    pub fn unbound_dom(&self) -> DomId {
        DomId(self.u16_at(0))
    }
    /// `u.interdomain`: the remote end of an interdomain port.
    pub fn interdomain(&self) -> (DomId, Port) {
        (DomId(self.u16_at(0)), Port(self.u32_at(4)))
    }
    /// `u.pirq`.
    pub fn pirq(&self) -> u32 {
        self.u32_at(0)
    }
    /// `u.virq`.
    pub fn virq(&self) -> u32 {
        self.u32_at(0)
    }

    /// Sets `status = UNBOUND` and `u.unbound.dom`.
    pub fn set_unbound(&mut self, remote: DomId) {
        self.status = evtchnstat::UNBOUND;
        self.u = [0; 8];
        self.u[..2].copy_from_slice(&remote.0.to_le_bytes());
    }
    /// Sets `status = INTERDOMAIN` and `u.interdomain`.
    pub fn set_interdomain(&mut self, remote: DomId, remote_port: Port) {
        self.status = evtchnstat::INTERDOMAIN;
        self.u = [0; 8];
        self.u[..2].copy_from_slice(&remote.0.to_le_bytes());
        self.u[4..].copy_from_slice(&remote_port.0.to_le_bytes());
    }
    /// Sets `status = PIRQ` and `u.pirq`.
    pub fn set_pirq(&mut self, pirq: u32) {
        self.status = evtchnstat::PIRQ;
        self.u = [0; 8];
        self.u[..4].copy_from_slice(&pirq.to_le_bytes());
    }
    /// Sets `status = VIRQ` and `u.virq`.
    pub fn set_virq(&mut self, virq: u32) {
        self.status = evtchnstat::VIRQ;
        self.u = [0; 8];
        self.u[..4].copy_from_slice(&virq.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_union_round_trips() {
        let mut s = EvtchnStatus::default();
        s.set_interdomain(DomId(7), Port(0x1234_5678));
        assert_eq!(s.status, evtchnstat::INTERDOMAIN);
        assert_eq!(s.interdomain(), (DomId(7), Port(0x1234_5678)));
        // Byte placement as in C: dom at u+0, port at u+4.
        assert_eq!(&s.as_bytes()[16..24], &[7, 0, 0, 0, 0x78, 0x56, 0x34, 0x12]);
        s.set_virq(3);
        assert_eq!((s.status, s.virq()), (evtchnstat::VIRQ, 3));
        s.set_pirq(9);
        assert_eq!((s.status, s.pirq()), (evtchnstat::PIRQ, 9));
        s.set_unbound(DomId::DOM0);
        assert_eq!((s.status, s.unbound_dom()), (evtchnstat::UNBOUND, DomId::DOM0));
        assert_eq!(s.u[2..], [0; 6]);
    }
}
