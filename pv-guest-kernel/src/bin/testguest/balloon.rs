//! `balloon`: the balloon driver moves memory to and from the hypervisor, checked against the
//! hypervisor's own accounting (the debug hypercall's free-frame and per-domain counts, and
//! `XENMEM_current_reservation`). The target comes from `balloon=<pages>` (default: 1024
//! pages below the boot size); the guest balloons down to it, then back up to its boot size,
//! and prints one `BALLOON` line per direction with the figures the host test asserts.
//!
//! `balloon-xs`: the same driver following the toolstack's `memory/target` through its
//! xenstore watch, as a domU under `xl mem-set` does (dom0's `mem-set=` option writes the
//! targets). Each time a target moves the balloon it prints a `BALLOON <down|up>` line with
//! the hypervisor's figures before and after; after `moves=<n>` moves (default 2) it stops.

use super::report;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::hypercall::debug;
use hypercall_abi::memory::op as memop;
use hypercall_abi::xen::INVALID_P2M_ENTRY;
use hypercall_abi::{DomId, Mfn, Pfn};
use pv_guest_kernel::balloon::TargetEvent;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{balloon, cmdline, hypercall, println, time, xenbus};

/// How far the machine-wide free-frame count may drift while we balloon: dom0 keeps running
/// (xenstored, the console backend, grant mappings) and the hypervisor's heap grows and shrinks
/// with it, so only our own frame count and reservation are exact; the free count must follow
/// them to within this many frames.
const OTHERS_DRIFT: i64 = 64;

/// Whether the free-frame count moved by `got` where our ballooning alone moves it by `want`.
fn free_moved_as(got: i64, want: i64) -> bool {
    (got - want).abs() <= OTHERS_DRIFT
}

/// (free frames, our frames, our current reservation).
fn figures() -> (i64, i64, i64) {
    let mut me = DomId::SELF;
    (
        hypercall::debug_op(debug::FREE_FRAMES, 0),
        hypercall::debug_op(debug::DOMAIN_FRAMES, u64::from(DomId::SELF.0)),
        hypercall::memory_op(memop::CURRENT_RESERVATION, &mut me),
    )
}

pub fn run(si: &StartInfo) {
    let mut fails: Vec<String> = Vec::new();
    let cmd = si.cmdline();
    let nr = si.nr_pages;
    let target = match cmdline::get_u64(cmd, "balloon", nr.saturating_sub(1024), 0, nr) {
        Ok(t) => t,
        Err(e) => {
            println!("TEST balloon FAIL bad balloon= ({e:?})");
            return;
        }
    };
    let (free0, dom0, cur0) = figures();
    println!("balloon: {nr} pages; hypervisor: {free0} frames free, {dom0} ours, reservation {cur0}; target {target}");
    check!(fails, free0 > 0 && dom0 > 0, "debug hypercall: free {free0}, ours {dom0}");
    check!(fails, cur0 == dom0, "current_reservation {cur0} != the hypervisor's count {dom0}");

    // Down.
    let down = balloon::set_target(target);
    let (free1, dom1, cur1) = figures();
    let st = down.unwrap_or_else(|s| {
        fails.push(alloc::format!("balloon down: {:?} after {:?}", s.err, s.status));
        s.status
    });
    let n = st.ballooned as i64;
    println!(
        "BALLOON down pages={n} free_delta={} domain_delta={} free={free0}->{free1} domain={dom0}->{dom1} reservation={cur1}",
        free1 - free0,
        dom1 - dom0
    );
    // The driver clamps the target to what the domain can reach (it keeps a floor).
    check!(fails, st.target <= nr && st.target >= target.min(nr), "clamped target {}", st.target);
    check!(fails, st.current == st.target, "balloon at {} pages, target {}", st.current, st.target);
    check!(fails, n as u64 == nr - st.target, "{n} pages ballooned, want {}", nr - st.target);
    check!(fails, free_moved_as(free1 - free0, n), "free frames rose by {}, want {n}", free1 - free0);
    check!(fails, dom0 - dom1 == n, "our frames fell by {}, want {n}", dom0 - dom1);
    check!(fails, cur1 == dom1, "current_reservation {cur1} != {dom1}");
    // Every ballooned pfn: P2M invalid, direct map unmapped.
    let out: Vec<Pfn> = (0..nr).map(Pfn).filter(|&p| balloon::is_ballooned(p)).collect();
    check!(fails, out.len() as i64 == n, "{} pfns marked ballooned, want {n}", out.len());
    let mut bad = 0;
    for &p in &out {
        let p2m = mm::pfn_to_mfn(p).map_or(0, |m| m.0);
        let mapped =
            mm::pfn_to_virt(p).and_then(|va| mm::lookup(va).ok().flatten()).is_some_and(pt::is_present);
        if p2m != INVALID_P2M_ENTRY || mapped {
            bad += 1;
        }
    }
    check!(fails, bad == 0, "{bad} ballooned pfns still have a P2M entry or a mapping");

    // Up again.
    let up = balloon::set_target(nr);
    let (free2, dom2, cur2) = figures();
    let st = up.unwrap_or_else(|s| {
        fails.push(alloc::format!("balloon up: {:?} after {:?}", s.err, s.status));
        s.status
    });
    println!(
        "BALLOON up pages={n} free_delta={} domain_delta={} free={free1}->{free2} domain={dom1}->{dom2} reservation={cur2}",
        free2 - free1,
        dom2 - dom1
    );
    check!(
        fails,
        st.current == nr && st.ballooned == 0,
        "balloon at {} pages after going back up",
        st.current
    );
    check!(fails, free_moved_as(free2 - free0, 0), "free frames {free2}, were {free0} before ballooning");
    check!(fails, dom2 == dom0, "our frames {dom2}, were {dom0} before ballooning");
    check!(fails, cur2 == dom2, "current_reservation {cur2} != {dom2}");
    // The pages came back usable: P2M and M2P agree, mapped writable, and they hold data.
    let mut bad = 0;
    for (i, &p) in out.iter().enumerate() {
        let mfn = mm::pfn_to_mfn(p).unwrap_or(Mfn(INVALID_P2M_ENTRY));
        let back = mm::mfn_to_pfn(mfn);
        let Some(va) = mm::pfn_to_virt(p) else {
            bad += 1;
            continue;
        };
        let mapped = matches!(mm::lookup(va), Ok(Some(e)) if pt::is_present(e) && pt::mfn(e) == mfn);
        if back != Some(p) || !mapped {
            bad += 1;
            continue;
        }
        let pattern = 0xb10c_0000_0000_0000 | i as u64;
        // SAFETY: the page is free in the allocator (no Rust object lives in it) and mapped
        // writable at `va`; the allocator zeroes pages it hands out.
        let seen = unsafe {
            (va as *mut u64).write_volatile(pattern);
            (va as *const u64).read_volatile()
        };
        if seen != pattern {
            bad += 1;
        }
    }
    check!(fails, bad == 0, "{bad} reclaimed pages are not usable");
    report("balloon", &fails, format_args!("down {n} pages and back up; free {free0}->{free1}->{free2}"));
}

