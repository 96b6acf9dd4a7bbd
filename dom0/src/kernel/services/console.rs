//! The console backend as a service (what xenconsoled does): each domU's console ring, set
//! up by the domain builder, is mapped ([`crate::foreign`]) and its port bound; output is
//! drained into `[name] line` on dom0's console ([`dom0::console_backend`] makes hostile text
//! safe and bounds each drain), and the backend walks the XenBus handshake with the domain's
//! console frontend (InitWait → frontend Connected → backend Connected).
//!
//! Options: `conin=<domid>:<text>` pushes `<text>` (underscores as spaces) and a newline into
//! that domain's console input once its ring is served. `console-input=<name|id>` gives that
//! domain what is typed on the machine's serial line, as `xl console` would (dom0 reads it
//! with `CONSOLEIO_read` every [`INPUT_POLL_NS`]; the hypervisor raises no event for it).

use super::xenstored::served;
use super::{BuiltRing, DomainInfo, Service};
use crate::foreign::{self, ForeignPage};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use dom0::console_backend::{self, ConsoleLog};
use dom0::local_xs::DomainWatches;
use dom0::xenstore::toolstack::backend_path;
use dom0::xenstore::Xenstore;
use hypercall_abi::grant_table::GNTTAB_RESERVED_CONSOLE;
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::{DomId, Errno, Port};
use pv_guest_kernel::split;
use pv_guest_kernel::split::kernel::{KernelOps, PENDING};
use pv_guest_kernel::split::EventOps;
use pv_guest_kernel::xenbus::state::{Role, XenbusDevice};
use pv_guest_kernel::{cmdline, events, hypercall, println};

/// One domain's console.
struct Console {
    name: String,
    page: ForeignPage,
    port: Port,
    log: ConsoleLog,
    dev: XenbusDevice,
}

/// The console backend.
pub struct ConsoleBackend {
    /// Its own connection to xenstored, for the handshake (watches on the frontends' state).
    w: DomainWatches,
    consoles: BTreeMap<DomId, Console>,
    ports: BTreeMap<Port, DomId>,
    /// `conin=`: console input for one domain.
    input: Option<(DomId, Vec<u8>)>,
    /// `console-input=`: the domain (name or id) the serial line's input goes to, once it
    /// is served, and bytes read for it that its ring had no room for yet.
    live: Option<String>,
    live_id: Option<DomId>,
    live_pending: Vec<u8>,
}

/// How often the serial line is read while a domain takes its input (typing feels immediate,
/// and an idle dom0 wakes 50 times a second only when asked to).
pub const INPUT_POLL_NS: u64 = 20_000_000;

fn print_line(name: &str) -> impl Fn(&str) + '_ {
    move |line: &str| println!("[{name}] {line}")
}

impl ConsoleBackend {
    pub fn new(cmd: &str, xs: &Rc<RefCell<Xenstore>>) -> ConsoleBackend {
        ConsoleBackend {
            w: DomainWatches::new(xs, "console"),
            consoles: BTreeMap::new(),
            ports: BTreeMap::new(),
            input: cmdline::get(cmd, "conin").and_then(console_backend::parse_console_input),
            live: cmdline::get(cmd, "console-input").map(String::from),
            live_id: None,
            live_pending: Vec::new(),
        }
    }

    /// Maps the console ring, binds its port and starts the backend's handshake (InitWait).
    fn attach(&mut self, d: &DomainInfo, ring: BuiltRing) -> Result<Console, Errno> {
        let id = d.id;
        let page = foreign::map(id, GNTTAB_RESERVED_CONSOLE, ring.mfn)?;
        let port = match KernelOps.bind_interdomain(id, ring.port) {
            Ok(p) => p,
            Err(e) => {
                let _ = foreign::unmap(page);
                return Err(e);
            }
        };
        console_backend::mark_connected(&page.page());
        let front = format!("/local/domain/{}/console", id.0);
        let back = backend_path(DomId::DOM0, "console", id, 0);
        let mut dev = XenbusDevice::new(Role::Backend, &back, &front);
        dev.load(&mut self.w.xb);
        // The ring and port are the builder's: the framework's part is the state walk.
        let _ = split::follow(&mut dev, &mut self.w.xb, |_| true);
        let _ = self.w.watch(id, &dev.other_state_path());
        let c = Console { name: d.name.clone(), page, port, log: ConsoleLog::new(&d.name), dev };
        if let Some((target, text)) = &self.input {
            if *target == id {
                let n = console_backend::push_input(&c.page.page(), text);
                let _ = events::send(c.port);
                println!("dom0: {n} bytes of console input queued for d{}", id.0);
            }
        }
        Ok(c)
    }

