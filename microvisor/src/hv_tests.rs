//! Host tests of hypercall semantics through the real dispatcher, on domains built by the real
//! builder in fake memory (see `testkit`).

use crate::hypercall::{dispatch, Hc};
use crate::mm::MachineMemory;
use crate::testkit::{console, run_as, two_domains, TestHv, SCRATCH_VA};
use crate::vcpu::{GuestFrame, RunState};
use hypercall_abi::event_channel::{
    evtchnstat, op, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnClose, EvtchnSend, EvtchnStatus,
};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{consoleio, IretContext, TrapInfo, FLAT_KERNEL_CS, FLAT_KERNEL_SS};
use hypercall_abi::{DomId, Errno, Port};
use zerocopy::{FromBytes, Immutable, IntoBytes};

fn put<T: IntoBytes + Immutable>(hv: &TestHv, v: &T) -> u64 {
    hv.guest().write_obj(SCRATCH_VA, v).unwrap();
    SCRATCH_VA
}

fn get<T: FromBytes + IntoBytes>(hv: &TestHv) -> T {
    hv.guest().read_obj(SCRATCH_VA).unwrap()
}

fn call(hv: &mut TestHv, n: u64, a: [u64; 5]) -> i64 {
    match dispatch(hv, n, a, None) {
        Hc::Ret(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

fn evtchn<T: IntoBytes + Immutable + FromBytes>(hv: &mut TestHv, cmd: u32, arg: &T) -> (i64, T) {
    let p = put(hv, arg);
    let r = call(hv, nr::EVENT_CHANNEL_OP, [u64::from(cmd), p, 0, 0, 0]);
    (r, get(hv))
}

fn status(hv: &mut TestHv, port: Port) -> EvtchnStatus {
    let (r, st) = evtchn(hv, op::STATUS, &EvtchnStatus { dom: DomId::SELF, port, ..Default::default() });
    assert_eq!(r, 0);
    st
}

#[test]
fn interdomain_channel_lifecycle_follows_xen() {
    let mut hv = two_domains();
    // domU offers a port to dom0.
    run_as(&mut hv, DomId(1));
    let (r, a) = evtchn(
        &mut hv,
        op::ALLOC_UNBOUND,
        &EvtchnAllocUnbound { dom: DomId::SELF, remote_dom: DomId(0), port: Port(0) },
    );
    assert_eq!(r, 0);
    let u_port = a.port;
    assert_eq!(status(&mut hv, u_port).status, evtchnstat::UNBOUND);
    // dom0 binds it.
    run_as(&mut hv, DomId(0));
    let (r, b) = evtchn(
        &mut hv,
        op::BIND_INTERDOMAIN,
        &EvtchnBindInterdomain { remote_dom: DomId(1), remote_port: u_port, ..Default::default() },
    );
    assert_eq!(r, 0);
    let d_port = b.local_port;
    let st = status(&mut hv, d_port);
    assert_eq!((st.status, st.interdomain()), (evtchnstat::INTERDOMAIN, (DomId(1), u_port)));
    // Binding it a second time fails: it is no longer unbound.
    let (r, _) = evtchn(
        &mut hv,
        op::BIND_INTERDOMAIN,
        &EvtchnBindInterdomain { remote_dom: DomId(1), remote_port: u_port, ..Default::default() },
    );
    assert_eq!(r, Errno::EINVAL.to_ret());
    // domU sends: dom0's port becomes pending.
    let bm0 = hv.domains[&DomId(0)].bitmaps();
    bm0.clear_pending(hv.mem(), d_port);
    run_as(&mut hv, DomId(1));
    let (r, _) = evtchn(&mut hv, op::SEND, &EvtchnSend { port: u_port });
    assert_eq!(r, 0);
    assert!(bm0.is_pending(hv.mem(), d_port));
    // dom0 closes: domU's end goes back to unbound (towards dom0); sends are dropped silently.
    run_as(&mut hv, DomId(0));
    assert_eq!(evtchn(&mut hv, op::CLOSE, &EvtchnClose { port: d_port }).0, 0);
    assert_eq!(evtchn(&mut hv, op::CLOSE, &EvtchnClose { port: d_port }).0, Errno::EINVAL.to_ret());
    assert_eq!(evtchn(&mut hv, op::SEND, &EvtchnSend { port: d_port }).0, Errno::EINVAL.to_ret());
    run_as(&mut hv, DomId(1));
    let st = status(&mut hv, u_port);
    assert_eq!((st.status, st.unbound_dom()), (evtchnstat::UNBOUND, DomId(0)));
    assert_eq!(evtchn(&mut hv, op::SEND, &EvtchnSend { port: u_port }).0, 0);
}

#[test]
fn event_channel_hostile_arguments() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    // A domU may not allocate in another domain.
    let (r, _) = evtchn(
        &mut hv,
        op::ALLOC_UNBOUND,
        &EvtchnAllocUnbound { dom: DomId(0), remote_dom: DomId(1), port: Port(0) },
    );
    assert_eq!(r, Errno::EPERM.to_ret());
    // Ports out of range, port 0, never-allocated ports.
    for p in [0, 63, 64, 4095, 4096, u32::MAX] {
        assert_eq!(
            evtchn(&mut hv, op::SEND, &EvtchnSend { port: Port(p) }).0,
            Errno::EINVAL.to_ret(),
            "port {p}"
        );
        assert_eq!(
            evtchn(&mut hv, op::CLOSE, &EvtchnClose { port: Port(p) }).0,
            Errno::EINVAL.to_ret(),
            "port {p}"
        );
    }
    // Binding to a domain that does not exist.
    let (r, _) = evtchn(
        &mut hv,
        op::BIND_INTERDOMAIN,
        &EvtchnBindInterdomain { remote_dom: DomId(77), remote_port: Port(1), ..Default::default() },
    );
    assert_eq!(r, Errno::ESRCH.to_ret());
    // Binding to a port that was offered to somebody else (the domU's own pre-allocated
    // console port is reserved for dom0).
    let (r, _) = evtchn(
        &mut hv,
        op::BIND_INTERDOMAIN,
        &EvtchnBindInterdomain { remote_dom: DomId::SELF, remote_port: Port(1), ..Default::default() },
    );
    assert_eq!(r, Errno::EINVAL.to_ret());
    // Unknown command.
    assert_eq!(call(&mut hv, nr::EVENT_CHANNEL_OP, [99, SCRATCH_VA, 0, 0, 0]), Errno::ENOSYS.to_ret());
}

#[test]
fn bad_pointers_and_numbers_are_refused() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let bad = [
        0u64,                  // null
        0x0000_8000_0000_0000, // non-canonical
        0xffff_8000_0000_0000, // M2P: hypervisor hole
        0xffff_82d0_8020_0000, // hypervisor text
        0x0000_1000_0000_0000, // unmapped
    ];
    for p in bad {
        let r = call(&mut hv, nr::EVENT_CHANNEL_OP, [u64::from(op::SEND), p, 0, 0, 0]);
        assert_eq!(r, Errno::EFAULT.to_ret(), "pointer {p:#x}");
        let r = call(&mut hv, nr::CONSOLE_IO, [consoleio::WRITE, 16, p, 0, 0]);
        assert_eq!(r, Errno::EFAULT.to_ret(), "pointer {p:#x}");
    }
    // A buffer that starts in the last mapped page of the bootstrap region and runs past it.
    let mut end = hv.cur_vcpu().kernel_sp;
    while hv.guest().translate(end, crate::guest_mem::Access::Read).is_ok() {
        end += 4096;
    }
    assert_eq!(call(&mut hv, nr::CONSOLE_IO, [consoleio::WRITE, 8, end - 8, 0, 0]), 0);
    assert_eq!(call(&mut hv, nr::CONSOLE_IO, [consoleio::WRITE, 16, end - 8, 0, 0]), Errno::EFAULT.to_ret());
    for n in [11u64, 45, 56, 64, 200, u64::MAX] {
        assert_eq!(call(&mut hv, n, [0; 5]), Errno::ENOSYS.to_ret(), "hypercall {n}");
    }
    // domctl is dom0's alone.
    assert_eq!(call(&mut hv, nr::DOMCTL, [SCRATCH_VA, 0, 0, 0, 0]), Errno::EPERM.to_ret());
}

#[test]
fn console_output_is_tagged_and_long_writes_continue() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let text = b"hello from the domU\n\x1b[31mred\n";
    hv.guest().write(SCRATCH_VA, text).unwrap();
    assert_eq!(call(&mut hv, nr::CONSOLE_IO, [consoleio::WRITE, text.len() as u64, SCRATCH_VA, 0, 0]), 0);
    let out = console(&hv);
    assert!(out.contains("(d1) hello from the domU\n"), "{out}");
    assert!(out.contains("(d1) [31mred\n"), "escape filtered: {out}");
    // More than one chunk: the call continues itself with the rest.
    let r = dispatch(&mut hv, nr::CONSOLE_IO, [consoleio::WRITE, 5000, SCRATCH_VA, 0, 0], None);
    assert_eq!(r, Hc::Continue([consoleio::WRITE, 5000 - 256, SCRATCH_VA + 256, 0, 0]));
}

