//! Host tests of `vcpu_op` through the real dispatcher (issue 11 item 5): Xen 4.17's answers
//! for a one-vCPU PV domain, the registered `vcpu_info` carrying events and the exit path's
//! upcall test, the runstate area kept current across switches, the periodic timer.

use crate::guest_mem::{Access, GuestSpace};
use crate::hv::Resume;
use crate::hypercall::{dispatch, Hc};
use crate::loader::elf::testelf::BASE;
use crate::mm::MachineMemory;
use crate::sched::VcpuRef;
use crate::testkit::{console, exit_work, run_as, two_domains, TestHv, SCRATCH_VA, TSC_HZ};
use crate::vcpu::RunState;
use hypercall_abi::event_channel::{op as evtop, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnSend};
use hypercall_abi::hypercall::nr;
use hypercall_abi::vcpu::{
    op, runstate, VcpuRegisterRunstateMemoryArea, VcpuRegisterVcpuInfo, VcpuRunstateInfo,
    VcpuSetPeriodicTimer, VcpuSetSingleshotTimer,
};
use hypercall_abi::xen::{virq, SharedInfo, VcpuInfo};
use hypercall_abi::{DomId, Errno, Mfn, Port};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const DU: DomId = DomId(1);
/// A data page of the test kernel (padding), free for the guest's own structures.
const PAGE_VA: u64 = BASE + 0x31_0000;

fn call(hv: &mut TestHv, n: u64, a: [u64; 5]) -> i64 {
    match dispatch(hv, n, a, None) {
        Hc::Ret(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

fn vcpu_op<T: IntoBytes + Immutable>(hv: &mut TestHv, cmd: u32, vcpu: u64, arg: &T) -> i64 {
    hv.guest().write_obj(SCRATCH_VA, arg).unwrap();
    call(hv, nr::VCPU_OP, [u64::from(cmd), vcpu, SCRATCH_VA, 0, 0])
}

fn read<T: FromBytes + IntoBytes>(hv: &TestHv, va: u64) -> T {
    hv.guest().read_obj(va).unwrap()
}

fn mfn_of(hv: &TestHv, va: u64) -> Mfn {
    Mfn::containing(hv.guest().translate(va, Access::Read).unwrap())
}

#[test]
fn a_one_vcpu_domain_gets_xens_answers() {
    let mut hv = two_domains();
    run_as(&mut hv, DU);
    let e = |e: Errno| e.to_ret();
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::IS_UP), 0, 0, 0, 0]), 1);
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::IS_UP), 1, 0, 0, 0]), e(Errno::ENOENT));
    // The vCPU id is an unsigned int: the upper half of the register is ignored.
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::IS_UP), 1 << 32, 0, 0, 0]), 1);
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::UP), 0, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::UP), 1, 0, 0, 0]), e(Errno::ENOENT));
    // initialise: the context is read first; vCPU 0 is initialised already.
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::INITIALISE), 0, 0, 0, 0]), e(Errno::EFAULT));
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::INITIALISE), 0, BASE, 0, 0]), e(Errno::EEXIST));
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::SEND_NMI) + 100, 0, 0, 0, 0]), e(Errno::ENOSYS));
    // Timers.
    let per = |ns| VcpuSetPeriodicTimer { period_ns: ns };
    assert_eq!(vcpu_op(&mut hv, op::SET_PERIODIC_TIMER, 0, &per(999_999)), e(Errno::EINVAL));
    assert_eq!(vcpu_op(&mut hv, op::SET_PERIODIC_TIMER, 0, &per(1 << 62)), e(Errno::EINVAL));
    assert_eq!(vcpu_op(&mut hv, op::SET_PERIODIC_TIMER, 0, &per(1_000_000)), 0);
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::STOP_PERIODIC_TIMER), 0, 0, 0, 0]), 0);
    let now = hv.now_ns();
    // A past deadline fires at once even with VCPU_SSHOTTMR_future (Xen 4.17.7 ignores it).
    let past = VcpuSetSingleshotTimer { timeout_abs_ns: now - 1, flags: 1, _pad: 0 };
    assert_eq!(vcpu_op(&mut hv, op::SET_SINGLESHOT_TIMER, 0, &past), 0);
    assert_eq!(hv.cur_vcpu().timer_deadline(), None, "fired, not armed");
    let later = VcpuSetSingleshotTimer { timeout_abs_ns: now + 1_000_000, flags: 1, _pad: 0 };
    assert_eq!(vcpu_op(&mut hv, op::SET_SINGLESHOT_TIMER, 0, &later), 0);
    assert_eq!(hv.cur_vcpu().timer_deadline(), Some(now + 1_000_000));
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::STOP_SINGLESHOT_TIMER), 0, 0, 0, 0]), 0);
    assert_eq!(hv.cur_vcpu().timer_deadline(), None);
    // get_physid is the hardware domain's.
    assert_eq!(
        call(&mut hv, nr::VCPU_OP, [u64::from(op::GET_PHYSID), 0, SCRATCH_VA, 0, 0]),
        e(Errno::EINVAL)
    );
    // Runstate: running since it was switched in.
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::GET_RUNSTATE_INFO), 0, SCRATCH_VA, 0, 0]), 0);
    let r: VcpuRunstateInfo = read(&hv, SCRATCH_VA);
    assert_eq!(r.state, runstate::RUNNING);
    assert!(r.time[runstate::RUNNING as usize] <= hv.now_ns());
    // Down on the only vCPU powers the domain off.
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::DOWN), 0, 0, 0, 0]), 0);
    assert!(console(&hv).contains("Domain 1 (domU) shut down: poweroff"), "{}", console(&hv));
}

