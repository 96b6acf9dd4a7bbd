//! A TCP/IP stack for our kernels: [`smoltcp`] (a maintained `no_std` stack) over any
//! Ethernet device — netfront in a domU, dom0's own port on its switch — with the small
//! services the demos, tests and benchmarks use ([`http`]: an HTTP server and client, a TCP
//! echo service).
//!
//! Everything here is plain `alloc` code that takes the time as an argument, so two stacks
//! joined by an in-memory wire run the whole HTTP exchange in host tests.

pub mod http;

use alloc::vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// Where a stack sits on QEMU's user network (`10.0.2.0/24`, gateway `10.0.2.2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    pub ip: [u8; 4],
    pub prefix: u8,
    pub gateway: Option<[u8; 4]>,
}

pub use hypercall_abi::microvisor::netdemo::{domu_ip, DOM0_IP, GATEWAY};

/// Parses a dotted IPv4 address.
pub fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut ip {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// smoltcp's time from nanoseconds of system time.
pub fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

/// Bytes of each TCP socket's buffers: a 64 KiB window each way.
pub const TCP_BUFFER: usize = 65535;

/// An interface, its sockets and the device under it.
pub struct Stack<D: Device> {
    pub dev: D,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    /// New TCP sockets ACK at once instead of after smoltcp's delayed-ACK timer: for a
    /// stack polled when frames arrive rather than on its timers (dom0's).
    pub immediate_acks: bool,
}

impl<D: Device> Stack<D> {
    /// A stack on `dev` with Ethernet address `mac` at `addr`. `seed` seeds TCP's initial
    /// sequence numbers.
    pub fn new(mut dev: D, mac: [u8; 6], addr: Addr, seed: u64, now_ns: u64) -> Stack<D> {
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut dev, instant(now_ns));
        iface.update_ip_addrs(|a| {
            let [a0, a1, a2, a3] = addr.ip;
            let _ = a.push(IpCidr::new(IpAddress::v4(a0, a1, a2, a3), addr.prefix));
        });
        if let Some([g0, g1, g2, g3]) = addr.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(g0, g1, g2, g3));
        }
        Stack { dev, iface, sockets: SocketSet::new(vec![]), immediate_acks: false }
    }

    /// A TCP socket with [`TCP_BUFFER`]-byte buffers (see [`Stack::immediate_acks`]).
    pub fn tcp_socket(&mut self) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; TCP_BUFFER]);
        let tx = tcp::SocketBuffer::new(vec![0; TCP_BUFFER]);
        let mut s = tcp::Socket::new(rx, tx);
        if self.immediate_acks {
            s.set_ack_delay(None);
        }
        self.sockets.add(s)
    }

    /// Runs the stack: frames in and out, timers. True if a socket's state may have changed.
    pub fn poll(&mut self, now_ns: u64) -> bool {
        self.iface.poll(instant(now_ns), &mut self.dev, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// When the stack next needs polling without traffic (nanoseconds from `now_ns`).
    pub fn delay_ns(&mut self, now_ns: u64) -> Option<u64> {
        self.iface.poll_delay(instant(now_ns), &self.sockets).map(|d| d.total_micros() * 1000)
    }
}

#[cfg(test)]
pub(crate) mod wire {
    //! Two smoltcp devices joined back to back in memory, for host tests.
    use alloc::collections::VecDeque;
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use smoltcp::phy::{self, DeviceCapabilities, Medium};
    use smoltcp::time::Instant;

    type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

    pub struct End {
        rx: Queue,
        tx: Queue,
        /// Frames sent, in all.
        pub sent: Rc<RefCell<usize>>,
    }

    pub fn pair() -> (End, End) {
        let (a, b): (Queue, Queue) = Default::default();
        (
            End { rx: a.clone(), tx: b.clone(), sent: Default::default() },
            End { rx: b, tx: a, sent: Default::default() },
        )
    }

    pub struct Rx(Vec<u8>);
    pub struct Tx(Queue, Rc<RefCell<usize>>);

    impl phy::RxToken for Rx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }
    impl phy::TxToken for Tx {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut v = alloc::vec![0; len];
            let r = f(&mut v);
            self.0.borrow_mut().push_back(v);
            *self.1.borrow_mut() += 1;
            r
        }
    }
    impl phy::Device for End {
        type RxToken<'a> = Rx;
        type TxToken<'a> = Tx;
        fn receive(&mut self, _: Instant) -> Option<(Rx, Tx)> {
            let f = self.rx.borrow_mut().pop_front()?;
            Some((Rx(f), Tx(self.tx.clone(), self.sent.clone())))
        }
        fn transmit(&mut self, _: Instant) -> Option<Tx> {
            Some(Tx(self.tx.clone(), self.sent.clone()))
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = DeviceCapabilities::default();
            c.medium = Medium::Ethernet;
            c.max_transmission_unit = 1514;
            c
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(domu_ip(1), [10, 0, 2, 15]);
        assert_eq!(domu_ip(2), [10, 0, 2, 16]);
        assert_eq!(parse_ip("10.0.2.15"), Some([10, 0, 2, 15]));
        for bad in ["", "10.0.2", "10.0.2.15.1", "10.0.2.256", "10.0..2", "a.b.c.d", "+1.0.0.1"] {
            assert_eq!(parse_ip(bad), None, "{bad}");
        }
    }
}