#[test]
fn block_sleeps_until_an_event_and_send_wakes() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let (_, a) = evtchn(
        &mut hv,
        op::ALLOC_UNBOUND,
        &EvtchnAllocUnbound { dom: DomId::SELF, remote_dom: DomId(0), port: Port(0) },
    );
    run_as(&mut hv, DomId(0));
    let (_, b) = evtchn(
        &mut hv,
        op::BIND_INTERDOMAIN,
        &EvtchnBindInterdomain { remote_dom: DomId(1), remote_port: a.port, ..Default::default() },
    );
    run_as(&mut hv, DomId(1));
    // Clear what the bind left pending, then block: nothing pending, so the vCPU sleeps.
    let vi1 = hv.domains[&DomId(1)].vcpus[0].info();
    hv.mem().write_u8(hv.domains[&DomId(1)].shared_info.addr(), 0);
    assert_eq!(call(&mut hv, nr::SCHED_OP, [u64::from(hypercall_abi::sched::op::BLOCK), 0, 0, 0, 0]), 0);
    assert_eq!(hv.cur_vcpu().state, RunState::Blocked);
    assert!(!vi1.upcall_state(hv.mem()).1, "block re-enables event delivery");
    // dom0 sends: the domU wakes.
    run_as(&mut hv, DomId(0));
    assert_eq!(evtchn(&mut hv, op::SEND, &EvtchnSend { port: b.local_port }).0, 0);
    assert_eq!(hv.domains[&DomId(1)].vcpus[0].state, RunState::Runnable);
    assert!(vi1.upcall_state(hv.mem()).0);
}

#[test]
fn event_upcall_bounce_frame_and_iret_round_trip() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let callback = crate::loader::elf::testelf::BASE + 0x100;
    assert_eq!(call(&mut hv, nr::SET_CALLBACKS, [callback, callback + 0x10, 0, 0, 0]), 0);
    // The interrupted context.
    let sp = hv.cur_vcpu().kernel_sp - 0x200;
    let mut frame = GuestFrame {
        rip: crate::loader::elf::testelf::BASE + 0x42,
        cs: u64::from(FLAT_KERNEL_CS),
        ss: u64::from(FLAT_KERNEL_SS),
        rflags: 0x202,
        rsp: sp,
        rcx: 0x1111,
        r11: 0x2222,
        rbx: 0x3333,
        ..Default::default()
    };
    let bm = hv.domains[&DomId(1)].bitmaps();
    let vi = hv.domains[&DomId(1)].vcpus[0].info();
    vi.set_upcall_mask(hv.mem(), false);
    assert!(bm.set_pending(hv.mem(), vi, Port(5)));
    crate::traps::deliver_event(&mut hv, &mut frame).unwrap();
    // Xen's frame: RCX, R11, RIP, CS|mask<<32, RFLAGS, RSP, SS, below the red zone.
    assert_eq!(frame.rip, callback);
    let words: [u64; 7] = hv.guest().read_obj(frame.rsp).unwrap();
    assert_eq!(
        words,
        [
            0x1111,
            0x2222,
            crate::loader::elf::testelf::BASE + 0x42,
            u64::from(FLAT_KERNEL_CS & !3),
            0x202,
            sp,
            u64::from(FLAT_KERNEL_SS)
        ]
    );
    assert!(frame.rsp <= sp - 128 - 56 && frame.rsp.is_multiple_of(8));
    assert!(vi.upcall_state(hv.mem()).1, "delivery masks events");
    // The handler pops rcx/r11, then jumps to the iret stub, which pushes rax, r11, rcx
    // over a zero flags word.
    let ctx = IretContext {
        rax: 7,
        r11: 0x2222,
        rcx: 0x1111,
        flags: 0,
        rip: words[2],
        cs: words[3],
        rflags: words[4],
        rsp: words[5],
        ss: words[6],
    };
    frame.rsp = frame.rsp + 16 - 8 - 24;
    hv.guest().write_obj(frame.rsp, &ctx).unwrap();
    crate::traps::do_iret(&mut hv, &mut frame).unwrap();
    assert_eq!(
        (frame.rip, frame.rsp, frame.rcx, frame.r11, frame.rax, frame.rbx),
        (ctx.rip, sp, 0x1111, 0x2222, 7, 0x3333)
    );
    assert_eq!(frame.cs, u64::from(FLAT_KERNEL_CS));
    assert!(!vi.upcall_state(hv.mem()).1, "iret with IF set unmasks events");
}

