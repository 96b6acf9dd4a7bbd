//! dom0's NIC: QEMU's virtio-net (`-device virtio-net-pci`) through virtio-drivers'
//! `VirtIONetRaw`, the uplink port of dom0's switch.
//!
//! Of virtio-drivers' two network APIs, `VirtIONetRaw` is the one that fits a ring-3 driver
//! domain: it never blocks (`transmit_begin`/`poll_transmit`, `receive_begin`/`poll_receive`)
//! and takes buffers the caller owns. (`VirtIONet::send` spins until the device is done, and
//! its receive buffers are heap `Vec`s that [`XenHal::share`] would have to bounce whenever
//! one straddles two machine frames.) The buffers are dom0's packet buffers
//! ([`crate::backends::vif::KernelIo`], one machine-contiguous region): each is half a page,
//! so `share` hands the device its machine address as it is, and a frame received from the
//! NIC is switched and grant-copied to a domU without another copy in dom0.
//!
//! Every buffer starts with [`HEADROOM`] bytes for virtio-net's header (12 bytes with
//! `VIRTIO_F_VERSION_1`, which the device must offer), so received frames sit where the rest
//! of the switch expects them and a frame for the NIC is sent from the buffer it is in.
//! Interrupts arrive as a pirq event channel ([`super::irq`]); reading the ISR acknowledges
//! the device, then the line is EOIed.

use super::hal::XenHal;
use super::irq::Irq;
use super::virtio_blk::{pci_transport, VIRTIO_VENDOR};
use crate::backends::vif::KernelIo;
use alloc::vec::Vec;
use dom0::netback::{Fabric, NetIo};
use dom0::netswitch::{BufId, PortId, HEADROOM, MAX_FRAME};
use dom0::pci::{self, Bdf, Function};
use pv_guest_kernel::println;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;

/// Modern (virtio 1.0) network device id, and the transitional one.
pub const DEVICE_ID_NET: [u16; 2] = [0x1041, 0x1000];
/// Descriptors per virtqueue.
const QUEUE: usize = 256;
/// Receive buffers kept posted.
pub const RX_POSTED: usize = 128;
/// Frames handed to the device at most (each holds a buffer until the device is done).
pub const TX_IN_FLIGHT: usize = 128;
/// Bytes of each receive buffer given to the device: a header and the largest frame (at least
/// the 1526 virtio-drivers asks for).
const RX_BUFFER: usize = HEADROOM + MAX_FRAME;
const _: () = assert!(RX_BUFFER >= 1526);

/// Counters of the NIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    pub rx: u64,
    pub rx_bytes: u64,
    /// Frames the device delivered that were unusable (too long, no header).
    pub rx_bad: u64,
    pub tx: u64,
    pub tx_bytes: u64,
    /// Frames the switch queued for the NIC that the device refused.
    pub tx_errors: u64,
    pub interrupts: u64,
}

/// The NIC and the buffers it holds.
pub struct Nic {
    pub bdf: Bdf,
    pub mac: [u8; 6],
    dev: VirtIONetRaw<XenHal, PciTransport, QUEUE>,
    irq: Option<Irq>,
    /// Buffer of each posted receive, by virtio token.
    rx_posted: Vec<Option<BufId>>,
    rx_count: usize,
    /// Buffer and length of each frame being sent, by token.
    tx_posted: Vec<Option<(BufId, usize)>>,
    tx_count: usize,
    pub stats: NicStats,
}

/// The first virtio-net function on the PCI bus.
pub fn find() -> Option<Function> {
    pci::enumerate(&super::portio::PortCam)
        .into_iter()
        .find(|f| f.vendor == VIRTIO_VENDOR && DEVICE_ID_NET.contains(&f.device))
}