#[test]
fn a_registered_vcpu_info_carries_events_and_the_upcall_test() {
    let mut hv = two_domains();
    run_as(&mut hv, DU);
    let page = mfn_of(&hv, PAGE_VA);
    let reg = |mfn: Mfn, offset: u32| VcpuRegisterVcpuInfo { mfn: mfn.0, offset, rsvd: 0 };
    let e = |e: Errno| e.to_ret();
    // Offsets that do not leave room for the whole structure, or break its alignment.
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 0, &reg(page, 4096 - 63)), e(Errno::ENXIO));
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 0, &reg(page, 4)), e(Errno::ENXIO));
    // Someone else's frame, a page table of ours.
    let dom0_page = hv.domains[&DomId(0)].vcpus[0].kernel_l4;
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 0, &reg(dom0_page, 0)), e(Errno::EINVAL));
    let own_l4 = hv.cur_vcpu().kernel_l4;
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 0, &reg(own_l4, 0)), e(Errno::EINVAL));
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 1, &reg(page, 0)), e(Errno::ENOENT));
    hv.audit_frames().unwrap();
    // The old contents move (the upcall mask the builder set), and everything is marked
    // pending so nothing is lost.
    let old: VcpuInfo = hv.mem().read_obj(hv.cur_vcpu().vcpu_info);
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 0, &reg(page, 128)), 0);
    let new_ma = page.addr() + 128;
    assert_eq!(hv.cur_vcpu().vcpu_info, new_ma);
    let moved: VcpuInfo = hv.mem().read_obj(new_ma);
    assert_eq!(moved.evtchn_upcall_mask, old.evtchn_upcall_mask);
    assert_eq!((moved.evtchn_upcall_pending, moved.evtchn_pending_sel), (1, !0));
    // Once only; the frame is held (the audit knows) and cannot become a page table.
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 0, &reg(page, 0)), e(Errno::EINVAL));
    hv.audit_frames().unwrap();
    // The exit path hands the new address to the arch layer (the fast path's upcall test).
    assert_eq!(exit_work(&mut hv).hw.vcpu_info, new_ma);
    // Events land there, not in shared_info.
    hv.mem().write_u64(new_ma, 0);
    hv.mem().write_u64(new_ma + 8, 0);
    let (r, a) = {
        let a = EvtchnAllocUnbound { dom: DomId::SELF, remote_dom: DomId::SELF, port: Port(0) };
        hv.guest().write_obj(SCRATCH_VA, &a).unwrap();
        let r = call(&mut hv, nr::EVENT_CHANNEL_OP, [u64::from(evtop::ALLOC_UNBOUND), SCRATCH_VA, 0, 0, 0]);
        (r, read::<EvtchnAllocUnbound>(&hv, SCRATCH_VA))
    };
    assert_eq!(r, 0);
    let b = EvtchnBindInterdomain { remote_dom: DomId::SELF, remote_port: a.port, ..Default::default() };
    hv.guest().write_obj(SCRATCH_VA, &b).unwrap();
    assert_eq!(
        call(&mut hv, nr::EVENT_CHANNEL_OP, [u64::from(evtop::BIND_INTERDOMAIN), SCRATCH_VA, 0, 0, 0]),
        0
    );
    let b: EvtchnBindInterdomain = read(&hv, SCRATCH_VA);
    let si = hv.domains[&DU].shared_info.addr() + SharedInfo::vcpu_info_offset(0) as u64;
    hv.mem().write_u64(si, 0);
    hv.mem().write_u64(new_ma, 0);
    hv.mem().write_u64(new_ma + 8, 0);
    hv.domains[&DU].bitmaps().clear_pending(hv.mem(), a.port);
    hv.guest().write_obj(SCRATCH_VA, &EvtchnSend { port: b.local_port }).unwrap();
    assert_eq!(call(&mut hv, nr::EVENT_CHANNEL_OP, [u64::from(evtop::SEND), SCRATCH_VA, 0, 0, 0]), 0);
    let moved: VcpuInfo = hv.mem().read_obj(new_ma);
    assert_eq!(moved.evtchn_upcall_pending, 1);
    assert_ne!(moved.evtchn_pending_sel, 0);
    assert_eq!(hv.mem().read_u8(si), 0, "shared_info's slot is no longer used");
    // Destroying the domain releases the frame.
    run_as(&mut hv, DomId::DOM0);
    crate::domain_lifecycle::destroy_domain(&mut hv, DU);
    assert!(!hv.domains.contains_key(&DU));
    hv.audit_frames().unwrap();
}