#[test]
fn iret_refuses_bad_frames() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let sp = hv.cur_vcpu().kernel_sp - 0x200;
    let good = IretContext {
        rip: 0xffff_ffff_8000_0040,
        cs: u64::from(FLAT_KERNEL_CS),
        rflags: 0x202,
        rsp: sp,
        ss: u64::from(FLAT_KERNEL_SS),
        ..Default::default()
    };
    for bad in [
        IretContext { rip: 0x0000_8000_0000_0000, ..good },
        IretContext { rip: 0xffff_82d0_8020_0000, ..good },
        IretContext { cs: 0xe008, ..good },
        IretContext { ss: 0x10, ..good },
    ] {
        let mut frame = GuestFrame { rsp: sp, ..Default::default() };
        hv.guest().write_obj(sp, &bad).unwrap();
        assert!(crate::traps::do_iret(&mut hv, &mut frame).is_err(), "{bad:?}");
    }
    let mut frame = GuestFrame { rsp: 0x10, ..Default::default() };
    assert!(crate::traps::do_iret(&mut hv, &mut frame).is_err(), "unreadable frame");
}

#[test]
fn trap_table_validation() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let table = [
        TrapInfo {
            vector: 14,
            flags: 0,
            cs: FLAT_KERNEL_CS & !3,
            address: 0xffff_ffff_8000_0100,
            ..Default::default()
        },
        TrapInfo::default(),
    ];
    let p = put(&hv, &table);
    assert_eq!(call(&mut hv, nr::SET_TRAP_TABLE, [p, 0, 0, 0, 0]), 0);
    assert_eq!(hv.cur_vcpu().traps[14].cs, FLAT_KERNEL_CS, "RPL raised to 3");
    // Xen refuses only non-canonical handlers; the whole table is checked before any entry
    // changes.
    let bad = [
        TrapInfo { vector: 6, address: 0xffff_ffff_8000_0200, cs: FLAT_KERNEL_CS, ..Default::default() },
        TrapInfo { vector: 13, address: 0x0000_8000_0000_0000, cs: FLAT_KERNEL_CS, ..Default::default() },
        TrapInfo::default(),
    ];
    let p = put(&hv, &bad);
    assert_eq!(call(&mut hv, nr::SET_TRAP_TABLE, [p, 0, 0, 0, 0]), Errno::EINVAL.to_ret());
    assert_eq!(hv.cur_vcpu().traps[6].address, 0, "nothing changed on error");
    assert_eq!(hv.cur_vcpu().traps[13].address, 0, "nothing changed on error");
}

#[test]
fn bounce_to_a_non_canonical_handler_crashes_the_guest_not_the_hypervisor() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    // set_callbacks records any address, as Xen does...
    assert_eq!(call(&mut hv, nr::SET_CALLBACKS, [0x0000_8000_0000_0000, 0, 0, 0, 0]), 0);
    let sp = hv.cur_vcpu().kernel_sp - 0x100;
    let mut frame = GuestFrame { rsp: sp, rip: 0xffff_ffff_8000_0040, ..Default::default() };
    // ...but delivering to it is refused before any `iretq` could see it.
    let e = crate::traps::bounce(&mut hv, &mut frame, 0x0000_8000_0000_0000, None, true).unwrap_err();
    assert!(matches!(e, crate::traps::BounceError::BadHandler(_)));
}

#[test]
fn shutdown_reports_reason_and_dom0_poweroff_halts() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let s = hypercall_abi::sched::SchedShutdown { reason: 3 };
    let p = put(&hv, &s);
    assert_eq!(call(&mut hv, nr::SCHED_OP, [2, p, 0, 0, 0]), 0);
    assert!(console(&hv).contains("Domain 1 (domU) shut down: crash"));
    assert!(!hv.halting());
    let bad = hypercall_abi::sched::SchedShutdown { reason: 99 };
    run_as(&mut hv, DomId(0));
    let p = put(&hv, &bad);
    assert_eq!(call(&mut hv, nr::SCHED_OP, [2, p, 0, 0, 0]), Errno::EINVAL.to_ret());
    let s = hypercall_abi::sched::SchedShutdown { reason: 0 };
    let p = put(&hv, &s);
    assert_eq!(call(&mut hv, nr::SCHED_OP, [2, p, 0, 0, 0]), 0);
    assert_eq!(
        hv.resume(&mut GuestFrame::default()),
        crate::hv::Resume::Halt(hypercall_abi::microvisor::exit::POWEROFF)
    );
}

#[test]
fn destroying_a_domain_returns_every_frame() {
    let mut hv = two_domains();
    let before = hv.frames.nr_free();
    let owned = hv.frames.tot_pages(DomId(1));
    assert!(owned >= 1024, "the domU owns its memory: {owned}");
    // A domU may not destroy anybody; dom0 may destroy the domU.
    run_as(&mut hv, DomId(1));
    let dc = hypercall_abi::domctl::XenDomctl::new(hypercall_abi::domctl::cmd::DESTROYDOMAIN, DomId(1));
    let p = put(&hv, &dc);
    assert_eq!(call(&mut hv, nr::DOMCTL, [p, 0, 0, 0, 0]), Errno::EPERM.to_ret());
    run_as(&mut hv, DomId(0));
    let p = put(&hv, &dc);
    assert_eq!(call(&mut hv, nr::DOMCTL, [p, 0, 0, 0, 0]), 0);
    assert!(!hv.domains.contains_key(&DomId(1)));
    // Its frames, its shared_info page and its grant-table frame are free again.
    assert_eq!(hv.frames.nr_free(), before + owned + 1 + u64::from(crate::grant::INITIAL_GRANT_FRAMES));
    hv.audit_frames().unwrap();
}

#[test]
fn mmu_update_batches_continue_and_stop_at_a_fault() {
    use crate::hypercall::mm::MMU_UPDATE_PREEMPTED;
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    // count = 2^32 - 1 with a buffer of a few bad requests: Xen reads the top bit as "this is
    // a continuation", so the call works through the buffer and fails at the first bad entry,
    // reporting how far it got.
    let reqs = [hypercall_abi::xen::MmuUpdate { ptr: 0x1234_5678_9000, val: 0 }; 4];
    let p = put(&hv, &reqs);
    let done_va = SCRATCH_VA + 0x800;
    hv.guest().write_obj(done_va, &0u32).unwrap();
    let r = dispatch(
        &mut hv,
        nr::MMU_UPDATE,
        [p, u64::from(u32::MAX), done_va, u64::from(DomId::SELF.0), 0],
        None,
    );
    assert!(matches!(r, Hc::Ret(e) if e < 0), "{r:?}");
    // Continuation encoding: more requests than one batch continue with the rest.
    let r = dispatch(&mut hv, nr::MMU_UPDATE, [SCRATCH_VA, 0, done_va, u64::from(DomId::SELF.0), 0], None);
    assert_eq!(r, Hc::Ret(0), "an empty batch does nothing");
    let _ = MMU_UPDATE_PREEMPTED;
}

