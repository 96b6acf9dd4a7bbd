//! Hostile domUs against the hypervisor's per-domain limits (issue 9), driven by
//! `tests/tests/limits.rs`:
//!
//! * `console-flood` writes far more `console_io` output than a domU may, then waits for its
//!   allowance to refill and reports; the hypervisor must print only its allowance and say
//!   how many lines it refused.
//! * `hv-mem-hostile` makes the hypervisor keep as much state for it as the ABI allows: the
//!   largest grant table, a device mapping of its own grant for as long as the hypervisor
//!   accepts one, every event channel port. Each must stop with an error to this domain
//!   (its heap quota or the port limit), never take the hypervisor down.
//!
//! Results are `<scenario>: <key>=<value>` lines.

use hypercall_abi::event_channel::{op as evtop, EvtchnAllocUnbound, EvtchnStatus};
use hypercall_abi::grant_table::{gntmap, gntst, op as gntop, GnttabMapGrantRef};
use hypercall_abi::hypercall::nr;
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::{gnttab, hypercall, mm, println, time};

/// Lines `console-flood` writes.
const FLOOD_LINES: usize = 4000;

pub fn console_flood() {
    let mut line = [b'.'; 100];
    line[99] = b'\n';
    let t0 = time::now_ns();
    for i in 0..FLOOD_LINES {
        let head = alloc::format!("flood {i:05} ");
        line[..head.len()].copy_from_slice(head.as_bytes());
        // Straight to console_io: the flood is what the hypervisor must withstand.
        let r = hypercall::console_write(&line);
        if r != 0 {
            println!("TEST console-flood FAIL console_io returned {r} on line {i}");
            return;
        }
    }
    let elapsed = time::now_ns() - t0;
    // The allowance refills at 2 KiB/s: half a second buys the report.
    let _ = time::sleep(500_000_000);
    println!("console-flood: lines={FLOOD_LINES}");
    println!("console-flood: elapsed_ns={elapsed}");
    println!("TEST console-flood PASS");
}

/// `fpu-ts-console`: with its virtual CR0.TS set (`fpu_taskswitch(1)`), the guest makes the
/// hypervisor print for it, which saves the guest's FPU registers first: the save must not
/// fault on the guest's TS.
pub fn fpu_ts_console() {
    let r = hypercall::hypercall5(nr::FPU_TASKSWITCH, 1, 0, 0, 0, 0);
    // Straight to console_io (this kernel uses no FPU, so TS stays set meanwhile).
    let w = hypercall::console_write(b"fpu-ts-console: printed with TS set\n");
    let c = hypercall::hypercall5(nr::FPU_TASKSWITCH, 0, 0, 0, 0, 0);
    if r == 0 && w == 0 && c == 0 {
        println!("TEST fpu-ts-console PASS");
    } else {
        println!("TEST fpu-ts-console FAIL fpu_taskswitch {r}/{c}, console_io {w}");
    }
}

/// Our own domain id: the remote end of a port we offer ourselves.
pub fn own_domid() -> Option<DomId> {
    let mut a = EvtchnAllocUnbound { dom: DomId::SELF, remote_dom: DomId::SELF, port: Port(0) };
    if hypercall::event_channel_op(evtop::ALLOC_UNBOUND, &mut a) != 0 {
        return None;
    }
    let mut st = EvtchnStatus { dom: DomId::SELF, port: a.port, ..Default::default() };
    let r = hypercall::event_channel_op(evtop::STATUS, &mut st);
    let mut c = hypercall_abi::event_channel::EvtchnClose { port: a.port };
    hypercall::event_channel_op(evtop::CLOSE, &mut c);
    (r == 0).then(|| st.unbound_dom())
}

pub fn hv_mem_hostile() {
    let Some(me) = own_domid() else {
        println!("TEST hv-mem-hostile FAIL cannot learn our domain id");
        return;
    };
    if let Err(e) = gnttab::init(1) {
        println!("TEST hv-mem-hostile FAIL no grant table: {e}");
        return;
    }
    // The largest grant table (GNTTABOP_setup_table asks for frames; 32 is Xen's default max).
    let mut list = [0u64; 32];
    let frames = (1..=list.len()).rev().find(|&n| gnttab::setup_table(&mut list[..n]).is_ok()).unwrap_or(0);
    println!("hv-mem: grant_frames={frames}");
    // A page of ours granted to ourselves, mapped (device mappings: no page table needed)
    // until the hypervisor refuses.
    let (page, gref) =
        match mm::alloc_page().and_then(|p| gnttab::grant_access(me, p.mfn, true).map(|r| (p, r))) {
            Ok(x) => x,
            Err(e) => {
                println!("TEST hv-mem-hostile FAIL cannot grant a page to ourselves: {e}");
                return;
            }
        };
    let _ = page;
    const BATCH: usize = 128;
    let mut ops = [GnttabMapGrantRef::default(); BATCH];
    let mut mapped: u64 = 0;
    let mut refused = 0i16;
    'map: loop {
        for o in ops.iter_mut() {
            *o = GnttabMapGrantRef {
                flags: gntmap::DEVICE_MAP | gntmap::READONLY,
                ref_: gref,
                dom: me,
                ..Default::default()
            };
        }
        let r = hypercall::hypercall5(
            nr::GRANT_TABLE_OP,
            u64::from(gntop::MAP_GRANT_REF),
            ops.as_mut_ptr() as u64,
            BATCH as u64,
            0,
            0,
        );
        if r != 0 {
            println!("TEST hv-mem-hostile FAIL map_grant_ref returned {r}");
            return;
        }
        for o in &ops {
            if o.status != gntst::OKAY {
                refused = o.status;
                break 'map;
            }
            mapped += 1;
        }
        if mapped > 1 << 20 {
            break;
        }
    }
    println!("hv-mem: mappings={mapped}");
    println!("hv-mem: map_refused_status={refused}");
    // Every port.
    let mut ports = 0u64;
    let err = loop {
        let mut a = EvtchnAllocUnbound { dom: DomId::SELF, remote_dom: DomId::DOM0, port: Port(0) };
        let r = hypercall::event_channel_op(evtop::ALLOC_UNBOUND, &mut a);
        if r != 0 {
            break r;
        }
        ports += 1;
        if ports > 1 << 20 {
            break 0;
        }
    };
    println!("hv-mem: ports={ports}");
    println!("hv-mem: port_refused_errno={err}");
    // The hypervisor still answers us normally.
    let v = hypercall::xen_version(hypercall_abi::version::op::VERSION, 0);
    println!("hv-mem: xen_version={v:#x}");
    println!("TEST hv-mem-hostile PASS");
}
