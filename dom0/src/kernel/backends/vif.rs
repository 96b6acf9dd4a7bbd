//! The `vif` backend kind and the network around it in dom0: one region of packet buffers,
//! the switch ([`dom0::netswitch`]), a `vif` per domU ([`dom0::netback`] is the driver, on the
//! split-driver framework; [`super`] the host), the NIC as the switch's uplink
//! ([`crate::hw::virtio_net`]) and dom0's own TCP/IP stack on a port of its own
//! (`10.0.2.10`: an HTTP server on port 80 and a TCP echo service on port 7, so the host
//! can reach dom0 natively for the benchmarks' comparison).
//!
//! Options on dom0's command line: `vif=<name|id>[,...]` or `vif=none` (which domUs get a
//! vif; default: every domU), `net=off` (leave the NIC alone).

use super::{BackendKind, Backends};
use crate::hw::dma::{self, DmaRegion};
use crate::hw::virtio_net::{self, Nic};
use crate::services::Service;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use dom0::netback::{Fabric, NetDriver, NetIo};
use dom0::netswitch::{self, vif_mac, BufId, PortId, Switch, BUF_SIZE, HEADROOM};
use dom0::xenstore::toolstack::DeviceConfig;
use dom0::xenstore::Xenstore;
use hypercall_abi::grant_table::GnttabCopy;
use hypercall_abi::io::netif::{MacDisplay, KIND};
use hypercall_abi::{DomId, Port, PAGE_SIZE};
use pv_guest_kernel::net::{self, http, Stack};
use pv_guest_kernel::{cmdline, hypercall, println, time};
use smoltcp::phy::{self, DeviceCapabilities, Medium};

/// Packet buffers: 1024 × 2 KiB, one machine-contiguous extent of the largest order.
pub const BUFFERS: u16 = 1024;
const REGION_PAGES: usize = BUFFERS as usize * BUF_SIZE / PAGE_SIZE;

/// dom0's packet buffers and its grant copies.
pub struct KernelIo {
    region: DmaRegion,
    /// Copy operations and hypercalls made.
    pub copies: u64,
    pub batches: u64,
}

impl KernelIo {
    fn new() -> Result<KernelIo, &'static str> {
        let region = dma::alloc(REGION_PAGES).map_err(|_| "no DMA memory for packet buffers")?;
        Ok(KernelIo { region, copies: 0, batches: 0 })
    }
}

impl NetIo for KernelIo {
    fn grant_copy(&mut self, ops: &mut [GnttabCopy]) {
        self.batches += 1;
        self.copies += ops.len() as u64;
        if hypercall::grant_table_op(ops).is_err() {
            // The whole batch was refused (a bad argument, never a bad grant): fail each op.
            for op in ops.iter_mut() {
                op.status = hypercall_abi::grant_table::gntst::GENERAL_ERROR;
            }
        }
    }

    fn buf_frame(&self, b: BufId) -> (u64, u16) {
        let ma = self.region.ma + u64::from(b.0) * BUF_SIZE as u64;
        (ma >> 12, (ma & (PAGE_SIZE as u64 - 1)) as u16)
    }

    fn buf(&mut self, b: BufId) -> &mut [u8] {
        let i = usize::from(b.0).min(usize::from(BUFFERS) - 1);
        // SAFETY: buffer `i` lies inside the region (`i < BUFFERS`, the region holds them
        // all), which is mapped for dom0's lifetime and reached only through `&mut self`.
        unsafe {
            core::slice::from_raw_parts_mut((self.region.va + (i * BUF_SIZE) as u64) as *mut u8, BUF_SIZE)
        }
    }

    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
}

type SharedFabric = Rc<RefCell<Fabric<KernelIo>>>;

/// The `vif` kind: every domU (or those `vif=` names) gets one, on the switch.
pub struct Vifs {
    fabric: SharedFabric,
    wanted: Option<Vec<String>>,
    uplink: String,
}

impl BackendKind for Vifs {
    type Driver = NetDriver<KernelIo>;
    const KIND: &'static str = KIND;

    fn devid(&self) -> u32 {
        0
    }

    fn driver_for(&mut self, domid: DomId, name: &str) -> Option<Self::Driver> {
        if let Some(w) = &self.wanted {
            if !w.iter().any(|w| dom0::domains::names(w, name, domid)) {
                return None;
            }
        }
        Some(NetDriver::new(self.fabric.clone(), PortId::vif(domid.0), vif_mac(domid.0, 0)))
    }