/// Found by the fuzzer (seed 20240601, operation 71244: `mmu_update` of no requests naming
/// domain 12 answered 0). Xen's `do_mmu_update` and `do_mmuext_op` look the owner domain up
/// before they read a request: one that does not exist, or the caller naming itself, is
/// `-ESRCH` even in an empty batch. The right to use an existing domain's pages is checked
/// with each request for `mmu_update` (an empty batch is no error) and up front for
/// `mmuext_op` (`xsm_mmuext_op`: `-EPERM`).
#[test]
fn an_empty_page_table_batch_still_checks_the_owner_domain() {
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let done_va = SCRATCH_VA + 0x800;
    let ret = |hv: &mut TestHv, n: u64, count: u64, dom: u64| match dispatch(
        hv,
        n,
        [SCRATCH_VA, count, done_va, dom, 0],
        None,
    ) {
        Hc::Ret(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    for n in [nr::MMU_UPDATE, nr::MMUEXT_OP] {
        assert_eq!(ret(&mut hv, n, 0, 12), Errno::ESRCH.to_ret(), "no domain 12 ({n})");
        assert_eq!(ret(&mut hv, n, 0, 1), Errno::ESRCH.to_ret(), "naming itself ({n})");
        assert_eq!(ret(&mut hv, n, 0, u64::from(DomId::SELF.0)), 0);
    }
    assert_eq!(ret(&mut hv, nr::MMU_UPDATE, 0, 0), 0, "dom0 exists; no request to refuse");
    assert_eq!(ret(&mut hv, nr::MMUEXT_OP, 0, 0), Errno::EPERM.to_ret());
    // The owner is checked before the requests are read.
    assert_eq!(
        match dispatch(&mut hv, nr::MMU_UPDATE, [0xffff_8000_0000_0000, 1, 0, 12, 0], None) {
            Hc::Ret(r) => r,
            other => panic!("unexpected {other:?}"),
        },
        Errno::ESRCH.to_ret()
    );
    hv.audit_frames().unwrap();
}

#[test]
fn gdt_frames_must_be_read_only_and_descriptors_are_checked() {
    use crate::mm::pte;
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    // A data page of the kernel, mapped writable by the builder.
    let va = SCRATCH_VA + 0x1000;
    let ma = hv.guest().translate(va, crate::guest_mem::Access::Read).unwrap();
    let mfn = hypercall_abi::Mfn::containing(ma);
    let list = SCRATCH_VA;
    hv.guest().write_obj(list, &mfn.0).unwrap();
    assert_eq!(call(&mut hv, nr::SET_GDT, [list, 16, 0, 0, 0]), Errno::EINVAL.to_ret(), "mapped writable");
    // Map it read-only, then it can become a GDT frame.
    let ro = pte::make(mfn, pte::PRESENT | pte::ACCESSED | pte::DIRTY | pte::USER);
    assert_eq!(call(&mut hv, nr::UPDATE_VA_MAPPING, [va, ro, 2, 0, 0]), 0);
    assert_eq!(call(&mut hv, nr::SET_GDT, [list, 16, 0, 0, 0]), 0);
    assert_eq!(hv.cur_vcpu().gdt.len(), 16);
    // Now it can be neither mapped writable nor written as a descriptor with a call gate.
    let rw = ro | pte::RW;
    assert!(call(&mut hv, nr::UPDATE_VA_MAPPING, [va, rw, 2, 0, 0]) < 0);
    assert_eq!(
        call(&mut hv, nr::UPDATE_DESCRIPTOR, [ma + 8, 0x0000_ec00_e008_1000, 0, 0, 0]),
        Errno::EINVAL.to_ret()
    );
    // A ring-0 code descriptor is accepted with its DPL raised to 3, in memory and in the copy.
    assert_eq!(call(&mut hv, nr::UPDATE_DESCRIPTOR, [ma + 8, 0x00af_9a00_0000_ffff, 0, 0, 0]), 0);
    assert_eq!(hv.mem().read_u64(ma + 8), 0x00af_fa00_0000_ffff);
    assert_eq!(hv.cur_vcpu().gdt[1], 0x00af_fa00_0000_ffff);
    // Too many entries, unaligned descriptor address.
    assert_eq!(call(&mut hv, nr::SET_GDT, [list, 7169, 0, 0, 0]), Errno::EINVAL.to_ret());
    assert_eq!(call(&mut hv, nr::UPDATE_DESCRIPTOR, [ma + 4, 0, 0, 0, 0]), Errno::EINVAL.to_ret());
}

#[test]
fn balloon_down_and_up_with_a_contiguous_extent() {
    use hypercall_abi::memory::{op as memop, XenMemoryReservation};
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let free0 = hv.frames.nr_free();
    let tot0 = hv.frames.tot_pages(DomId(1));
    // Give back 16 frames of the kernel's padding region (the top of the bootstrap area).
    let mut end = hv.cur_vcpu().kernel_sp;
    while hv.guest().translate(end, crate::guest_mem::Access::Read).is_ok() {
        end += 4096;
    }
    let mut mfns = Vec::new();
    for i in 1..=16u64 {
        // Unmap each page first so its frame is not mapped any more.
        let va = end - i * 4096;
        let ma = hv.guest().translate(va, crate::guest_mem::Access::Read).unwrap();
        mfns.push(ma >> 12);
        assert_eq!(call(&mut hv, nr::UPDATE_VA_MAPPING, [va, 0, 2, 0, 0]), 0);
    }
    let list = SCRATCH_VA + 0x400;
    hv.guest().write(list, mfns.as_bytes()).unwrap();
    let r = XenMemoryReservation {
        extent_start: list,
        nr_extents: 16,
        extent_order: 0,
        mem_flags: 0,
        domid: DomId::SELF,
        ..Default::default()
    };
    let p = put(&hv, &r);
    assert_eq!(call(&mut hv, nr::MEMORY_OP, [u64::from(memop::DECREASE_RESERVATION), p, 0, 0, 0]), 16);
    assert_eq!(hv.frames.tot_pages(DomId(1)), tot0 - 16);
    assert_eq!(hv.frames.nr_free(), free0 + 16);
    // Take 16 back as one machine-contiguous, aligned extent.
    let r = XenMemoryReservation {
        extent_start: list,
        nr_extents: 1,
        extent_order: 4,
        mem_flags: 0,
        domid: DomId::SELF,
        ..Default::default()
    };
    let p = put(&hv, &r);
    assert_eq!(call(&mut hv, nr::MEMORY_OP, [u64::from(memop::INCREASE_RESERVATION), p, 0, 0, 0]), 1);
    let first: u64 = hv.guest().read_obj(list).unwrap();
    assert_eq!(first % 16, 0, "extent is naturally aligned");
    for m in first..first + 16 {
        assert_eq!(
            hv.frames.owner(hypercall_abi::Mfn(m)),
            Some(crate::mm::frame_table::Owner::Domain(DomId(1)))
        );
    }
    assert_eq!(hv.frames.tot_pages(DomId(1)), tot0);
    assert_eq!(hv.frames.nr_free(), free0);
    // Beyond max_pages: nothing more.
    let p = put(&hv, &r);
    assert_eq!(call(&mut hv, nr::MEMORY_OP, [u64::from(memop::INCREASE_RESERVATION), p, 0, 0, 0]), 0);
    // Queries.
    let p = put(&hv, &DomId::SELF);
    assert_eq!(
        call(&mut hv, nr::MEMORY_OP, [u64::from(memop::CURRENT_RESERVATION), p, 0, 0, 0]),
        tot0 as i64
    );
}

#[test]
fn dom0_learns_boot_domains_rings_through_hvm_params() {
    use hypercall_abi::hvm::{op as hvmop, param, XenHvmParam};
    let mut hv = two_domains();
    let (store, console) =
        (hv.domains[&DomId(1)].store_ring.unwrap(), hv.domains[&DomId(1)].console_ring.unwrap());
    let ask = |hv: &mut TestHv, index| {
        let p = put(hv, &XenHvmParam { domid: DomId(1), index, ..Default::default() });
        let r = call(hv, nr::HVM_OP, [u64::from(hvmop::GET_PARAM), p, 0, 0, 0]);
        (r, get::<XenHvmParam>(hv).value)
    };
    assert_eq!(ask(&mut hv, param::STORE_PFN), (0, store.0 .0));
    assert_eq!(ask(&mut hv, param::STORE_EVTCHN), (0, u64::from(store.1)));
    assert_eq!(ask(&mut hv, param::CONSOLE_PFN), (0, console.0 .0));
    assert_eq!(ask(&mut hv, param::CONSOLE_EVTCHN), (0, u64::from(console.1)));
    assert_eq!(ask(&mut hv, 99).0, Errno::EINVAL.to_ret());
    run_as(&mut hv, DomId(1));
    assert_eq!(ask(&mut hv, param::STORE_PFN).0, Errno::EPERM.to_ret());
}

/// A domU flooding `console_io` gets a burst, then the long-run rate; the first line printed
/// afterwards says how many were refused; dom0's output is never limited (issue 9).
#[test]
fn domu_console_output_is_rate_limited_and_dom0_is_not() {
    use crate::console::{GUEST_BURST_BYTES, GUEST_RATE_BYTES_PER_S};
    let mut hv = two_domains();
    let line = [b'x'; 99];
    let mut text = line.to_vec();
    text.push(b'\n');
    let write = |hv: &mut TestHv| {
        hv.guest().write(SCRATCH_VA, &text).unwrap();
        call(hv, nr::CONSOLE_IO, [consoleio::WRITE, text.len() as u64, SCRATCH_VA, 0, 0])
    };
    let printed = |hv: &TestHv, d: u16| console(hv).matches(&format!("(d{d}) xxx")).count() as u64;
    run_as(&mut hv, DomId(1));
    let flood = 5000u64;
    for _ in 0..flood {
        assert_eq!(write(&mut hv), 0, "the guest is never told");
    }
    // Each line costs its text, the `(d1) ` prefix and the newline.
    let per_line = 99 + 8;
    let burst = printed(&hv, 1);
    assert_eq!(burst, GUEST_BURST_BYTES / per_line);
    // One simulated second later the rate's worth goes out, led by the count of refused lines.
    hv.plat.tsc.set(hv.plat.tsc.get() + crate::testkit::TSC_HZ);
    assert_eq!(write(&mut hv), 0);
    assert!(console(&hv)
        .contains(&format!("(XEN) d1: {} console line(s) suppressed (rate limit)", flood - burst)));
    for _ in 0..100 {
        write(&mut hv);
    }
    let after = printed(&hv, 1) - burst;
    assert_eq!(after, GUEST_RATE_BYTES_PER_S / per_line);
    // dom0 writes as much as it likes.
    run_as(&mut hv, DomId::DOM0);
    for _ in 0..flood {
        assert_eq!(write(&mut hv), 0);
    }
    assert_eq!(printed(&hv, 0), flood);
    // The count of lines still refused is reported when the domU shuts down.
    run_as(&mut hv, DomId(1));
    let s = hypercall_abi::sched::SchedShutdown { reason: 0 };
    let p = put(&hv, &s);
    assert_eq!(call(&mut hv, nr::SCHED_OP, [2, p, 0, 0, 0]), 0);
    let refused = 101 - after;
    assert!(console(&hv).contains(&format!("(XEN) d1: {refused} console line(s) suppressed (rate limit)")));
}

/// The debug hypercall is dom0's: a domU may count only its own frames (issue 9), unless the
/// hypervisor was booted with `arch_debug=domu`.
#[cfg(feature = "test-aids")]
#[test]
fn the_debug_hypercall_is_dom0s() {
    use hypercall_abi::hypercall::debug;
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let eperm = Errno::EPERM.to_ret();
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::FREE_FRAMES, 0, 0, 0, 0]), eperm);
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::DOMAIN_FRAMES, 0, 0, 0, 0]), eperm);
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::LONGEST_MM_OP, 0, 0, 0, 0]), eperm);
    let before = console(&hv);
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::DUMP_MEMORY, 0, 0, 0, 0]), eperm);
    assert_eq!(console(&hv), before, "nothing printed");
    let own = call(&mut hv, nr::ARCH_DEBUG, [debug::DOMAIN_FRAMES, u64::from(DomId::SELF.0), 0, 0, 0]);
    assert_eq!(own as u64, hv.frames.tot_pages(DomId(1)));
    run_as(&mut hv, DomId::DOM0);
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::FREE_FRAMES, 0, 0, 0, 0]) as u64, hv.frames.nr_free());
    assert!(call(&mut hv, nr::ARCH_DEBUG, [debug::DOMAIN_FRAMES, 1, 0, 0, 0]) > 0);
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::DUMP_MEMORY, 0, 0, 0, 0]), 0);
    assert!(console(&hv).contains("(XEN) memory: "));
    hv.set_cmdline("arch_debug=domu");
    run_as(&mut hv, DomId(1));
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::FREE_FRAMES, 0, 0, 0, 0]) as u64, hv.frames.nr_free());
    assert!(call(&mut hv, nr::ARCH_DEBUG, [debug::LONGEST_MM_OP, 0, 0, 0, 0]) >= 0);
    assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [debug::DUMP_MEMORY, 0, 0, 0, 0]), eperm);
}