#[test]
fn the_runstate_area_follows_every_switch() {
    let mut hv = two_domains();
    run_as(&mut hv, DU);
    let area = PAGE_VA + 0x100;
    let reg = VcpuRegisterRunstateMemoryArea { addr: area };
    let bad = VcpuRegisterRunstateMemoryArea { addr: 0xffff_8000_0000_0000 };
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_RUNSTATE_MEMORY_AREA, 0, &bad), Errno::EFAULT.to_ret());
    // An unmapped (but acceptable) address is accepted; the copies just do not land.
    let unmapped = VcpuRegisterRunstateMemoryArea { addr: 0x1000 };
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_RUNSTATE_MEMORY_AREA, 0, &unmapped), 0);
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_RUNSTATE_MEMORY_AREA, 0, &reg), 0);
    let r: VcpuRunstateInfo = read(&hv, area);
    assert_eq!(r.state, runstate::RUNNING);
    // Block: the exit path switches to dom0, and the area says blocked.
    let t0 = hv.now_ns();
    hv.plat.tsc.set(hv.plat.tsc.get() + TSC_HZ / 1000);
    assert_eq!(call(&mut hv, nr::SCHED_OP, [u64::from(hypercall_abi::sched::op::BLOCK), 0, 0, 0, 0]), 0);
    let mut frame = hv.cur_vcpu().frame;
    assert!(matches!(hv.resume(&mut frame), Resume::Guest(_)));
    assert_eq!(hv.current().domid, DomId::DOM0);
    let l4 = hv.domains[&DU].vcpus[0].kernel_l4;
    let r: VcpuRunstateInfo = GuestSpace::new(hv.platform(), l4).read_obj(area).unwrap();
    assert_eq!(r.state, runstate::BLOCKED);
    assert!(r.time[runstate::RUNNING as usize] >= 1_000_000, "{r:?}");
    assert!(r.state_entry_time > t0);
    // Woken and switched back in: running again, blocked time accounted.
    hv.plat.tsc.set(hv.plat.tsc.get() + TSC_HZ / 100);
    hv.kick_vcpu(VcpuRef { domid: DU, vcpu: 0 });
    hv.sched.yield_current();
    let mut frame = hv.cur_vcpu().frame;
    assert!(matches!(hv.resume(&mut frame), Resume::Guest(_)));
    assert_eq!(hv.current().domid, DU);
    let r: VcpuRunstateInfo = read(&hv, area);
    assert_eq!(r.state, runstate::RUNNING);
    assert!(r.time[runstate::BLOCKED as usize] >= 10_000_000, "{r:?}");
}