    /// Moves what was typed on the serial line into the live domain's console input; true
    /// if anything moved. Bytes its ring has no room for wait here (the serial line's FIFO
    /// then holds the rest: nothing typed is dropped).
    fn forward_input(&mut self) -> bool {
        let Some(c) = self.live_id.and_then(|id| self.consoles.get(&id)) else { return false };
        if self.live_pending.is_empty() {
            let mut buf = [0u8; 256];
            match hypercall::console_read(&mut buf) {
                Ok(n) => self.live_pending.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
        if self.live_pending.is_empty() {
            return false;
        }
        let n = console_backend::push_input(&c.page.page(), &self.live_pending);
        self.live_pending.drain(..n);
        if n > 0 {
            let _ = events::send(c.port);
        }
        n > 0
    }

    /// Drains a console's output; true if anything was taken.
    fn drain(&mut self, id: DomId) -> bool {
        let Some(c) = self.consoles.get_mut(&id) else { return false };
        let (taken, more) = console_backend::drain(&c.page.page(), &mut c.log, print_line(&c.name));
        if taken > 0 {
            let _ = events::send(c.port);
        }
        if more {
            // Come back after the others had their turn.
            PENDING.raise(c.port);
        }
        taken > 0
    }

    fn handshake(&mut self, id: DomId) {
        let Some(c) = self.consoles.get_mut(&id) else { return };
        self.w.used();
        match split::follow(&mut c.dev, &mut self.w.xb, |_| true) {
            Ok(entered) if entered.contains(&XenbusState::Connected) => {
                println!("dom0: d{} ({}) console frontend connected", id.0, c.name);
            }
            Ok(_) => {}
            Err((step, e)) => println!("dom0: d{}: console state {step:?} failed: {e}", id.0),
        }
    }
}

impl Service for ConsoleBackend {
    fn name(&self) -> &'static str {
        "console"
    }

    fn domain_added(&mut self, d: &DomainInfo) -> Option<String> {
        let how = match d.console {
            Some(ring) => match self.attach(d, ring) {
                Ok(c) => {
                    let how = c.page.how;
                    if self.live.as_deref().is_some_and(|w| dom0::domains::names(w, &d.name, d.id)) {
                        self.live_id = Some(d.id);
                        self.live_pending.clear();
                        println!(
                            "dom0: d{} ({}) takes the serial console's input (leave it with `poweroff -f` in the guest, or end QEMU with Ctrl-C)",
                            d.id.0, d.name
                        );
                    }
                    self.ports.insert(c.port, d.id);
                    self.consoles.insert(d.id, c);
                    Some(how)
                }
                Err(e) => {
                    println!("dom0: d{} ({}): console backend failed: {e}", d.id.0, d.name);
                    None
                }
            },
            None => None,
        };
        Some(format!("console {}", served(how)))
    }

    /// Its last words first (they were written before it shut down), then the ring goes.
    fn domain_gone(&mut self, id: DomId) {
        let Some(mut c) = self.consoles.remove(&id) else { return };
        if self.live_id == Some(id) {
            self.live_id = None;
        }
        let emit = print_line(&c.name);
        // The ring holds at most 2 KiB, so one drain empties it; the bound is for safety.
        for _ in 0..4 {
            if !console_backend::drain(&c.page.page(), &mut c.log, &emit).1 {
                break;
            }
        }
        c.log.flush(&emit);
        self.ports.remove(&c.port);
        let _ = events::close(c.port);
        PENDING.take(c.port);
        if let Err(e) = foreign::unmap(c.page) {
            println!("dom0: d{}: unmapping its console ring failed: {e}", id.0);
        }
        self.w.unwatch(id, &c.dev.other_state_path());
    }

    fn poll(&mut self, fired: &[Port]) -> bool {
        let mut moved = false;
        for p in fired {
            if let Some(&id) = self.ports.get(p) {
                moved |= self.drain(id);
            }
        }
        for id in self.w.fired() {
            moved = true;
            self.handshake(id);
        }
        moved | self.forward_input()
    }

    fn poll_every_ns(&self) -> Option<u64> {
        self.live_id.map(|_| INPUT_POLL_NS)
    }
}