/// A production hypervisor (without `test-aids`) has no debug hypercall, for dom0 either.
#[cfg(not(feature = "test-aids"))]
#[test]
fn a_production_hypervisor_has_no_debug_hypercall() {
    use hypercall_abi::hypercall::debug;
    let mut hv = two_domains();
    run_as(&mut hv, DomId::DOM0);
    let before = console(&hv);
    for cmd in [debug::FREE_FRAMES, debug::DOMAIN_FRAMES, debug::LONGEST_MM_OP, debug::DUMP_MEMORY] {
        assert_eq!(call(&mut hv, nr::ARCH_DEBUG, [cmd, 0, 0, 0, 0]), Errno::ENOSYS.to_ret(), "cmd {cmd}");
    }
    assert_eq!(console(&hv), before, "nothing printed");
}

/// The hypervisor commits each domain's heap (fixed part and quota) from a fixed pool when it
/// creates it, and refuses a domain that does not fit, so no set of domains can exhaust the
/// heap (issue 9).
#[test]
fn a_domain_whose_heap_does_not_fit_the_pool_is_refused() {
    let mut hv = two_domains();
    let used = hv.hv_mem_pool.used();
    let per_domu = hv.domains[&DomId(1)].hv_commitment;
    assert!(used >= crate::domain::DOM0_HV_MEM + crate::domain::DOMU_HV_MEM);
    assert!(per_domu > crate::domain::DOMU_HV_MEM);
    // Room for one more domU, not two.
    hv.hv_mem_pool.set_limit(used + per_domu + per_domu / 2);
    let image = crate::loader::elf::testelf::TestElf::kernel().build();
    let spec = crate::domain_lifecycle::DomainSpec {
        name: "more",
        is_dom0: false,
        mem_bytes: 4 << 20,
        vcpus: 1,
        cmdline: "",
        initrd: &[],
    };
    hv.create_domain(&spec, &image).expect("one more domU fits");
    let e = hv.create_domain(&spec, &image).unwrap_err();
    assert!(e.contains("not enough hypervisor memory for another domain"), "{e}");
    assert_eq!(hv.hv_mem_pool.used(), used + per_domu, "a refused domain commits nothing");
}