impl Nic {
    /// Sets the device up (features, queues) and binds its interrupt.
    pub fn init(f: &Function) -> Result<Nic, &'static str> {
        let t = pci_transport(f)?;
        let dev = VirtIONetRaw::<XenHal, _, QUEUE>::new(t).map_err(|_| "device refused to start")?;
        let mut probe = [0u8; HEADROOM + 1];
        if dev.fill_buffer_header(&mut probe) != Ok(HEADROOM) {
            return Err("no VIRTIO_F_VERSION_1 (legacy header)");
        }
        let irq = match f.gsi() {
            Some(gsi) => match Irq::bind(gsi) {
                Ok(i) => Some(i),
                Err(e) => {
                    println!("dom0: net {}: cannot bind GSI {gsi} ({e}), polling instead", f.bdf);
                    None
                }
            },
            None => None,
        };
        Ok(Nic {
            bdf: f.bdf,
            mac: dev.mac_address(),
            dev,
            irq,
            rx_posted: alloc::vec![None; QUEUE],
            rx_count: 0,
            tx_posted: alloc::vec![None; QUEUE],
            tx_count: 0,
            stats: NicStats::default(),
        })
    }

    /// The interrupt, if bound.
    pub fn irq(&self) -> Option<&Irq> {
        self.irq.as_ref()
    }

    /// True if the device has something for us, or frames wait for it and it has room.
    pub fn has_work(&self, f: &Fabric<KernelIo>) -> bool {
        self.irq.as_ref().is_some_and(|i| i.pending())
            || self.dev.poll_receive().is_some()
            || (self.tx_count < TX_IN_FLIGHT && f.sw.queued(PortId::UPLINK) > 0)
            || (self.irq.is_none() && self.tx_count > 0)
    }

    /// One pass: acknowledge the interrupt, switch what arrived, reclaim what was sent, hand
    /// the device what waits for it, keep the receive buffers posted. True if anything moved.
    pub fn poll(&mut self, f: &mut Fabric<KernelIo>) -> bool {
        if let Some(irq) = &self.irq {
            if irq.take() {
                self.stats.interrupts += 1;
                let _ = self.dev.ack_interrupt();
                irq.eoi();
            }
        }
        let mut moved = self.receive(f);
        moved |= self.reclaim(f);
        moved |= self.transmit(f);
        self.refill(f);
        moved
    }

    fn receive(&mut self, f: &mut Fabric<KernelIo>) -> bool {
        let mut moved = false;
        while let Some(token) = self.dev.poll_receive() {
            let Some(b) = self.rx_posted.get_mut(usize::from(token)).and_then(Option::take) else {
                println!("dom0: net {}: the device completed a receive we did not post", self.bdf);
                break;
            };
            self.rx_count -= 1;
            moved = true;
            let buf = &mut f.io.buf(b)[..RX_BUFFER];
            // SAFETY: the same buffer (same address and length) as `receive_begin`'s.
            let r = unsafe { self.dev.receive_complete(token, buf) };
            match r {
                Ok((hdr, len)) if hdr == HEADROOM && len <= MAX_FRAME => {
                    self.stats.rx += 1;
                    self.stats.rx_bytes += len as u64;
                    f.ingress(PortId::UPLINK, b, len, false);
                }
                _ => {
                    self.stats.rx_bad += 1;
                    f.sw.pool.release(b);
                }
            }
        }
        moved
    }

    fn refill(&mut self, f: &mut Fabric<KernelIo>) {
        while self.rx_count < RX_POSTED {
            let Some(b) = f.sw.pool.alloc() else { return };
            let buf = &mut f.io.buf(b)[..RX_BUFFER];
            // SAFETY: the buffer is ours (one pool reference, in no queue) and is not touched
            // until the device hands it back through `poll_receive`.
            match unsafe { self.dev.receive_begin(buf) } {
                Ok(token) if usize::from(token) < QUEUE && self.rx_posted[usize::from(token)].is_none() => {
                    self.rx_posted[usize::from(token)] = Some(b);
                    self.rx_count += 1;
                }
                _ => {
                    f.sw.pool.release(b);
                    return;
                }
            }
        }
    }

    fn reclaim(&mut self, f: &mut Fabric<KernelIo>) -> bool {
        let mut moved = false;
        while let Some(token) = self.dev.poll_transmit() {
            let Some((b, len)) = self.tx_posted.get_mut(usize::from(token)).and_then(Option::take) else {
                println!("dom0: net {}: the device completed a send we did not post", self.bdf);
                break;
            };
            let buf = &f.io.buf(b)[..HEADROOM + len];
            // SAFETY: the same buffer and length as `transmit_begin`'s.
            let _ = unsafe { self.dev.transmit_complete(token, buf) };
            self.tx_count -= 1;
            f.sw.pool.release(b);
            moved = true;
        }
        moved
    }

    fn transmit(&mut self, f: &mut Fabric<KernelIo>) -> bool {
        let mut moved = false;
        while self.tx_count < TX_IN_FLIGHT && self.dev.can_send() {
            let Some(p) = f.sw.pop(PortId::UPLINK) else { break };
            let len = usize::from(p.len);
            let buf = &mut f.io.buf(p.buf)[..HEADROOM + len];
            // The header in the headroom: no offloads (all zero). A flooded frame shares its
            // buffer with other queues, which never look at the headroom.
            let _ = self.dev.fill_buffer_header(buf);
            // SAFETY: the buffer keeps the reference `pop` gave us until `reclaim`, and nothing
            // writes its frame or header meanwhile (buffers are read-only once switched).
            match unsafe { self.dev.transmit_begin(buf) } {
                Ok(token) if usize::from(token) < QUEUE && self.tx_posted[usize::from(token)].is_none() => {
                    self.tx_posted[usize::from(token)] = Some((p.buf, len));
                    self.tx_count += 1;
                    self.stats.tx += 1;
                    self.stats.tx_bytes += len as u64;
                    moved = true;
                }
                _ => {
                    self.stats.tx_errors += 1;
                    f.sw.pool.release(p.buf);
                    break;
                }
            }
        }
        moved
    }
}