#[test]
fn the_periodic_timer_ticks_while_its_vcpu_runs() {
    let mut hv = two_domains();
    run_as(&mut hv, DU);
    // Xen's default for PV vCPUs: 100 Hz.
    assert_eq!(hv.cur_vcpu().periodic_period_ns, crate::vcpu::DEFAULT_PERIODIC_NS);
    let b = hypercall_abi::event_channel::EvtchnBindVirq { virq: virq::TIMER, vcpu: 0, port: Port(0) };
    hv.guest().write_obj(SCRATCH_VA, &b).unwrap();
    assert_eq!(call(&mut hv, nr::EVENT_CHANNEL_OP, [u64::from(evtop::BIND_VIRQ), SCRATCH_VA, 0, 0, 0]), 0);
    let port = read::<hypercall_abi::event_channel::EvtchnBindVirq>(&hv, SCRATCH_VA).port;
    assert_eq!(
        vcpu_op(&mut hv, op::SET_PERIODIC_TIMER, 0, &VcpuSetPeriodicTimer { period_ns: 2_000_000 }),
        0
    );
    let start = hv.now_ns();
    assert_eq!(exit_work(&mut hv).timer_deadline_ns, Some(start + 2_000_000));
    let bm = hv.domains[&DU].bitmaps();
    bm.clear_pending(hv.mem(), port);
    hv.plat.tsc.set(hv.plat.tsc.get() + 2_000_000);
    hv.timer_tick();
    assert!(bm.is_pending(hv.mem(), port), "a tick after one period");
    let next = exit_work(&mut hv).timer_deadline_ns.unwrap();
    assert_eq!(next, hv.now_ns() + 2_000_000);
    // Stopped: no more ticks, no deadline.
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::STOP_PERIODIC_TIMER), 0, 0, 0, 0]), 0);
    bm.clear_pending(hv.mem(), port);
    hv.plat.tsc.set(hv.plat.tsc.get() + 10_000_000);
    hv.timer_tick();
    assert!(!bm.is_pending(hv.mem(), port));
}