/// The FIFO ABI is not provided: Xen 4.17's errors for bad arguments, -EOPNOTSUPP (a Xen
/// without FIFO) for good ones, and the 2-level ABI's answers to set_priority (issue 11).
#[test]
fn fifo_event_channel_ops_get_xens_errors() {
    use hypercall_abi::event_channel::{EvtchnExpandArray, EvtchnInitControl, EvtchnSetPriority};
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let init = |vcpu, offset| EvtchnInitControl { control_gfn: 0x1234, offset, vcpu, ..Default::default() };
    assert_eq!(evtchn(&mut hv, op::INIT_CONTROL, &init(1, 0)).0, Errno::ENOENT.to_ret());
    assert_eq!(evtchn(&mut hv, op::INIT_CONTROL, &init(0, 4096 - 71)).0, Errno::EINVAL.to_ret());
    assert_eq!(evtchn(&mut hv, op::INIT_CONTROL, &init(0, 12)).0, Errno::EINVAL.to_ret());
    let (r, back) = evtchn(&mut hv, op::INIT_CONTROL, &init(0, 4096 - 72));
    assert_eq!((r, back.link_bits), (Errno::EOPNOTSUPP.to_ret(), 0), "nothing copied back");
    let r = call(&mut hv, nr::EVENT_CHANNEL_OP, [u64::from(op::INIT_CONTROL), 0, 0, 0, 0]);
    assert_eq!(r, Errno::EFAULT.to_ret());
    assert_eq!(
        evtchn(&mut hv, op::EXPAND_ARRAY, &EvtchnExpandArray { array_gfn: 1 }).0,
        Errno::EOPNOTSUPP.to_ret()
    );
    let prio = |port| EvtchnSetPriority { port: Port(port), priority: 3 };
    assert_eq!(evtchn(&mut hv, op::SET_PRIORITY, &prio(1)).0, Errno::ENOSYS.to_ret());
    assert_eq!(evtchn(&mut hv, op::SET_PRIORITY, &prio(1 << 20)).0, Errno::EINVAL.to_ret());
}

/// What Linux's boot needs from `stack_switch` and `set_segment_base(GS_USER_SEL)`, as Xen 4.17
/// answers them: `xen_load_sp0` passes its own `__KERNEL_DS` (0x18) and fails its multicall on
/// an error; `xen_load_gs_index` passes `__USER_DS` (0x2b) and BUG()s on an error.
#[test]
fn stack_switch_and_user_gs_selector_take_linuxs_selectors() {
    use hypercall_abi::xen::segbase;
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    for ss in [0x18u64, 0x2b, u64::from(FLAT_KERNEL_SS), 0] {
        assert_eq!(call(&mut hv, nr::STACK_SWITCH, [ss, 0xffff_8000_0001_0000, 0, 0, 0]), 0, "ss {ss:#x}");
        assert_eq!(hv.cur_vcpu().kernel_ss, (ss as u16) | 3, "RPL raised to 3");
        assert_eq!(hv.cur_vcpu().kernel_sp, 0xffff_8000_0001_0000);
    }
    // A GDT descriptor with base 0x12345678 at index 6 (selector 0x33).
    let desc = |base: u64| 0x00cf_f300_0000_ffff | ((base & 0xff_ffff) << 16) | ((base >> 24) << 56);
    let mut gdt = alloc::vec![0u64; 8];
    gdt[5] = desc(0);
    gdt[6] = desc(0x1234_5678);
    hv.cur_vcpu_mut().gdt = gdt;
    hv.cur_vcpu_mut().gs_base_user = 0xdead_0000;
    let load = |hv: &mut TestHv, sel: u64| {
        let r = call(hv, nr::SET_SEGMENT_BASE, [u64::from(segbase::GS_USER_SEL), sel, 0, 0, 0]);
        (r, hv.cur_vcpu().gs_base_user)
    };
    assert_eq!(load(&mut hv, 0x2b), (0, 0), "Linux's __USER_DS");
    assert_eq!(load(&mut hv, 0x30), (0, 0x1234_5678), "the descriptor's base, RPL raised");
    // Selectors that do not load leave a null %gs rather than failing.
    for sel in [0u64, 3, 0x7f8, 0x34, 0xffff] {
        hv.cur_vcpu_mut().gs_base_user = 0xdead_0000;
        assert_eq!(load(&mut hv, sel), (0, 0), "selector {sel:#x}");
    }
}

