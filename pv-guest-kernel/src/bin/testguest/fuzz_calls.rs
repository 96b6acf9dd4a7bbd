//! The fuzzer's hypercall generators: every hypercall number and sub-operation with
//! structure-aware arguments (the ABI's structs with generated fields, sometimes with a byte
//! flipped), nested and malformed multicalls, grant tables (entries, maps, unmaps, copies,
//! table growth) and event channels (every binding, sends, closes), with the oracles that
//! know the right answer.
//!
//! Calls a guest kernel may legitimately use to hurt itself are generated only in their
//! harmless forms (no shutdown with a valid reason, no `VCPUOP_down` of our vCPU, no reset of
//! our own event channels, no watchdog) or with their effect put back afterwards.

use super::fuzz::{restore, Fuzzer, PRE_BYTES};
use super::fuzz_mem::{put_bytes, Use, AREA_VA, ARG_END, ARG_VA, NO_L1_VA, PLAY_VA, RO_VA};
use alloc::format;
use alloc::vec::Vec;
use hypercall_abi::callback::{callback_type, callbackf, op as cbop, CallbackRegister, CallbackUnregister};
use hypercall_abi::domctl::XenDomctl;
use hypercall_abi::event_channel::{
    evtchnstat, op as evop, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindPirq,
    EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose, EvtchnReset, EvtchnSend, EvtchnStatus, EvtchnUnmask,
};
use hypercall_abi::grant_table::{
    gntcopy, gntmap, gntst, gtf, op as gop, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabQuerySize,
    GnttabSetupTable, GnttabUnmapGrantRef,
};
use hypercall_abi::hypercall::nr;
use hypercall_abi::memory::{op as memop, XenMemoryMap, XenMemoryReservation};
use hypercall_abi::sched::{op as sop, SchedPoll, SchedRemoteShutdown, SchedShutdown};
use hypercall_abi::vcpu::{op as vop, VcpuSetPeriodicTimer, VcpuSetSingleshotTimer};
use hypercall_abi::xen::{
    consoleio, segbase, virq, vmasst, MulticallEntry, TrapInfo, FLAT_KERNEL_SS, FLAT_RING3_DS32,
};
use hypercall_abi::{DomId, GrantRef, Mfn, Port};
use pv_guest_kernel::gnttab::GNTTAB_VA;
use pv_guest_kernel::traps;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Where a generated call will be made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Ctx {
    /// On its own, its arguments intact when the result is checked.
    Direct,
    /// As an entry of a multicall (`iret` and nested multicalls allowed: they must be
    /// refused) or from a snippet: what the scratch pages hold afterwards may have been
    /// written by another call, so nothing that needs a follow-up (frames given to us).
    Unchecked,
}

/// The status the fuzzer puts in grant operations: no hypervisor writes it, so only the
/// operations it processed read OKAY afterwards.
const NOT_DONE: i16 = 1;

/// Grant references the fuzzer writes (the reserved ones and the runtime's stay alone).
const FIRST_REF: u32 = 16;
const LAST_REF: u32 = 512;

/// What the fuzzer keeps between operations: its ports and grant handles.
#[derive(Default)]
pub(super) struct Handles {
    pub ports: Vec<Port>,
    /// Successful grant maps: handle, host address, device address.
    pub maps: Vec<(u32, u64, u64)>,
}

impl Fuzzer {
    /// Copies `v` into the scratch pages, flipping a byte now and then.
    fn arg<T: IntoBytes + Immutable>(&mut self, v: &T) -> u64 {
        let at = self.mem.put(v);
        let n = core::mem::size_of::<T>() as u64;
        if n > 0 && self.rng.chance(1, 16) {
            let off = self.rng.below(n);
            let b = self.rng.next() as u8;
            put_bytes(at + off, &[b]);
        }
        at
    }

    /// A struct argument: usually a generated one, sometimes a bad pointer instead.
    fn arg_or_bad<T: IntoBytes + Immutable>(&mut self, v: &T, out: bool) -> u64 {
        let n = core::mem::size_of::<T>() as u64;
        match self.rng.below(12) {
            // Never our own memory: what a struct holds (a port, a frame, a domain) decides
            // what the call does.
            0 => {
                let _ = out;
                self.ptr_out(n)
            }
            1 => {
                // Straddling the end of the scratch pages.
                let at = ARG_END - self.rng.range(1, n.max(1));
                put_bytes(at, v.as_bytes());
                at
            }
            _ => self.arg(v),
        }
    }

    /// The struct of a call that destroys what it names (a port closed, a domain's ports
    /// reset): exactly `v`, or a pointer the hypervisor cannot read. Never a flipped byte or
    /// readable memory of unknown contents (stale scratch, the M2P table): either can name
    /// one of the runtime's ports (seed 20240601 closed our timer port through a stale
    /// struct, and its next block never woke).
    fn destructive_arg<T: IntoBytes + Immutable>(&mut self, v: &T) -> u64 {
        let n = core::mem::size_of::<T>() as u64;
        match self.rng.below(12) {
            0 => self.unreadable_ptr(),
            1 => {
                // Straddling the end of the scratch pages: the read faults.
                let at = ARG_END - self.rng.range(1, n.saturating_sub(1).max(1));
                put_bytes(at, v.as_bytes());
                at
            }
            _ => self.mem.put(v),
        }
    }

    /// An address the hypervisor cannot read from: unmapped, non-canonical, or its own.
    fn unreadable_ptr(&mut self) -> u64 {
        match self.rng.below(4) {
            0 => {
                let unmapped = NO_L1_VA + self.rng.below(1 << 20);
                self.rng.pick(&[0, 8, 0x1000, unmapped])
            }
            1 => self.rng.pick(&[1 << 63, 1 << 47, 0x8000_0000_0000 - 2, u64::MAX - 2]),
            _ => self.rng.pick(&[0xffff_82d0_8020_0000, 0xffff_8300_0000_0000]) + self.rng.below(1 << 20),
        }
    }

    /// Our ports the runtime depends on (timer, xenstore, console): never closed.
    fn precious_port(&self, p: Port) -> bool {
        pv_guest_kernel::time::timer_port() == Some(p) || self.precious_ports.contains(&p.0)
    }

    /// A port number: one of ours (fuzzer-made or the runtime's), a reserved one, anything.
    fn port(&mut self) -> Port {
        match self.rng.below(10) {
            0..=4 if !self.handles.ports.is_empty() => {
                self.handles.ports[self.rng.below(self.handles.ports.len() as u64) as usize]
            }
            5 => Port(self.rng.pick(&self.precious_ports)),
            6 => Port(0),
            7 => Port(self.rng.range(1, 64) as u32),
            8 => Port(self.rng.pick(&[4095, 4096, 1 << 20, u32::MAX])),
            _ => Port(self.rng.next() as u32),
        }
    }

    /// A port we may close: not one the runtime needs.
    fn closable_port(&mut self) -> Option<Port> {
        let p = self.port();
        (!self.precious_port(p)).then_some(p)
    }