/// How long `balloon-xs` waits for the toolstack's next target.
const FOLLOW_TIMEOUT_NS: u64 = 30_000_000_000;

pub fn follow(si: &StartInfo) {
    let mut fails: Vec<String> = Vec::new();
    let cmd = si.cmdline();
    let want = match cmdline::get_u64(cmd, "moves", 2, 1, 64) {
        Ok(n) => n,
        Err(e) => return println!("TEST balloon-xs FAIL bad moves= ({e:?})"),
    };
    let mut xb = match xenbus::connect(si) {
        Ok(xb) => xb,
        Err(e) => return println!("TEST balloon-xs FAIL no xenstore ({e})"),
    };
    if let Err(e) = balloon::watch_target(&mut xb) {
        return println!("TEST balloon-xs FAIL cannot watch memory/target ({e})");
    }
    let (free_boot, dom_boot, _) = figures();
    println!("balloon-xs: {} pages; hypervisor: {free_boot} frames free, {dom_boot} ours", si.nr_pages);
    let deadline = time::now_ns().saturating_add(FOLLOW_TIMEOUT_NS);
    let mut moves = 0;
    let mut events = 0;
    while moves < want {
        if time::now_ns() >= deadline {
            fails.push(alloc::format!("only {moves} of {want} moves within the time limit"));
            break;
        }
        let ev = match xb.wait_watch_event() {
            Ok(ev) => ev,
            // The transport gives up after a few quiet seconds; the deadline decides.
            Err(hypercall_abi::Errno::ETIMEDOUT) => continue,
            Err(e) => {
                fails.push(alloc::format!("waiting for a watch event: {e}"));
                break;
            }
        };
        let (free0, dom0, _) = figures();
        let Some(te) = balloon::handle_event(&mut xb, &ev) else { continue };
        events += 1;
        let TargetEvent::Followed { kib, before, outcome } = te else {
            fails.push(alloc::format!("memory/target unusable: {te:?}"));
            continue;
        };
        let st = outcome.unwrap_or_else(|s| {
            fails.push(alloc::format!("target {kib} KiB: {:?} after {:?}", s.err, s.status));
            s.status
        });
        if st.current == before {
            continue;
        }
        moves += 1;
        let (free1, dom1, cur1) = figures();
        let n = st.current as i64 - before as i64;
        let dir = if n < 0 { "down" } else { "up" };
        println!(
            "BALLOON {dir} pages={} free_delta={} domain_delta={} free={free0}->{free1} domain={dom0}->{dom1} reservation={cur1} target_kib={kib}",
            n.abs(),
            free1 - free0,
            dom1 - dom0
        );
        check!(
            fails,
            st.current == st.target,
            "target {kib} KiB: at {} pages, target {}",
            st.current,
            st.target
        );
        check!(fails, dom1 - dom0 == n, "target {kib} KiB: our frames moved by {}, want {n}", dom1 - dom0);
        check!(
            fails,
            free_moved_as(free0 - free1, n),
            "target {kib} KiB: free frames moved by {}, want {}",
            free1 - free0,
            -n
        );
        check!(fails, cur1 == dom1, "current_reservation {cur1} != {dom1}");
    }
    let _ = xb.unwatch(balloon::TARGET_NODE, balloon::WATCH_TOKEN);
    let (free_end, dom_end, _) = figures();
    report(
        "balloon-xs",
        &fails,
        format_args!(
            "{moves} moves from {events} events; free {free_boot}->{free_end}, ours {dom_boot}->{dom_end}"
        ),
    );
}