/// A local flush needs no exit path: the register-only return hands it to the arch layer
/// (which carries it out before `sysretq`) and the core owes nothing afterwards; anything
/// else the exit path must do still takes it, and the flush rides along in `resume`.
#[test]
fn local_flushes_return_straight_with_the_flush_and_owe_nothing() {
    use crate::mm::tlb::Flush;
    use hypercall_abi::xen::{mmuext, MmuextOp};
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let ext = |hv: &mut TestHv, cmd: u32, arg1: u64| {
        let op = MmuextOp { cmd, _pad: 0, arg1, arg2: 0 };
        let p = put(hv, &op);
        hv.hypercall_general(nr::MMUEXT_OP, &[p, 1, 0, u64::from(DomId::SELF.0), 0])
    };
    let r = ext(&mut hv, mmuext::TLB_FLUSH_LOCAL, 0);
    assert_eq!((r.rax, r.slow(), r.straight(), r.flush()), (0, false, false, Flush::All));
    let va = SCRATCH_VA + 0x123;
    let r = ext(&mut hv, mmuext::INVLPG_LOCAL, va);
    assert_eq!((r.rax, r.slow(), r.flush()), (0, false, Flush::Page(va & !0xfff)));
    // Nothing owed now: a plain hypercall returns straight.
    let r = hv.hypercall_general(nr::XEN_VERSION, &[0, 0, 0, 0, 0]);
    assert!(r.straight(), "{r:?}");
    // With other exit work the flush goes through `resume`.
    hv.resched();
    let r = ext(&mut hv, mmuext::TLB_FLUSH_LOCAL, 0);
    assert!(r.slow() && r.flush() == Flush::None, "{r:?}");
    let mut frame = GuestFrame::default();
    match hv.resume(&mut frame) {
        crate::hv::Resume::Guest(exit) => assert_eq!(exit.flush, Flush::All),
        other => panic!("{other:?}"),
    }
}

/// A lone TLB command takes the short path in `hypercall::mm`; the same command in a batch
/// takes the frame table's. Both give the same result, `*pdone` and flush.
#[test]
fn a_lone_tlb_command_answers_as_the_batch_does() {
    use crate::mm::tlb::Flush;
    use hypercall_abi::xen::{mmuext, MmuextOp};
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let pdone = SCRATCH_VA + 0x800;
    let cases = [
        (mmuext::TLB_FLUSH_LOCAL, 0, Ok(Flush::All)),
        (mmuext::TLB_FLUSH_ALL, 0, Ok(Flush::All)),
        (mmuext::INVLPG_LOCAL, 0x4000, Ok(Flush::Page(0x4000))),
        (mmuext::INVLPG_MULTI, 0xffff_c000_0000_1000, Ok(Flush::Page(0xffff_c000_0000_1000))),
        (mmuext::INVLPG_LOCAL, 0x0000_8000_0000_0000, Err(Errno::EINVAL)),
    ];
    for (cmd, arg1, want) in cases {
        let op = MmuextOp { cmd, _pad: 0, arg1, arg2: 0 };
        for n in [1u64, 2] {
            hv.guest().write_obj(SCRATCH_VA, &[op, op]).unwrap();
            hv.guest().write_obj(pdone, &0xffu32).unwrap();
            let r = hv.hypercall_general(nr::MMUEXT_OP, &[SCRATCH_VA, n, pdone, u64::from(DomId::SELF.0), 0]);
            let done: u32 = hv.guest().read_obj(pdone).unwrap();
            match want {
                Ok(f) => {
                    assert_eq!((r.rax, done, r.flush()), (0, n as u32, f), "cmd {cmd} x{n}");
                }
                Err(e) => {
                    assert_eq!(
                        (r.rax as i64, done, r.flush()),
                        (e.to_ret(), 0, Flush::None),
                        "cmd {cmd} x{n}"
                    );
                }
            }
        }
    }
    // Not on our own behalf: the batch's rules (a domain naming itself is ESRCH, as on Xen).
    let op = MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, _pad: 0, arg1: 0, arg2: 0 };
    hv.guest().write_obj(SCRATCH_VA, &op).unwrap();
    let r = hv.hypercall_general(nr::MMUEXT_OP, &[SCRATCH_VA, 1, 0, 1, 0]);
    assert_eq!(r.rax as i64, Errno::ESRCH.to_ret());
}