    /// One `event_channel_op` call.
    fn gen_evtchn(&mut self) -> (&'static str, u64, [u64; 5]) {
        let cmd = match self.rng.below(40) {
            0..=5 => evop::ALLOC_UNBOUND,
            6..=10 => evop::BIND_INTERDOMAIN,
            11..=13 => evop::BIND_VIRQ,
            14 => evop::BIND_PIRQ,
            15..=16 => evop::BIND_IPI,
            17..=21 => evop::CLOSE,
            22..=26 => evop::SEND,
            27..=29 => evop::STATUS,
            30..=31 => evop::UNMASK,
            32..=33 => evop::BIND_VCPU,
            34 => evop::RESET,
            35..=36 => self.rng.range(11, 14) as u32,
            _ => self.rng.next() as u32,
        };
        let arg = match cmd {
            evop::ALLOC_UNBOUND => {
                let dom = if self.rng.chance(7, 8) { DomId::SELF } else { self.domid() };
                let v = EvtchnAllocUnbound { dom, remote_dom: self.domid(), port: Port(0) };
                self.arg_or_bad(&v, true)
            }
            evop::BIND_INTERDOMAIN => {
                let v = EvtchnBindInterdomain {
                    remote_dom: self.domid(),
                    _pad: 0,
                    remote_port: self.port(),
                    local_port: Port(0),
                };
                self.arg_or_bad(&v, true)
            }
            evop::BIND_VIRQ => {
                let virq =
                    if self.rng.chance(3, 4) { self.rng.below(26) as u32 } else { self.rng.next() as u32 };
                let vcpu = if self.rng.chance(3, 4) { 0 } else { self.rng.edgy() as u32 };
                self.arg_or_bad(&EvtchnBindVirq { virq, vcpu, port: Port(0) }, true)
            }
            evop::BIND_PIRQ => {
                let v = EvtchnBindPirq {
                    pirq: self.rng.edgy() as u32,
                    flags: self.rng.below(4) as u32,
                    port: Port(0),
                };
                self.arg_or_bad(&v, true)
            }
            evop::BIND_IPI => {
                let vcpu = if self.rng.chance(3, 4) { 0 } else { self.rng.edgy() as u32 };
                self.arg_or_bad(&EvtchnBindIpi { vcpu, port: Port(0) }, true)
            }
            evop::CLOSE => match self.closable_port() {
                Some(port) => self.destructive_arg(&EvtchnClose { port }),
                None => self.unreadable_ptr(),
            },
            evop::SEND => {
                let port = self.port();
                self.arg_or_bad(&EvtchnSend { port }, false)
            }
            evop::STATUS => {
                let dom = if self.rng.chance(3, 4) { DomId::SELF } else { self.domid() };
                let v = EvtchnStatus { dom, port: self.port(), ..Default::default() };
                self.arg_or_bad(&v, true)
            }
            evop::UNMASK => {
                let port = self.port();
                self.arg_or_bad(&EvtchnUnmask { port }, false)
            }
            evop::BIND_VCPU => {
                let port = self.port();
                let vcpu = if self.rng.chance(1, 2) { 0 } else { self.rng.edgy() as u32 };
                self.arg_or_bad(&EvtchnBindVcpu { port, vcpu }, false)
            }
            evop::RESET => {
                // Resetting our own channels would close the runtime's: only other domains.
                let dom = match self.domid() {
                    d if d == DomId::SELF || d == self.me => DomId::DOM0,
                    d => d,
                };
                self.destructive_arg(&EvtchnReset { dom })
            }
            _ => self.ptr_out(16),
        };
        ("event_channel_op", nr::EVENT_CHANNEL_OP, [u64::from(cmd), arg, 0, 0, 0])
    }

    /// After an `event_channel_op`: remember new ports, and the oracles.
    fn after_evtchn(&mut self, a: [u64; 5], r: i64, intact: bool) {
        let cmd = a[0] as u32;
        let at = a[1];
        if !intact {
            // Remember what may be a new port (closing a wrong one later is harmless: ports
            // the runtime needs are never closed).
            if r == 0
                && (ARG_VA..ARG_END).contains(&at)
                && matches!(cmd, evop::ALLOC_UNBOUND | evop::BIND_VIRQ | evop::BIND_IPI)
            {
                let p: [u32; 3] = self.mem.get(at);
                let port = if cmd == evop::ALLOC_UNBOUND { p[1] } else { p[2] };
                self.handles.ports.push(Port(port));
            }
            return;
        }
        if !(ARG_VA..ARG_END).contains(&at) {
            if r == 0 && !matches!(cmd, evop::SEND | evop::UNMASK | evop::CLOSE | evop::BIND_VCPU) {
                self.fail(format!(
                    "event_channel_op({cmd}) with argument {at:#x} outside our scratch succeeded"
                ));
            }
            return;
        }
        if r != 0 {
            return;
        }
        match cmd {
            evop::ALLOC_UNBOUND => {
                let v: EvtchnAllocUnbound = self.mem.get(at);
                // Which domain was asked for: the request as made (the hypervisor's output, or
                // an event handler run since, may have written over the struct).
                let dom = self.request::<EvtchnAllocUnbound>().map_or(v.dom, |q| q.dom);
                if !self.is_me(dom) {
                    self.fail(format!("EVTCHNOP_alloc_unbound in domain {} succeeded for a domU", dom.0));
                }
                self.handles.ports.push(v.port);
            }
            evop::BIND_INTERDOMAIN => {
                let v: EvtchnBindInterdomain = self.mem.get(at);
                if Some(v.remote_dom) == self.peer {
                    self.fail(format!(
                        "bound port {} of the neighbour d{}, which never offered us a port",
                        v.remote_port.0, v.remote_dom.0
                    ));
                }
                self.handles.ports.push(v.local_port);
            }
            evop::BIND_VIRQ => {
                let v: EvtchnBindVirq = self.mem.get(at);
                self.handles.ports.push(v.port);
            }
            evop::BIND_IPI => {
                let v: EvtchnBindIpi = self.mem.get(at);
                self.handles.ports.push(v.port);
            }
            evop::BIND_PIRQ => self.fail("EVTCHNOP_bind_pirq succeeded for a domU (it has no pirqs)".into()),
            evop::STATUS => {
                let v: EvtchnStatus = self.mem.get(at);
                let dom = self.request::<EvtchnStatus>().map_or(v.dom, |q| q.dom);
                if !self.is_me(dom) {
                    self.fail(format!("EVTCHNOP_status of domain {} succeeded for a domU", dom.0));
                }
            }
            evop::RESET => {
                let v: EvtchnReset = self.mem.get(at);
                self.fail(format!("EVTCHNOP_reset of domain {} succeeded for a domU", v.dom.0));
            }
            evop::CLOSE => {
                let v: EvtchnClose = self.mem.get(at);
                self.handles.ports.retain(|&p| p != v.port);
            }
            _ => {}
        }
    }