    fn entries(&self, d: &Self::Driver) -> DeviceConfig {
        let mac = format!("{}", MacDisplay(d.mac));
        let common = alloc::vec![(String::from("mac"), mac), (String::from("handle"), String::from("0"))];
        // The switch pins the vif to this address; the frontend may not change it.
        DeviceConfig {
            frontend_ro_entries: common.clone(),
            backend_entries: common,
            ..DeviceConfig::default()
        }
    }

    fn describe(&self, d: &Self::Driver) -> String {
        format!("vif {} on dom0's switch (uplink {})", MacDisplay(d.mac), self.uplink)
    }

    fn needs_service(&self, d: &Self::Driver) -> bool {
        d.has_rx_work()
    }

    fn disconnected(&self, d: &mut Self::Driver, label: &str, unmapped: bool) -> String {
        let s = d.last.take().unwrap_or_default();
        // The figures as `key=value` fields, which the host tests read (xtask::kv): `tx` is
        // what the frontend sent (switched, refused, dropped), `rx` what it was given;
        // `ring_unmapped` covers both rings.
        format!(
            "dom0: {label}: disconnected (vif) tx_packets={} tx_bytes={} refused={} dropped={} rx_packets={} rx_bytes={} rx_errors={} ring_unmapped={}",
            s.tx_packets,
            s.tx_bytes,
            s.tx_errors,
            s.tx_dropped,
            s.rx_packets,
            s.rx_bytes,
            s.rx_errors,
            u8::from(unmapped)
        )
    }
}

/// dom0's own port on the switch, as a smoltcp device: frames for it are read straight out
/// of the packet buffers, frames from it are written into fresh ones and switched.
pub struct LocalPort {
    fabric: SharedFabric,
}

pub struct LocalRx {
    fabric: SharedFabric,
    buf: BufId,
    len: usize,
}

pub struct LocalTx {
    fabric: SharedFabric,
}

impl phy::RxToken for LocalRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // smoltcp answers from inside `f` (through the tx token, which borrows the fabric),
        // so the frame is lent without holding the fabric's borrow.
        let frame = self.fabric.borrow_mut().io.buf(self.buf)[HEADROOM..HEADROOM + self.len].as_ptr();
        // SAFETY: the buffer lies in the packet region, mapped for dom0's lifetime; this token
        // holds a pool reference to it, and a switched buffer is only read until its last
        // reference is released (below, after `f`), so nothing writes it meanwhile.
        let data = unsafe { core::slice::from_raw_parts(frame, self.len) };
        let r = f(data);
        self.fabric.borrow_mut().sw.pool.release(self.buf);
        r
    }
}

impl phy::TxToken for LocalTx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut fab = self.fabric.borrow_mut();
        let len = len.min(netswitch::MAX_FRAME);
        let Some(b) = fab.sw.pool.alloc() else {
            // No buffer: the frame is built and dropped, as a NIC out of descriptors would.
            let mut spill = alloc::vec![0; len];
            return f(&mut spill);
        };
        let r = f(&mut fab.io.buf(b)[HEADROOM..HEADROOM + len]);
        // smoltcp filled in every checksum.
        fab.ingress(PortId::LOCAL, b, len, true);
        r
    }
}