/// A lone page-table update of the caller's own tables takes the short path in
/// `hypercall::mm`; the same request as a continued batch (`count | MMU_UPDATE_PREEMPTED`,
/// `*pdone` 0) takes the batch's. Run side by side over the same sequence — maps read-only
/// and writable, a flag change, refusals, an L2 entry, a write into a data frame, a
/// `MACHPHYS_UPDATE`, a `*pdone` that faults, and last an L1TF-unsafe entry — both give the
/// same result, `*pdone`, exit work, entries, frame counts and domain state.
#[test]
fn a_lone_page_table_update_answers_as_the_batch_does() {
    use crate::mm::pte::{make, mfn, table_index, PCD, PRESENT, RW, USER};
    use hypercall_abi::xen::{mmu, MmuUpdate};
    use hypercall_abi::Mfn;
    const PREEMPTED: u64 = crate::hypercall::mm::MMU_UPDATE_PREEMPTED as u64;
    let domu = DomId(1);
    let setup = || {
        let mut hv = two_domains();
        run_as(&mut hv, domu);
        hv
    };
    let (mut fast, mut batch) = (setup(), setup());
    // The tables mapping the scratch page, a data page of the domain's and another's frame.
    let mut tables = [Mfn(0); 5];
    tables[4] = fast.cur_vcpu().kernel_l4;
    for level in (1..=3).rev() {
        let e = fast.mem().read_pte(tables[level + 1], table_index(SCRATCH_VA, level as u32 + 1));
        tables[level] = mfn(e);
    }
    let (l1, l2) = (tables[1], tables[2]);
    let data =
        Mfn::containing(fast.guest().translate(SCRATCH_VA + 0x1000, crate::guest_mem::Access::Read).unwrap());
    let dom0_l4 = fast.domains[&DomId::DOM0].vcpu(0).unwrap().kernel_l4;
    let at = |t: Mfn, slot: u64| t.addr() + slot * 8;
    let pdone = SCRATCH_VA + 0x800;
    let reqs = [
        (MmuUpdate { ptr: at(l1, 300), val: make(data, PRESENT | USER) }, pdone),
        (MmuUpdate { ptr: at(l1, 300), val: make(data, PRESENT | RW | USER) }, pdone),
        (MmuUpdate { ptr: at(l1, 300), val: make(data, PRESENT | RW | USER) | 1 << 63 }, 0),
        (MmuUpdate { ptr: at(l1, 301), val: make(l1, PRESENT | RW | USER) }, pdone),
        (MmuUpdate { ptr: at(l1, 301), val: make(data, PRESENT | PCD) }, pdone),
        (MmuUpdate { ptr: at(l1, 302) | mmu::PT_UPDATE_PRESERVE_AD, val: make(data, PRESENT) }, pdone),
        (MmuUpdate { ptr: at(dom0_l4, 3), val: 0 }, pdone),
        (MmuUpdate { ptr: at(l2, 500), val: 0 }, pdone),
        (MmuUpdate { ptr: at(l2, 500), val: make(l1, PRESENT | RW | USER) }, pdone),
        (MmuUpdate { ptr: at(data, 7) | mmu::PT_UPDATE_NO_TRANSLATE, val: 0x1234 }, pdone),
        (MmuUpdate { ptr: data.addr() | mmu::MACHPHYS_UPDATE, val: 5 }, pdone),
        (MmuUpdate { ptr: at(l1, 300), val: 0 }, 0x0000_7000_0000_0000),
        (MmuUpdate { ptr: at(l1, 300), val: 0 }, pdone),
        (MmuUpdate { ptr: at(l1, 302), val: 0x5000 }, pdone),
    ];
    let words =
        |hv: &TestHv, t: Mfn| (0..512).map(|i| hv.mem().read_pte(t, i)).collect::<alloc::vec::Vec<_>>();
    for (i, (req, pdone)) in reqs.into_iter().enumerate() {
        let outcome = |hv: &mut TestHv, count: u64| {
            hv.guest().write_obj(SCRATCH_VA, &req).unwrap();
            if pdone == SCRATCH_VA + 0x800 {
                hv.guest().write_obj(pdone, &0u32).unwrap();
            }
            let r = hv
                .hypercall_general(nr::MMU_UPDATE, &[SCRATCH_VA, count, pdone, u64::from(DomId::SELF.0), 0]);
            let done: Option<u32> = hv.guest().read_obj(SCRATCH_VA + 0x800).ok();
            (r, done, hv.domains[&domu].state, [l1, l2, data].map(|t| (words(hv, t), hv.frames.info(t))))
        };
        let a = outcome(&mut fast, 1);
        let b = outcome(&mut batch, 1 | PREEMPTED);
        assert_eq!(a.0.rax, b.0.rax, "request {i}: {req:?}");
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "request {i}: {req:?}");
    }
    assert_eq!(
        fast.domains[&domu].state,
        crate::domain::DomainState::Shutdown(crate::domain::ShutdownReason::Crash),
        "the L1TF-unsafe entry crashed the domain"
    );
    for hv in [&fast, &batch] {
        if let Err(e) = hv.audit_frames() {
            panic!("audit: {e}");
        }
    }
}

/// A multicall stops at the entry that ended its caller (here `SCHEDOP_shutdown(crash)`):
/// nothing after it runs or is written, although the caller owed no exit work when the batch
/// began (the check `Hypervisor::caller_alive` makes without a look then).
#[test]
fn a_multicall_stops_after_the_call_that_ended_its_caller() {
    use hypercall_abi::sched::{op as schedop, shutdown, SchedShutdown};
    use hypercall_abi::version::op as verop;
    use hypercall_abi::xen::MulticallEntry;
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let why = SCRATCH_VA + 0x400;
    hv.guest().write_obj(why, &SchedShutdown { reason: shutdown::CRASH }).unwrap();
    let version = |result| MulticallEntry {
        op: nr::XEN_VERSION,
        result,
        args: [u64::from(verop::VERSION), 0, 0, 0, 0, 0],
    };
    let entries = [
        version(0x1111),
        MulticallEntry {
            op: nr::SCHED_OP,
            result: 0x2222,
            args: [u64::from(schedop::SHUTDOWN), why, 0, 0, 0, 0],
        },
        version(0x3333),
    ];
    put(&hv, &entries);
    assert_eq!(call(&mut hv, nr::MULTICALL, [SCRATCH_VA, 3, 0, 0, 0]), 0);
    let after: [MulticallEntry; 3] = get(&hv);
    assert_eq!(after[0].result, u64::from(crate::version::XEN_VERSION), "the first call ran");
    assert_eq!(after[1].result, 0, "the shutdown ran and its result was written");
    assert_eq!(after[2].result, 0x3333, "nothing ran after the caller ended");
    assert!(!hv.domains[&DomId(1)].is_alive());

    // And a batch of a live caller runs to its end.
    run_as(&mut hv, DomId(0));
    put(&hv, &[version(1), version(2)]);
    assert_eq!(call(&mut hv, nr::MULTICALL, [SCRATCH_VA, 2, 0, 0, 0]), 0);
    let after: [MulticallEntry; 2] = get(&hv);
    assert!(after.iter().all(|e| e.result == u64::from(crate::version::XEN_VERSION)));
}

/// Xen's register_guest_callback refuses a non-canonical address (`-EINVAL` from
/// `CALLBACKOP_register`, of any type); `set_callbacks` ignores that answer, so the call
/// succeeds and the callback keeps its old address. Found by the fuzzer (seed 103): the
/// address was recorded, and the domain crashed at the first event.
#[test]
fn callbacks_at_non_canonical_addresses_are_refused() {
    use hypercall_abi::callback::{callback_type, op as cbop, CallbackRegister};
    let mut hv = two_domains();
    run_as(&mut hv, DomId(1));
    let good = crate::loader::elf::testelf::BASE + 0x100;
    let bad = 0xa900_3986_50ae_735c;
    assert_eq!(call(&mut hv, nr::SET_CALLBACKS, [good, good + 0x10, good + 0x20, 0, 0]), 0);
    assert_eq!(call(&mut hv, nr::SET_CALLBACKS, [bad, 1 << 63, good + 0x30, 0, 0]), 0);
    let cb = hv.cur_vcpu().callbacks;
    assert_eq!((cb.event, cb.failsafe, cb.syscall), (good, good + 0x10, good + 0x30));
    for type_ in [callback_type::EVENT, callback_type::NMI, callback_type::SYSCALL, 77] {
        let r = CallbackRegister { type_, flags: 0, _pad: 0, address: bad };
        let p = put(&hv, &r);
        assert_eq!(
            call(&mut hv, nr::CALLBACK_OP, [u64::from(cbop::REGISTER), p, 0, 0, 0]),
            Errno::EINVAL.to_ret()
        );
    }
    assert_eq!(hv.cur_vcpu().callbacks.event, good);
}