/// The fuzzer's block (issue 9's stall): upcalls masked, a one-shot timer armed, then
/// `SCHEDOP_block`. As in Xen 4.17 (`vcpu_block_enable_events`, `set_timer`): the block
/// unmasks upcalls and sleeps only if nothing is pending; the timer's expiry wakes it; a
/// deadline already past fires at once, so the block returns at once; a stopped timer never
/// fires, so a block with no other wake-up sleeps on, which is the guest's choice, not a stall.
/// What stalled the fuzzer was its own `vcpu_info` moved into the shared_info frame (accepted,
/// as Xen accepts it: the page is the domain's): from then on the events go there, and the
/// runtime, still reading the old slot, never sees its timer.
#[test]
fn a_block_with_upcalls_masked_wakes_when_the_timer_fires() {
    let mut hv = two_domains();
    run_as(&mut hv, DU);
    let b = hypercall_abi::event_channel::EvtchnBindVirq { virq: virq::TIMER, vcpu: 0, port: Port(0) };
    hv.guest().write_obj(SCRATCH_VA, &b).unwrap();
    assert_eq!(call(&mut hv, nr::EVENT_CHANNEL_OP, [u64::from(evtop::BIND_VIRQ), SCRATCH_VA, 0, 0, 0]), 0);
    let port = read::<hypercall_abi::event_channel::EvtchnBindVirq>(&hv, SCRATCH_VA).port;
    // The default periodic timer off, as the runtime does at boot.
    assert_eq!(call(&mut hv, nr::VCPU_OP, [u64::from(op::STOP_PERIODIC_TIMER), 0, 0, 0, 0]), 0);
    let bm = hv.domains[&DU].bitmaps();
    let vi = hv.cur_vcpu().info();
    let quiet = |hv: &mut TestHv| {
        bm.clear_pending(hv.mem(), port);
        hv.mem().write_u64(vi.ma, 0);
        hv.mem().write_u64(vi.ma + 8, 0);
    };
    let block = |hv: &mut TestHv| {
        // The fuzzer's sequence: mask, arm, block.
        vi.set_upcall_mask(hv.mem(), true);
        call(hv, nr::SCHED_OP, [u64::from(hypercall_abi::sched::op::BLOCK), 0, 0, 0, 0])
    };
    let ahead = |hv: &mut TestHv, ns: u64| {
        hv.plat.tsc.set(hv.plat.tsc.get() + ns * TSC_HZ / 1_000_000_000);
    };

    // A deadline 100 µs ahead: the block sleeps with upcalls unmasked, the expiry wakes it.
    quiet(&mut hv);
    vi.set_upcall_mask(hv.mem(), true);
    let now = hv.now_ns();
    assert_eq!(call(&mut hv, nr::SET_TIMER_OP, [now + 100_000, 0, 0, 0, 0]), 0);
    assert_eq!(block(&mut hv), 0);
    assert_eq!(hv.domains[&DU].vcpus[0].state, RunState::Blocked);
    assert_eq!(vi.upcall_state(hv.mem()), (false, false), "the block unmasks upcalls");
    ahead(&mut hv, 50_000);
    hv.timer_tick();
    assert_eq!(hv.domains[&DU].vcpus[0].state, RunState::Blocked, "not yet");
    ahead(&mut hv, 50_000);
    hv.timer_tick();
    assert_eq!(hv.domains[&DU].vcpus[0].state, RunState::Runnable);
    assert!(bm.is_pending(hv.mem(), port) && vi.upcall_state(hv.mem()).0);

    // The timer fired before the block (upcalls masked, so it stayed pending): the block
    // returns at once.
    run_as(&mut hv, DU);
    quiet(&mut hv);
    let now = hv.now_ns();
    assert_eq!(call(&mut hv, nr::SET_TIMER_OP, [now + 10_000, 0, 0, 0, 0]), 0);
    ahead(&mut hv, 20_000);
    hv.timer_tick();
    assert_eq!(block(&mut hv), 0);
    assert_eq!(hv.domains[&DU].vcpus[0].state, RunState::Runnable);

    // A deadline already past fires at once: the block returns at once.
    quiet(&mut hv);
    let now = hv.now_ns();
    assert_eq!(call(&mut hv, nr::SET_TIMER_OP, [now - 1, 0, 0, 0, 0]), 0);
    assert!(bm.is_pending(hv.mem(), port));
    assert_eq!(block(&mut hv), 0);
    assert_eq!(hv.domains[&DU].vcpus[0].state, RunState::Runnable);

    // A stopped timer never fires: with nothing else to wake it the vCPU sleeps on.
    quiet(&mut hv);
    let now = hv.now_ns();
    assert_eq!(call(&mut hv, nr::SET_TIMER_OP, [now + 10_000, 0, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, nr::SET_TIMER_OP, [0, 0, 0, 0, 0]), 0);
    assert_eq!(block(&mut hv), 0);
    ahead(&mut hv, 1_000_000_000);
    hv.timer_tick();
    assert_eq!(hv.domains[&DU].vcpus[0].state, RunState::Blocked);
    hv.kick_vcpu(VcpuRef { domid: DU, vcpu: 0 });

    // The fuzzer's own wound: its vcpu_info moved into the shared_info frame, elsewhere than
    // its slot. The timer then marks the new place; the old slot stays quiet.
    run_as(&mut hv, DU);
    quiet(&mut hv);
    let si = hv.domains[&DU].shared_info;
    let reg = VcpuRegisterVcpuInfo { mfn: si.0, offset: 0x800, rsvd: 0 };
    assert_eq!(vcpu_op(&mut hv, op::REGISTER_VCPU_INFO, 0, &reg), 0);
    let moved = hv.cur_vcpu().info();
    hv.mem().write_u64(moved.ma, 0);
    hv.mem().write_u64(moved.ma + 8, 0);
    let now = hv.now_ns();
    assert_eq!(call(&mut hv, nr::SET_TIMER_OP, [now - 1, 0, 0, 0, 0]), 0);
    assert!(moved.upcall_state(hv.mem()).0);
    assert!(!vi.upcall_state(hv.mem()).0, "the old slot no longer hears of events");
    hv.audit_frames().unwrap();
}