impl phy::Device for LocalPort {
    type RxToken<'a> = LocalRx;
    type TxToken<'a> = LocalTx;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(LocalRx, LocalTx)> {
        let p = self.fabric.borrow_mut().sw.pop(PortId::LOCAL)?;
        Some((
            LocalRx { fabric: self.fabric.clone(), buf: p.buf, len: usize::from(p.len) },
            LocalTx { fabric: self.fabric.clone() },
        ))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<LocalTx> {
        Some(LocalTx { fabric: self.fabric.clone() })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// dom0's stack and its services.
struct Local {
    stack: Stack<LocalPort>,
    http: http::Server,
    echo: http::Echo,
}

/// The whole network: NIC, switch, vifs, dom0's stack.
pub struct NetService {
    fabric: SharedFabric,
    nic: Nic,
    vifs: Box<Backends<Vifs>>,
    local: Local,
}

impl Service for NetService {
    fn name(&self) -> &'static str {
        "net"
    }

    fn domain_gone(&mut self, id: DomId) {
        self.vifs.domain_gone(id);
    }

    fn report(&self) -> Option<String> {
        let n = self.nic.stats;
        let fab = self.fabric.borrow();
        Some(format!(
            "net: NIC received {} frames/{} bytes ({} bad), sent {} frames/{} bytes ({} refused), {} interrupts; {} grant copies in {} calls; {} of {} packet buffers free",
            n.rx, n.rx_bytes, n.rx_bad, n.tx, n.tx_bytes, n.tx_errors, n.interrupts,
            fab.io.copies, fab.io.batches, fab.sw.pool.free(), fab.sw.pool.size()
        ))
    }

    fn poll(&mut self, fired: &[Port]) -> bool {
        let mut moved = self.nic.poll(&mut self.fabric.borrow_mut());
        moved |= self.vifs.poll(fired);
        let now = time::now_ns();
        let l = &mut self.local;
        if self.fabric.borrow().sw.queued(PortId::LOCAL) > 0 || l.stack.delay_ns(now) == Some(0) {
            // Until the stack and its services settle (bounded: a pass must end).
            for _ in 0..8 {
                let a = l.stack.poll(now);
                let b = l.http.poll(&mut l.stack, now) | l.echo.poll(&mut l.stack);
                if !a && !b {
                    break;
                }
            }
        }
        // What the vifs and dom0's stack queued for the NIC goes out now.
        moved |= self.nic.poll(&mut self.fabric.borrow_mut());
        moved
    }

    fn has_work(&self) -> bool {
        let fab = self.fabric.borrow();
        self.nic.has_work(&fab) || fab.sw.queued(PortId::LOCAL) > 0 || self.vifs.has_work()
    }
}

/// The network service, if there is a virtio-net device and `net=off` is not given.
pub fn service(cmd: &str, xs: &Rc<RefCell<Xenstore>>) -> Option<Box<dyn Service>> {
    if cmdline::get(cmd, "net") == Some("off") {
        return None;
    }
    let f = virtio_net::find()?;
    let nic = match Nic::init(&f) {
        Ok(n) => n,
        Err(e) => {
            println!("dom0: net {}: not usable: {e}", f.bdf);
            return None;
        }
    };
    let io = match KernelIo::new() {
        Ok(io) => io,
        Err(e) => {
            println!("dom0: net {}: {e}", f.bdf);
            return None;
        }
    };
    let mut sw = Switch::new(BUFFERS);
    sw.add_port(PortId::UPLINK, None);
    let dom0_mac = vif_mac(0, 0);
    sw.add_port(PortId::LOCAL, Some(dom0_mac));
    let fabric = Rc::new(RefCell::new(Fabric { sw, io }));
    let now = time::now_ns();
    let addr = net::Addr { ip: net::DOM0_IP, prefix: 24, gateway: Some(net::GATEWAY) };
    let mut stack = Stack::new(LocalPort { fabric: fabric.clone() }, dom0_mac, addr, time::rdtsc(), now);
    // dom0's stack is polled when frames arrive, not on its timers: its ACKs must not wait
    // for smoltcp's delayed-ACK timer.
    stack.immediate_acks = true;
    let http = http::Server::new(&mut stack, 80, 4, "dom0");
    let echo = http::Echo::new(&mut stack, 7, 2);
    println!(
        "dom0: net {}: virtio-net {} ({}), switch up; dom0 at {}.{}.{}.{} ({}): http on port 80, echo on port 7",
        f.bdf,
        MacDisplay(nic.mac),
        match nic.irq() {
            Some(i) => format!("GSI {} -> pirq {} -> port {}", i.gsi, i.pirq, i.port.0),
            None => String::from("polled"),
        },
        net::DOM0_IP[0],
        net::DOM0_IP[1],
        net::DOM0_IP[2],
        net::DOM0_IP[3],
        MacDisplay(dom0_mac),
    );
    let wanted = dom0::netback::keys::parse_vif_option(cmdline::get(cmd, "vif"));
    let vifs =
        Backends::new(Vifs { fabric: fabric.clone(), wanted, uplink: format!("virtio-net {}", f.bdf) }, xs);
    Some(Box::new(NetService { fabric, nic, vifs, local: Local { stack, http, echo } }))
}