    /// Closes every port the fuzzer made: those it knows of, and every low port but the
    /// runtime's (ports made inside multicalls and snippets are not all known).
    pub fn ports_reset(&mut self) {
        let known = core::mem::take(&mut self.handles.ports);
        for p in known.into_iter().chain((1..128).map(Port)) {
            if !self.precious_port(p) {
                let mut c = EvtchnClose { port: p };
                let _ = pv_guest_kernel::hypercall::event_channel_op(evop::CLOSE, &mut c);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Grant tables

    /// Writes grant entry `r` of our table (flags last, as a guest must).
    fn write_grant(&mut self, r: u32, flags: u16, domid: DomId, frame: u32) {
        let e = GNTTAB_VA + u64::from(r) * 8;
        // SAFETY: entries FIRST_REF..LAST_REF of our grant table, which the runtime mapped
        // writable at GNTTAB_VA; nothing else of ours uses them.
        unsafe {
            ((e + 2) as *mut u16).write_volatile(domid.0);
            ((e + 4) as *mut u32).write_volatile(frame);
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            (e as *mut u16).write_volatile(flags);
        }
    }

    /// A grant reference: ours, reserved, anything.
    fn gref(&mut self) -> GrantRef {
        GrantRef(match self.rng.below(10) {
            0..=6 => self.rng.range(u64::from(FIRST_REF), u64::from(FIRST_REF) + 16) as u32,
            7 => self.rng.below(8) as u32,
            8 => self.rng.pick(&[2047, 2048, 1 << 16, u32::MAX]),
            _ => self.rng.next() as u32,
        })
    }

    /// A granting domain for a map or copy: mostly ourselves.
    fn granter(&mut self) -> DomId {
        if self.rng.chance(2, 3) {
            self.rng.pick(&[self.me, DomId::SELF])
        } else {
            self.domid()
        }
    }

    /// True if `d` is us.
    /// A direct call's struct argument as it was before the call (see `Fuzzer::pre`), if all
    /// of it lay in the scratch pages.
    fn request<T: FromBytes>(&self) -> Option<T> {
        T::read_from_prefix(&self.pre).ok().map(|(v, _)| v)
    }

    fn is_me(&self, d: DomId) -> bool {
        d == DomId::SELF || d == self.me
    }

    pub fn grant_op(&mut self) {
        self.mem.scratch_reset();
        match self.rng.below(10) {
            0..=2 => {
                // Our own entries: grants of pool frames (or others) to ourselves and others.
                for _ in 0..self.rng.range(1, 4) {
                    let r = self.rng.range(u64::from(FIRST_REF), u64::from(FIRST_REF) + 16) as u32;
                    let flags = match self.rng.below(8) {
                        0 => 0,
                        1 => self.rng.next() as u16,
                        2 => gtf::PERMIT_ACCESS | gtf::READONLY,
                        _ => gtf::PERMIT_ACCESS,
                    };
                    let domid = if self.rng.chance(2, 3) { self.me } else { self.domid() };
                    let frame = self.frame(Use::Destructive).0 as u32;
                    self.write_grant(r, flags, domid, frame);
                }
            }
            3..=5 => self.grant_map(),
            6..=7 => self.grant_unmap(),
            8 => self.grant_copy(),
            _ => {
                let (what, n, a) = self.gen_grant_misc();
                self.pre = self.mem.get_bytes(a[1], PRE_BYTES);
                let r = self.call(what, n, a);
                self.after_call(n, a, r, true);
            }
        }
    }

    fn grant_map(&mut self) {
        let n = match self.rng.below(20) {
            0 => 0,
            1 => self.rng.range(129, 140),
            _ => self.rng.range(1, 4),
        };
        let mut ops = Vec::new();
        for _ in 0..n {
            let flags = match self.rng.below(10) {
                0..=4 => gntmap::HOST_MAP,
                5 => gntmap::HOST_MAP | gntmap::READONLY,
                6 => gntmap::DEVICE_MAP | self.rng.pick(&[0, gntmap::READONLY, gntmap::HOST_MAP]),
                7 => gntmap::HOST_MAP | gntmap::APPLICATION_MAP,
                8 => gntmap::HOST_MAP | gntmap::CONTAINS_PTE,
                _ => self.rng.next() as u32,
            };
            let host_addr = if flags & gntmap::CONTAINS_PTE != 0 {
                // The machine address of a PTE: in the playground L1 or a pool page.
                if self.rng.chance(1, 2) {
                    self.mem.play_l1 + self.rng.below(512) * 8
                } else {
                    let i = self.pool_page();
                    self.mem.pool[i].mfn.addr() + self.rng.below(512) * 8
                }
            } else {
                match self.rng.below(6) {
                    0 => 0,
                    1 => self.va(),
                    _ => PLAY_VA + self.rng.below(512) * 4096,
                }
            };
            ops.push(GnttabMapGrantRef {
                host_addr,
                flags,
                ref_: self.gref(),
                dom: self.granter(),
                status: NOT_DONE,
                ..Default::default()
            });
        }
        let at = if ops.is_empty() { self.ptr_out(32) } else { self.put_slice(&ops) };
        let count = if self.rng.chance(1, 20) { self.rng.edgy() } else { ops.len() as u64 };
        let r = self.call("gnttab map", nr::GRANT_TABLE_OP, [u64::from(gop::MAP_GRANT_REF), at, count, 0, 0]);
        if r != 0 || ops.is_empty() {
            return;
        }
        for k in 0..ops.len() as u64 {
            let m: GnttabMapGrantRef =
                self.mem.get(at + k * core::mem::size_of::<GnttabMapGrantRef>() as u64);
            if m.status != gntst::OKAY {
                continue;
            }
            self.stats.grant_maps += 1;
            // The granter asked for is the request's (`ops`), whatever has since been written
            // over the struct.
            let asked = ops[k as usize].dom;
            if !self.is_me(asked) {
                self.fail(format!(
                    "mapped grant {} of d{}, which never granted us anything",
                    ops[k as usize].ref_.0, asked.0
                ));
            }
            if self.handles.maps.len() < 64 {
                self.handles.maps.push((m.handle, m.host_addr, m.dev_bus_addr));
            }
        }
    }

    fn grant_unmap(&mut self) {
        let n = self.rng.range(1, 4);
        let mut ops = Vec::new();
        let mut used = Vec::new();
        for _ in 0..n {
            let (handle, host, dev) = if !self.handles.maps.is_empty() && self.rng.chance(3, 4) {
                let k = self.rng.below(self.handles.maps.len() as u64) as usize;
                used.push(k);
                self.handles.maps[k]
            } else {
                (self.rng.edgy() as u32, PLAY_VA + self.rng.below(512) * 4096, self.rng.edgy())
            };
            let host = if self.rng.chance(1, 10) { self.va() } else { host };
            let dev = if self.rng.chance(1, 10) { self.rng.edgy() } else { dev };
            ops.push(GnttabUnmapGrantRef {
                host_addr: host,
                dev_bus_addr: dev,
                handle,
                status: NOT_DONE,
                ..Default::default()
            });
        }
        let at = self.put_slice(&ops);
        let r = self.call("gnttab unmap", nr::GRANT_TABLE_OP, [u64::from(gop::UNMAP_GRANT_REF), at, n, 0, 0]);
        if r == 0 {
            // Forget handles that were unmapped (status OKAY).
            let sz = core::mem::size_of::<GnttabUnmapGrantRef>() as u64;
            let gone: Vec<u32> = (0..n)
                .filter(|&k| self.mem.get::<GnttabUnmapGrantRef>(at + k * sz).status == gntst::OKAY)
                .map(|k| ops[k as usize].handle)
                .collect();
            self.handles.maps.retain(|m| !gone.contains(&m.0));
        }
        let _ = used;
    }

    fn copy_ptr(&mut self, dest: bool) -> (GnttabCopyPtr, bool) {
        let offset = if self.rng.chance(3, 4) { self.rng.below(4096) as u16 } else { self.rng.next() as u16 };
        if self.rng.chance(1, 2) {
            (GnttabCopyPtr::gref(self.gref(), self.granter(), offset), true)
        } else {
            let u = if dest { Use::Destructive } else { Use::ReadOnly };
            let dom = if self.rng.chance(4, 5) { DomId::SELF } else { self.domid() };
            (GnttabCopyPtr::gmfn(self.frame(u).0, dom, offset), false)
        }
    }

    fn grant_copy(&mut self) {
        let n = self.rng.range(1, 4);
        let mut ops = Vec::new();
        for _ in 0..n {
            let (source, sg) = self.copy_ptr(false);
            let (dest, dg) = self.copy_ptr(true);
            let mut flags = 0;
            if sg {
                flags |= gntcopy::SOURCE_GREF;
            }
            if dg {
                flags |= gntcopy::DEST_GREF;
            }
            if self.rng.chance(1, 10) {
                flags = self.rng.next() as u16;
            }
            let len =
                if self.rng.chance(3, 4) { self.rng.below(4097) as u16 } else { self.rng.next() as u16 };
            ops.push(GnttabCopy { source, dest, len, flags, status: NOT_DONE, ..Default::default() });
        }
        let at = self.put_slice(&ops);
        let r = self.call("gnttab copy", nr::GRANT_TABLE_OP, [u64::from(gop::COPY), at, n, 0, 0]);
        if r != 0 {
            return;
        }
        let sz = core::mem::size_of::<GnttabCopy>() as u64;
        for k in 0..n {
            let c: GnttabCopy = self.mem.get(at + k * sz);
            if c.status != gntst::OKAY || c.len == 0 {
                continue;
            }
            for (side, p, is_ref) in [
                ("source", c.source, c.flags & gntcopy::SOURCE_GREF != 0),
                ("dest", c.dest, c.flags & gntcopy::DEST_GREF != 0),
            ] {
                // A frame the hypervisor shares with us (shared_info, grant-table frames) is
                // ours to copy from and to, as in Xen (`get_page` succeeds: we own it).
                let foreign = if is_ref {
                    !self.is_me(p.domid)
                } else {
                    let m = Mfn(p.as_gmfn());
                    !self.mem.is_ours(m) && !self.mem.is_shared_with_us(m)
                };
                if foreign {
                    self.fail(format!(
                        "grant copy succeeded with a {side} that is not ours (domid {}, {} {:#x})",
                        p.domid.0,
                        if is_ref { "ref" } else { "frame" },
                        p.u
                    ));
                }
            }
        }
    }

    /// The other grant-table commands.
    fn gen_grant_misc(&mut self) -> (&'static str, u64, [u64; 5]) {
        let cmd = match self.rng.below(12) {
            0..=2 => gop::SETUP_TABLE,
            3..=4 => gop::QUERY_SIZE,
            5 => gop::SET_VERSION,
            6 => gop::GET_VERSION,
            7 => self.rng.pick(&[
                gop::DUMP_TABLE,
                gop::TRANSFER,
                gop::UNMAP_AND_REPLACE,
                gop::GET_STATUS_FRAMES,
                gop::SWAP_GRANT_REF,
                gop::CACHE_FLUSH,
            ]),
            8 => {
                self.rng.pick(&[gop::MAP_GRANT_REF, gop::UNMAP_GRANT_REF, gop::COPY])
                    | (self.rng.below(16) as u32) << 12
            }
            _ => self.rng.next() as u32,
        };
        let count = if self.rng.chance(4, 5) { 1 } else { self.rng.edgy() };
        let arg = match cmd {
            gop::SETUP_TABLE => {
                let nr_frames =
                    if self.rng.chance(3, 4) { self.rng.below(8) as u32 } else { self.rng.edgy() as u32 };
                let frame_list = self.ptr_out(u64::from(nr_frames.min(64)) * 8);
                let dom = if self.rng.chance(4, 5) { DomId::SELF } else { self.domid() };
                self.arg_or_bad(&GnttabSetupTable { dom, nr_frames, frame_list, ..Default::default() }, true)
            }
            gop::QUERY_SIZE => {
                let dom = if self.rng.chance(3, 4) { DomId::SELF } else { self.domid() };
                self.arg_or_bad(&GnttabQuerySize { dom, ..Default::default() }, true)
            }
            gop::SET_VERSION | gop::GET_VERSION => {
                let v = [self.rng.pick(&[1u32, 2, 0, 3, u32::MAX]), self.domid().0 as u32];
                self.arg_or_bad(&v, true)
            }
            _ => self.ptr_out(64),
        };
        ("grant_table_op", nr::GRANT_TABLE_OP, [u64::from(cmd), arg, count, 0, 0])
    }

    /// Unmaps everything mapped and clears our entries.
    pub fn grant_reset(&mut self) {
        for (handle, host, dev) in core::mem::take(&mut self.handles.maps) {
            let mut u =
                GnttabUnmapGrantRef { host_addr: host, dev_bus_addr: dev, handle, ..Default::default() };
            let _ = pv_guest_kernel::hypercall::hypercall5(
                nr::GRANT_TABLE_OP,
                u64::from(gop::UNMAP_GRANT_REF),
                pv_guest_kernel::hypercall::ptr_mut(&mut u),
                1,
                0,
                0,
            );
        }
        for r in FIRST_REF..LAST_REF {
            let e = GNTTAB_VA + u64::from(r) * 8;
            // SAFETY: our grant table's entries FIRST_REF..LAST_REF (see write_grant); an
            // entry the hypervisor still marks in use is left alone.
            unsafe {
                let f = (e as *const u16).read_volatile();
                if f & (gtf::READING | gtf::WRITING) == 0 {
                    (e as *mut u16).write_volatile(0);
                }
            }
        }
        self.mem.grant_frames = self.mem.query_frames_again();
    }

    // ----------------------------------------------------------------------------------------
    // Every hypercall

    /// A trap table: our stubs, odd vectors and flags, bad addresses.
    fn trap_table(&mut self) -> u64 {
        let n = self.rng.range(0, 24) as usize;
        let mut t = Vec::new();
        for _ in 0..n {
            let vector = if self.rng.chance(3, 4) { self.rng.below(20) as u8 } else { self.rng.next() as u8 };
            let address = match self.rng.below(6) {
                0..=2 => traps::entry(vector),
                3 => self.rng.pick(&[1 << 47, 1 << 63, 0xffff_82d0_8020_0000]),
                4 => 0,
                _ => self.rng.edgy(),
            };
            let address = if address == 0 && self.rng.chance(3, 4) { traps::entry(3) } else { address };
            t.push(TrapInfo {
                vector,
                flags: self.rng.next() as u8,
                cs: {
                    let any = self.rng.next() as u16;
                    self.rng.pick(&[0xe030, 0xe033, 0xe008, any])
                },
                _pad: 0,
                address,
            });
        }
        t.push(TrapInfo::default());
        match self.rng.below(8) {
            0 => self.ptr_in(4096),
            1 => 0,
            _ => self.put_slice(&t),
        }
    }

    /// A generated call, its name and arguments; sets the restore bits it needs.
    pub fn gen_call(&mut self, ctx: Ctx) -> (&'static str, u64, [u64; 5]) {
        let pick = self.rng.below(100);
        let n = match pick {
            0..=2 => nr::SET_TRAP_TABLE,
            3..=8 => nr::MMU_UPDATE,
            9..=10 => nr::SET_GDT,
            11 => nr::STACK_SWITCH,
            12 => nr::SET_CALLBACKS,
            13 => nr::FPU_TASKSWITCH,
            14 => nr::UPDATE_DESCRIPTOR,
            15..=20 => nr::MEMORY_OP,
            21..=22 => nr::MULTICALL,
            23..=28 => nr::UPDATE_VA_MAPPING,
            29..=30 => nr::SET_TIMER_OP,
            31..=34 => nr::XEN_VERSION,
            35 => nr::CONSOLE_IO,
            36..=40 => nr::GRANT_TABLE_OP,
            41 => nr::VM_ASSIST,
            42 => nr::UPDATE_VA_MAPPING_OTHERDOMAIN,
            43..=44 => nr::VCPU_OP,
            45 => nr::SET_SEGMENT_BASE,
            46..=51 => nr::MMUEXT_OP,
            52..=55 => nr::SCHED_OP,
            56..=57 => nr::CALLBACK_OP,
            58..=67 => nr::EVENT_CHANNEL_OP,
            68..=69 => nr::PHYSDEV_OP,
            70 => nr::HVM_OP,
            71..=72 => nr::DOMCTL,
            73 => nr::ARCH_DEBUG,
            74 if ctx == Ctx::Unchecked => nr::IRET,
            74..=89 => {
                // Everything else, numbers without a hypercall included.
                self.rng.pick(&[
                    nr::SCHED_OP_COMPAT,
                    nr::PLATFORM_OP,
                    nr::SET_DEBUGREG,
                    nr::GET_DEBUGREG,
                    11,
                    nr::EVENT_CHANNEL_OP_COMPAT,
                    nr::PHYSDEV_OP_COMPAT,
                    nr::XSM_OP,
                    nr::NMI_OP,
                    nr::XENOPROF_OP,
                    nr::SYSCTL,
                    nr::KEXEC_OP,
                    nr::TMEM_OP,
                    nr::ARGO_OP,
                    nr::XENPMU_OP,
                    nr::DM_OP,
                    nr::HYPFS_OP,
                    43,
                    47,
                    nr::ARCH_0,
                    54,
                    56,
                    64,
                    127,
                ])
            }
            _ => match self.rng.below(4) {
                0 => self.rng.range(128, 1024),
                1 => self.rng.edgy() | 1 << 32,
                _ => self.rng.below(128),
            },
        };
        let n = if n == nr::IRET && ctx == Ctx::Direct { nr::XEN_VERSION } else { n };
        let e = self.rng.edgy();
        if matches!(n, nr::SET_DEBUGREG | nr::PHYSDEV_OP | nr::PHYSDEV_OP_COMPAT | nr::VM_ASSIST) {
            self.restore |= restore::CPU;
        }
        let a: [u64; 5] = match n {
            nr::SET_TRAP_TABLE => {
                self.restore |= restore::TRAPS;
                [self.trap_table(), e, 0, 0, 0]
            }
            nr::MMU_UPDATE => {
                let (at, count) = self.mmu_update_args();
                let pdone = if self.rng.chance(1, 4) { 0 } else { self.ptr_out(4) };
                let fd =
                    if self.rng.chance(4, 5) { u64::from(DomId::SELF.0) } else { u64::from(self.domid().0) };
                [at, count, pdone, fd, 0]
            }
            nr::SET_GDT => {
                self.restore |= restore::GDT;
                self.set_gdt_args()
            }
            nr::STACK_SWITCH => {
                self.restore |= restore::STACK;
                let ss = self.rng.pick(&[u64::from(FLAT_KERNEL_SS), u64::from(FLAT_RING3_DS32), 0, 3, e]);
                [ss, self.rng.edgy(), 0, 0, 0]
            }
            nr::SET_CALLBACKS => {
                self.restore |= restore::CALLBACKS;
                [self.code_addr(), self.code_addr(), self.code_addr(), 0, 0]
            }
            nr::FPU_TASKSWITCH => {
                self.restore |= restore::FPU;
                [self.rng.pick(&[0, 1, e]), 0, 0, 0, 0]
            }
            nr::UPDATE_DESCRIPTOR => {
                let i = self.pool_page();
                let ma = match self.rng.below(4) {
                    0 => self.frame(Use::Destructive).addr() + self.rng.below(512) * 8,
                    1 => self.rng.edgy(),
                    _ => self.mem.pool[i].mfn.addr() + self.rng.below(512) * 8,
                };
                [ma, self.descriptor(), 0, 0, 0]
            }
            nr::MEMORY_OP => self.memory_op_args(ctx),
            nr::MULTICALL => {
                self.restore |= restore::TRAPS;
                let (at, count) = self.multicall_args(1);
                [at, count, 0, 0, 0]
            }
            nr::UPDATE_VA_MAPPING => {
                let v = self.va();
                let p = self.pte();
                [v, p, self.rng.pick(&[2, 1, 0, 6, e]), 0, 0]
            }
            nr::UPDATE_VA_MAPPING_OTHERDOMAIN => {
                let v = self.va();
                let p = self.pte();
                let d = u64::from(self.domid().0);
                [v, p, self.rng.pick(&[2, 1, 0]), d, 0]
            }
            nr::SET_TIMER_OP => {
                let now = pv_guest_kernel::time::now_ns();
                let t = match self.rng.below(6) {
                    0 => 0,
                    1 => now.saturating_sub(self.rng.below(1 << 30)),
                    2 => now + self.rng.below(2_000_000),
                    3 => now + (1 << 40),
                    _ => e,
                };
                [t, 0, 0, 0, 0]
            }
            nr::XEN_VERSION => {
                let cmd = if self.rng.chance(3, 4) { self.rng.below(12) } else { e };
                [cmd, self.ptr_out(1024), 0, 0, 0]
            }
            nr::CONSOLE_IO => {
                self.console_dirty = true;
                let cmd = self.rng.pick(&[consoleio::WRITE, consoleio::WRITE, consoleio::READ, e]);
                let count =
                    if self.rng.chance(9, 10) { self.rng.below(24) } else { self.rng.range(200, 600) };
                // Within our share of the console (see Fuzzer::console_budget); beyond it the
                // write is an empty one.
                let count = if cmd == consoleio::WRITE { self.console_budget(count) } else { count };
                let text = b"fuzz console write   \n";
                let at = self.mem.scratch(text.len() as u64);
                put_bytes(at, text);
                let buf = if self.rng.chance(4, 5) { at } else { self.ptr_out(count) };
                [cmd, count, buf, 0, 0]
            }
            nr::GRANT_TABLE_OP => {
                let (_, n2, a) = self.gen_grant_misc();
                debug_assert_eq!(n2, nr::GRANT_TABLE_OP);
                a
            }
            nr::VM_ASSIST => {
                let cmd = self.rng.pick(&[u64::from(vmasst::CMD_ENABLE), u64::from(vmasst::CMD_DISABLE), e]);
                let ty = if self.rng.chance(3, 4) { self.rng.below(40) } else { e };
                [cmd, ty, 0, 0, 0]
            }
            nr::IRET => [0; 5],
            nr::VCPU_OP => self.vcpu_op_args(),
            nr::SET_SEGMENT_BASE => {
                self.restore |= restore::SEGBASE;
                let which = self.rng.pick(&[
                    u64::from(segbase::FS),
                    u64::from(segbase::GS_USER),
                    u64::from(segbase::GS_KERNEL),
                    u64::from(segbase::GS_USER_SEL),
                    e,
                ]);
                let base = match self.rng.below(4) {
                    0 => self.selector(),
                    1 => self.ptr_in(8),
                    _ => self.rng.edgy(),
                };
                [which, base, 0, 0, 0]
            }
            nr::MMUEXT_OP => {
                let k = self.rng.range(0, 3);
                let ops: Vec<_> = (0..k).map(|_| self.mmuext_req()).collect();
                if ops.iter().any(|o| o.cmd == hypercall_abi::xen::mmuext::NEW_BASEPTR) {
                    self.restore |= restore::BASEPTR;
                }
                let at = if ops.is_empty() { self.ptr_out(24) } else { self.put_slice(&ops) };
                let pdone = if self.rng.chance(1, 4) { 0 } else { self.ptr_out(4) };
                [at, k, pdone, u64::from(DomId::SELF.0), 0]
            }
            nr::SCHED_OP => self.sched_op_args(ctx),
            nr::CALLBACK_OP => {
                self.restore |= restore::CALLBACKS;
                if self.rng.chance(2, 3) {
                    let type_ =
                        if self.rng.chance(3, 4) { self.rng.below(9) as u16 } else { self.rng.next() as u16 };
                    let any = self.rng.next() as u16;
                    let flags = self.rng.pick(&[0, callbackf::MASK_EVENTS, any]);
                    let v = CallbackRegister { type_, flags, _pad: 0, address: self.code_addr() };
                    [u64::from(cbop::REGISTER), self.arg_or_bad(&v, false), 0, 0, 0]
                } else {
                    let any = self.rng.next() as u16;
                    let type_ = self.rng.pick(&[callback_type::NMI, callback_type::EVENT, 9, any]);
                    let v = CallbackUnregister { type_, _unused: 0 };
                    [self.rng.pick(&[u64::from(cbop::UNREGISTER), e]), self.arg_or_bad(&v, false), 0, 0, 0]
                }
            }
            nr::EVENT_CHANNEL_OP => self.gen_evtchn().2,
            nr::PHYSDEV_OP => {
                let cmd = if self.rng.chance(3, 4) { self.rng.below(34) } else { e };
                let v = [self.rng.below(4) as u32, self.rng.edgy() as u32, self.rng.edgy() as u32, 0];
                [cmd, self.arg_or_bad(&v, true), 0, 0, 0]
            }
            nr::HVM_OP => {
                let v = [u64::from(self.domid().0), self.rng.below(40), self.rng.edgy()];
                [self.rng.below(32), self.arg_or_bad(&v, true), 0, 0, 0]
            }
            nr::DOMCTL => {
                let cmd =
                    if self.rng.chance(3, 4) { self.rng.below(80) as u32 } else { self.rng.next() as u32 };
                let mut d = XenDomctl::new(cmd, self.domid());
                if self.rng.chance(1, 8) {
                    d.interface_version = self.rng.next() as u32;
                }
                [self.arg_or_bad(&d, true), 0, 0, 0, 0]
            }
            nr::ARCH_DEBUG => {
                let cmd = if self.rng.chance(1, 20) { 2 } else { self.rng.pick(&[0, 1, 3, e]) };
                [cmd, u64::from(self.domid().0), 0, 0, 0]
            }
            // The old sched_op takes a shutdown reason in a register: never shutdown or block.
            nr::SCHED_OP_COMPAT if matches!(e as u32, sop::SHUTDOWN | sop::BLOCK) => [0, e, 0, 0, 0],
            _ => [e, self.ptr_out(64), self.rng.edgy(), self.ptr_out(64), self.rng.edgy()],
        };
        (nr::name(n), n, a)
    }

    /// An address for a callback or trap handler: our stubs mostly, anything sometimes.
    fn code_addr(&mut self) -> u64 {
        match self.rng.below(6) {
            0..=2 => {
                let (ev, fs) = traps::callback_entries();
                self.rng.pick(&[ev, fs, traps::entry(14)])
            }
            3 => 0,
            4 => self.rng.pick(&[1 << 47, 1 << 63, 0xffff_82d0_8020_0000]),
            _ => self.rng.edgy(),
        }
    }

    /// A segment descriptor: flat code/data of every kind, system descriptors, gates, junk.
    pub fn descriptor(&mut self) -> u64 {
        match self.rng.below(8) {
            0 => 0x00af_fa00_0000_ffff,
            1 => 0x00cf_f200_0000_ffff,
            2 => 0x00cf_fa00_0000_ffff,
            3 => 0x008f_9a00_0000_ffff,
            4 => (self.rng.next() & !(0xf << 40)) | (self.rng.pick(&[0x2u64, 0x9, 0xb, 0xc, 0xe, 0xf]) << 40),
            5 => 0,
            _ => self.rng.next(),
        }
    }

    /// `set_gdt(frames, entries)`: pool frames filled with descriptors and made read-only.
    fn set_gdt_args(&mut self) -> [u64; 5] {
        let nframes = self.rng.range(0, 3);
        let mut list = Vec::new();
        for _ in 0..nframes {
            if self.rng.chance(3, 4) {
                if let Some(i) = self.rw_pool_page() {
                    for k in 0..self.rng.range(1, 16) as usize {
                        let d = self.descriptor();
                        self.mem.write_entry(i, k, d);
                    }
                    let p = self.mem.pool[i];
                    let ro = pv_guest_kernel::mm::pt::make(p.mfn, pv_guest_kernel::mm::pt::PAGE_KERNEL_RO);
                    self.call("gdt frame: read-only", nr::UPDATE_VA_MAPPING, [p.va, ro, 2, 0, 0]);
                    list.push(p.mfn.0);
                    continue;
                }
            }
            list.push(self.frame(Use::Destructive).0);
        }
        let at = if list.is_empty() { self.ptr_out(8) } else { self.put_slice(&list) };
        let entries = match self.rng.below(6) {
            0 => 0,
            1 => self.rng.pick(&[7168, 7169, 8192, u64::MAX]),
            _ => self.rng.range(1, list.len().max(1) as u64 * 512),
        };
        [at, entries, 0, 0, 0]
    }

    fn memory_op_args(&mut self, ctx: Ctx) -> [u64; 5] {
        let e = self.rng.edgy();
        let cmd = match self.rng.below(20) {
            // Frames given to us must be given back, which needs the result intact.
            0..=1 | 4..=5 if ctx == Ctx::Unchecked => memop::DECREASE_RESERVATION,
            0..=1 => memop::INCREASE_RESERVATION,
            2..=3 => memop::DECREASE_RESERVATION,
            4..=5 => memop::POPULATE_PHYSMAP,
            6 => memop::MAXIMUM_RAM_PAGE,
            7..=8 => {
                self.rng.pick(&[memop::CURRENT_RESERVATION, memop::MAXIMUM_RESERVATION, memop::MAXIMUM_GPFN])
            }
            9 => memop::MEMORY_MAP,
            10 => memop::MACHINE_MEMORY_MAP,
            11 => memop::MACHPHYS_MAPPING,
            12 => memop::MACHPHYS_MFN_LIST,
            13 => self.rng.pick(&[
                memop::EXCHANGE,
                memop::ADD_TO_PHYSMAP,
                memop::REMOVE_FROM_PHYSMAP,
                memop::SET_MEMORY_MAP,
            ]),
            14 => self.rng.pick(&[memop::ADD_TO_PHYSMAP_BATCH, memop::CLAIM_PAGES, memop::ACQUIRE_RESOURCE]),
            _ => self.rng.below(64) as u32,
        };
        // The continuation field of the command: usually 0.
        let start = if self.rng.chance(1, 10) { self.rng.edgy() << 6 } else { 0 };
        let arg = match cmd {
            memop::INCREASE_RESERVATION | memop::DECREASE_RESERVATION | memop::POPULATE_PHYSMAP => {
                let n = if self.rng.chance(4, 5) { self.rng.range(0, 4) } else { self.rng.edgy() };
                // Decreases only name frames that are not ours: giving our memory away is the
                // balloon operation's job.
                let list: Vec<u64> = (0..n.min(8))
                    .map(|_| match cmd {
                        memop::DECREASE_RESERVATION => {
                            let m = self.frame(Use::ReadOnly);
                            if self.mem.is_ours(m) {
                                self.mem.max_mfn + 1
                            } else {
                                m.0
                            }
                        }
                        _ => match self.rng.below(2) {
                            0 => self.rng.below(1 << 14),
                            _ => self.rng.edgy(),
                        },
                    })
                    .collect();
                let extent_start = if self.rng.chance(4, 5) && !list.is_empty() {
                    self.put_slice(&list)
                } else if cmd == memop::DECREASE_RESERVATION {
                    self.rng.pick(&[0, 1 << 63, 0xffff_82d0_8020_0000, RO_VA])
                } else {
                    self.ptr_out(8 * n.min(512))
                };
                let v = XenMemoryReservation {
                    extent_start,
                    nr_extents: n,
                    extent_order: if self.rng.chance(4, 5) { 0 } else { self.rng.edgy() as u32 },
                    mem_flags: if self.rng.chance(4, 5) { 0 } else { self.rng.next() as u32 },
                    domid: if self.rng.chance(3, 4) { DomId::SELF } else { self.domid() },
                    ..Default::default()
                };
                self.arg_or_bad(&v, true)
            }
            memop::CURRENT_RESERVATION | memop::MAXIMUM_RESERVATION | memop::MAXIMUM_GPFN => {
                let d = self.domid();
                self.arg_or_bad(&d, false)
            }
            memop::MEMORY_MAP | memop::MACHINE_MEMORY_MAP => {
                let nr_entries = self.rng.pick(&[0, 1, 2, 128, u32::MAX]);
                let buffer = self.ptr_out(20 * u64::from(nr_entries.min(128)));
                self.arg_or_bad(&XenMemoryMap { nr_entries, _pad: 0, buffer }, true)
            }
            memop::MACHPHYS_MFN_LIST => {
                let max = self.rng.pick(&[0u64, 1, 4, 512]);
                let v = [max, self.ptr_out(8 * max), 0];
                self.arg_or_bad(&v, true)
            }
            _ => self.ptr_out(72),
        };
        [u64::from(cmd) | start, arg, e, 0, 0]
    }

    fn vcpu_op_args(&mut self) -> [u64; 5] {
        let e = self.rng.edgy();
        let cmd = match self.rng.below(16) {
            // Taking our only vCPU down would stop us for good.
            c if u64::from(vop::DOWN) == c => vop::IS_UP,
            c if c < 15 => c as u32,
            _ => e as u32,
        };
        let vcpu = if self.rng.chance(3, 4) { 0 } else { self.rng.edgy() };
        // The hypervisor reads the vCPU number as 32 bits.
        let ours = vcpu as u32 == 0;
        let cmd = if ours && matches!(cmd, vop::DOWN | vop::UP | vop::INITIALISE | vop::SEND_NMI) {
            vop::IS_UP
        } else {
            cmd
        };
        let now = pv_guest_kernel::time::now_ns();
        let arg = match cmd {
            vop::SET_SINGLESHOT_TIMER => {
                let t = match self.rng.below(4) {
                    0 => now.saturating_sub(1000),
                    1 => now + self.rng.below(1_000_000),
                    _ => self.rng.edgy(),
                };
                let v =
                    VcpuSetSingleshotTimer { timeout_abs_ns: t, flags: self.rng.below(4) as u32, _pad: 0 };
                self.arg_or_bad(&v, false)
            }
            vop::SET_PERIODIC_TIMER => {
                let v = VcpuSetPeriodicTimer { period_ns: self.rng.pick(&[0, 1, 1_000_000, e]) };
                self.arg_or_bad(&v, false)
            }
            vop::REGISTER_VCPU_INFO => {
                // Only frames that are not ours: moving our vcpu_info would leave the runtime
                // reading the old one. The frames the hypervisor shares with us (shared_info,
                // the grant table) are ours too, as in Xen, whatever the M2P says of them.
                let m = self.frame(Use::ReadOnly);
                let m = if self.mem.is_ours(m) || self.mem.is_shared_with_us(m) {
                    Mfn(self.mem.max_mfn + 7)
                } else {
                    m
                };
                let v = [m.0, self.rng.edgy() & 0xffff_ffff];
                self.arg_or_bad(&v, false)
            }
            vop::REGISTER_RUNSTATE_MEMORY_AREA | vop::REGISTER_VCPU_TIME_MEMORY_AREA => {
                // Somewhere the hypervisor may write to at any time: scratch or nowhere.
                let a = self.ptr_out(64);
                let a = if (RO_VA..RO_VA + 4096).contains(&a) { 0 } else { a };
                let p = self.arg_or_bad(&a, false);
                // The hypervisor updates the area whenever the vCPU runs: in the scratch
                // pages it would overwrite later calls' results, which the oracles judge (a
                // grant copy's status and domids overwritten by a vcpu_time_info read as a
                // copy of a foreign frame that succeeded). Whatever address the struct names
                // (generated, or found where a bad pointer points), a scratch one becomes the
                // same offset in the area pages (their end and guard page alike).
                let area: u64 = self.mem.get(p);
                if (ARG_VA..ARG_END).contains(&area) {
                    put_bytes(p, &(AREA_VA + (area - ARG_VA)).to_le_bytes());
                }
                p
            }
            _ => self.ptr_out(64),
        };
        [u64::from(cmd), vcpu, arg, 0, 0]
    }

    /// Oracle of our own restraint: the runtime's timer port is still bound to VIRQ_TIMER on
    /// vCPU 0 (every wait for an event depends on it; a campaign that lost it would stall at
    /// its next block, far from the call that did it).
    pub fn check_timer_port(&mut self, since: u64) {
        let Some(p) = pv_guest_kernel::time::timer_port() else { return };
        let mut st = EvtchnStatus { dom: DomId::SELF, port: p, ..Default::default() };
        let r = pv_guest_kernel::hypercall::event_channel_op(evop::STATUS, &mut st);
        if r != 0 || st.status != evtchnstat::VIRQ || st.vcpu != 0 || st.u[..4] != virq::TIMER.to_le_bytes() {
            self.fail(format!(
                "the runtime's timer port {} is no longer VIRQ_TIMER (status {r}: {} vcpu {} {:?}) after operations {since}..={}",
                p.0, st.status, st.vcpu, st.u, self.seq
            ));
        }
    }

    fn sched_op_args(&mut self, ctx: Ctx) -> [u64; 5] {
        let e = self.rng.edgy();
        match self.rng.below(20) {
            0..=6 => [u64::from(sop::YIELD), e, 0, 0, 0],
            // In a multicall another entry may move the wake-up timer (one per vCPU) away
            // before the block: only a direct call blocks.
            7..=8 if ctx == Ctx::Unchecked => [u64::from(sop::YIELD), e, 0, 0, 0],
            7..=8 => {
                // Block with a wake-up armed; the block returns once the timer fires. Upcalls
                // stay masked until the block (which unmasks them), so a timer that fires
                // before it stays pending instead of being taken, and the block returns.
                core::mem::forget(pv_guest_kernel::events::mask_upcalls());
                let now = pv_guest_kernel::time::now_ns();
                let _ = pv_guest_kernel::hypercall::set_timer_op(now + self.rng.range(10_000, 500_000));
                [u64::from(sop::BLOCK), e, 0, 0, 0]
            }
            9..=10 => {
                // A shutdown that must be refused: a reason Xen does not know, or no struct
                // at all (never a scratch struct another call may have left a 0 in, and in a
                // multicall never a struct another entry may overwrite).
                let reason = self.rng.range(6, 1 << 20) as u32;
                let p = if ctx == Ctx::Direct && self.rng.chance(1, 2) {
                    self.mem.put(&SchedShutdown { reason })
                } else {
                    self.rng.pick(&[0, 1 << 63, 0xffff_82d0_8020_0000, 8])
                };
                [u64::from(sop::SHUTDOWN), p, 0, 0, 0]
            }
            11 => {
                let reason = self.rng.below(8) as u32;
                [u64::from(sop::SHUTDOWN_CODE), self.arg_or_bad(&SchedShutdown { reason }, false), 0, 0, 0]
            }
            12..=13 => {
                let ports: Vec<u32> = (0..self.rng.below(4)).map(|_| self.port().0).collect();
                let at = if ports.is_empty() { self.ptr_in(4) } else { self.put_slice(&ports) };
                let now = pv_guest_kernel::time::now_ns();
                let v =
                    SchedPoll { ports: at, nr_ports: ports.len() as u32, _pad: 0, timeout: now + 200_000 };
                [u64::from(sop::POLL), self.arg(&v), 0, 0, 0]
            }
            14..=15 => {
                let domain_id = self.domid();
                let reason = self.rng.below(6) as u32;
                [
                    u64::from(sop::REMOTE_SHUTDOWN),
                    self.arg_or_bad(&SchedRemoteShutdown { domain_id, reason, ..Default::default() }, false),
                    0,
                    0,
                    0,
                ]
            }
            16 => {
                // A watchdog may only be destroyed (id != 0, timeout 0): one that fires
                // would shut us down.
                let v = [self.rng.range(1, 4) as u32, 0u32];
                [u64::from(sop::WATCHDOG), self.arg(&v), 0, 0, 0]
            }
            _ => {
                // The hypervisor reads the command as 32 bits: no shutdown or block by the back
                // door (the struct behind the pointer may hold a 0, a valid reason).
                let cmd = self.rng.pick(&[u64::from(sop::PIN_OVERRIDE), 8, 100, e]);
                let cmd = if matches!(cmd as u32, sop::SHUTDOWN | sop::BLOCK) { 100 } else { cmd };
                [cmd, self.ptr_out(16), 0, 0, 0]
            }
        }
    }

    /// A random hypercall, made directly.
    pub fn random_hypercall(&mut self) {
        self.mem.scratch_reset();
        let (what, n, a) = self.gen_call(Ctx::Direct);
        self.pre = self.mem.get_bytes(a[1], PRE_BYTES);
        let r = self.call(what, n, a);
        self.after_call(n, a, r, true);
    }

    /// `mmu_update` request array and count for a generated call.
    fn mmu_update_args(&mut self) -> (u64, u64) {
        let n = self.rng.range(0, 4) as usize;
        let mut reqs = Vec::new();
        for _ in 0..n {
            // Entries of pool pages and the playground only (no M2P updates here).
            let ptr = if self.rng.chance(1, 2) {
                let i = self.pool_page();
                self.mem.pool[i].mfn.addr() + self.rng.below(512) * 8
            } else {
                self.mem.play_l1 + self.rng.below(512) * 8
            };
            let ty = self.rng.pick(&[0u64, 0, 0, 2, 3]);
            reqs.push(hypercall_abi::xen::MmuUpdate { ptr: ptr | ty, val: self.pte() });
        }
        let at = if reqs.is_empty() { self.ptr_out(16) } else { self.put_slice(&reqs) };
        (at, n as u64)
    }

    /// An entry array for a multicall of `depth` (entries generated for a multicall, a nested
    /// multicall in some) and its count, or a bad array.
    fn multicall_args(&mut self, depth: u32) -> (u64, u64) {
        let n = match self.rng.below(20) {
            0 => 0,
            1 => self.rng.range(60, 70),
            _ => self.rng.range(1, 8),
        };
        let sz = core::mem::size_of::<MulticallEntry>() as u64;
        let (array, no_wrap) = self.mem.reserve(n * sz);
        let mut entries = Vec::new();
        for _ in 0..n {
            let (_, op, args) = if depth < 2 && self.rng.chance(1, 16) {
                let (at, count) = self.multicall_args(depth + 1);
                ("multicall", nr::MULTICALL, [at, count, 0, 0, 0])
            } else {
                self.gen_call(Ctx::Unchecked)
            };
            let mut e = MulticallEntry { op, result: self.rng.edgy(), args: [0; 6] };
            e.args[..5].copy_from_slice(&args);
            e.args[5] = self.rng.edgy();
            entries.push(e);
        }
        self.mem.release(no_wrap);
        match self.rng.below(12) {
            0 => (self.rng.pick(&[0, 1 << 63, 0xffff_82d0_8020_0000, RO_VA]), n.max(1)),
            1 if !entries.is_empty() => {
                // Straddling the end of the scratch pages: the last entries fault.
                let bytes = entries.as_bytes();
                let at = ARG_END - (bytes.len() as u64 / 2).max(8);
                put_bytes(at, bytes);
                (at, n)
            }
            _ => {
                let at = if entries.is_empty() {
                    RO_VA
                } else {
                    put_bytes(array, entries.as_bytes());
                    array
                };
                let count = if self.rng.chance(1, 20) { n + self.rng.range(1, 4) } else { n };
                (at, count)
            }
        }
    }

    /// A multicall of generated entries (sometimes nested, sometimes malformed).
    pub fn multicall(&mut self) {
        self.mem.scratch_reset();
        self.stats.multicalls += 1;
        self.restore |= restore::TRAPS;
        let (at, count) = self.multicall_args(1);
        if self.logging() && (ARG_VA..ARG_END).contains(&at) {
            let sz = core::mem::size_of::<MulticallEntry>() as u64;
            for k in 0..count.min(70) {
                if at + (k + 1) * sz <= ARG_END {
                    let e: MulticallEntry = self.mem.get(at + k * sz);
                    pv_guest_kernel::println!(
                        "fuzz:    entry {k}: {}({:x?}) result {:#x}",
                        nr::name(e.op),
                        &e.args[..5],
                        e.result
                    );
                }
            }
        }
        let r = self.call("multicall", nr::MULTICALL, [at, count, 0, 0, 0]);
        if r != 0 || !(ARG_VA..ARG_END).contains(&at) {
            return;
        }
        let sz = core::mem::size_of::<MulticallEntry>() as u64;
        for k in 0..count.min(70) {
            let ea = at + k * sz;
            if ea + sz > ARG_END {
                break;
            }
            let e: MulticallEntry = self.mem.get(ea);
            let args = [e.args[0], e.args[1], e.args[2], e.args[3], e.args[4]];
            if e.op == nr::IRET && e.result as i64 >= 0 {
                self.fail(format!(
                    "multicall entry {k}: iret succeeded inside a multicall ({:#x})",
                    e.result
                ));
            }
            if e.op == nr::MULTICALL && e.result as i64 >= 0 && e.args[1] > 0 {
                self.fail(format!("multicall entry {k}: a nested multicall ran ({:#x})", e.result));
            }
            self.after_call(e.op, args, e.result as i64, false);
        }
    }

    /// Oracles on a call's result and the bookkeeping it needs. Unless `intact`, what the
    /// scratch pages hold may be another call's output: only bookkeeping that is safe when
    /// wrong (ports and handles to close later) is done, and only oracles that need no
    /// argument.
    pub fn after_call(&mut self, n: u64, a: [u64; 5], r: i64, intact: bool) {
        match n {
            nr::EVENT_CHANNEL_OP => self.after_evtchn(a, r, intact),
            nr::SCHED_OP if r == 0 && a[0] as u32 == sop::REMOTE_SHUTDOWN => {
                self.fail("SCHEDOP_remote_shutdown succeeded for a domU".into());
            }
            nr::DOMCTL if r >= 0 => self.fail(format!("domctl succeeded for a domU ({r})")),
            _ if !intact => {}
            nr::VCPU_OP if r == 0 && a[0] as u32 == vop::REGISTER_VCPU_INFO => {
                // Only frames that are not ours are offered (see vcpu_op_args): a success moved
                // our vcpu_info where the runtime does not look, and the campaign would stall
                // at the next wait for an event. Say so now, with the frame.
                // (The struct is the third argument; nothing writes it.)
                let mfn = self.mem.get_bytes(a[2], 8);
                let mfn = mfn.try_into().map_or(0, u64::from_le_bytes);
                self.fail(format!("VCPUOP_register_vcpu_info on frame {mfn:#x}, not ours, succeeded"));
            }
            nr::GRANT_TABLE_OP if r == 0 && a[0] as u32 == gop::SETUP_TABLE => {
                // The request as it was made (the frame list the hypervisor writes may have
                // pointed into it); the status, unless the frame list covered it.
                let st = GnttabSetupTable::read_from_prefix(&self.pre).map(|(v, _)| v).ok();
                if let Some(st) = st.filter(|_| (ARG_VA..ARG_END).contains(&a[1])) {
                    let list_end = st.frame_list.wrapping_add(u64::from(st.nr_frames) * 8);
                    let status_at = a[1] + core::mem::offset_of!(GnttabSetupTable, status) as u64;
                    let covered = st.frame_list <= status_at + 1 && status_at < list_end;
                    let status: i16 = self.mem.get(status_at);
                    if !covered && status == gntst::OKAY && !self.is_me(st.dom) {
                        self.fail(format!("GNTTABOP_setup_table of d{} succeeded for a domU", st.dom.0));
                    }
                }
                self.mem.grant_frames = self.mem.query_frames_again();
            }
            nr::MEMORY_OP if r > 0 => {
                let cmd = (a[0] & 63) as u32;
                if !(ARG_VA..ARG_END).contains(&a[1]) {
                    return;
                }
                if matches!(
                    cmd,
                    memop::INCREASE_RESERVATION | memop::DECREASE_RESERVATION | memop::POPULATE_PHYSMAP
                ) {
                    // The request as made: the extents the hypervisor writes back may overlap
                    // the struct itself.
                    let v: XenMemoryReservation =
                        self.request::<XenMemoryReservation>().unwrap_or_else(|| self.mem.get(a[1]));
                    // Xen's answer counts the extents done from the start of the list, the
                    // `start_extent` encoded above the command's bits included (and is
                    // `start_extent` itself when there was nothing to do from there).
                    let start = a[0] >> 6;
                    let done = (r as u64).min(v.nr_extents).saturating_sub(start);
                    let first = v.extent_start.wrapping_add(start.wrapping_mul(8));
                    if done == 0 {
                        return;
                    }
                    if !self.is_me(v.domid) {
                        self.fail(format!("memory_op({cmd}) on d{} succeeded for a domU", v.domid.0));
                    } else if cmd == memop::DECREASE_RESERVATION {
                        let list: Vec<u64> =
                            (0..done.min(8)).map(|k| self.mem.get::<u64>(first + k * 8)).collect();
                        self.fail(format!(
                            "decrease_reservation of frames that are not ours succeeded ({r}, from extent {start}): {list:#x?}"
                        ));
                    } else {
                        // We were given frames: give them straight back, whole extents.
                        self.give_back(first, done.min(512), v.extent_order);
                    }
                }
            }
            nr::HVM_OP if r >= 0 && (a[0] as u32) < 32 && (ARG_VA..ARG_END).contains(&a[1]) => {
                self.fail(format!("hvm_op({}) succeeded for a domU", a[0]));
            }
            nr::UPDATE_VA_MAPPING | nr::UPDATE_VA_MAPPING_OTHERDOMAIN if r == 0 => {
                self.check_mapped("update_va_mapping", 1, a[1]);
            }
            _ => {}
        }
    }

    /// Returns extents of `2^order` frames the hypervisor just gave us (the list of their
    /// first frames is in the scratch pages). Every frame of an extent is ours: one kept would
    /// be ours with an M2P entry that does not say so, and the oracles would take it for a
    /// frame of someone else's (seed 110: 'the hypervisor let a domU map frame ..., which is
    /// not its own'), or hand it to a decrease of "someone else's" frames whose extent then
    /// frees pool pages behind our back (seeds 101, 106, 116: 'cannot put back the M2P
    /// entry of pool frame').
    pub(super) fn give_back(&mut self, list: u64, n: u64, order: u32) {
        if !(ARG_VA..ARG_END).contains(&list) || n == 0 {
            return;
        }
        let mfns: Vec<u64> = (0..n).map(|k| self.mem.get::<u64>(list + k * 8)).collect();
        let at = self.put_slice(&mfns);
        let v = XenMemoryReservation {
            extent_start: at,
            nr_extents: n,
            extent_order: order,
            domid: DomId::SELF,
            ..Default::default()
        };
        let p = self.mem.put(&v);
        let r = self.call("give back", nr::MEMORY_OP, [u64::from(memop::DECREASE_RESERVATION), p, 0, 0, 0]);
        if r != n as i64 {
            self.fail(format!("could not give back {n} frames the hypervisor gave us: {r}"));
        }
    }
}
