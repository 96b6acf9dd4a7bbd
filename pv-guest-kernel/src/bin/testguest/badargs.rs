//! `badargs`: every bad hypercall argument (bad pointers, unknown numbers and sub-operations,
//! invalid values) gets Xen's error code, and the domain keeps working afterwards.

use super::traps::{execute_ud2, ud_handler, UD_COUNT};
use super::{report, results};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hypercall_abi::event_channel::{op as evtop, EvtchnBindVirq, EvtchnClose, EvtchnSend};
use hypercall_abi::hypercall::{debug, nr};
use hypercall_abi::xen::{consoleio, uvmf, MmuextOp, TrapInfo, MACH2PHYS_VIRT_START};
use hypercall_abi::{callback, sched, vcpu, version, DomId, Errno, Port};
use pv_guest_kernel::hypercall::{self, hypercall5, raw_syscall};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{println, traps};

struct Case {
    what: &'static str,
    ret: i64,
    want: i64,
}

pub fn badargs() {
    const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;
    const HV_TEXT: u64 = 0xffff_82d0_8020_0000;
    let efault = Errno::EFAULT.to_ret();
    let enosys = Errno::ENOSYS.to_ret();
    let einval = Errno::EINVAL.to_ret();
    let info = mm::info();
    // The first unmapped page after the direct map; the page before it is mapped.
    let end_va = info.map(|i| i.virt_base + i.mapped_end.0 * 4096);
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |what, ret, want| cases.push(Case { what, ret, want });

    // Bad pointers.
    let cw = |p: u64, n: u64| hypercall5(nr::CONSOLE_IO, consoleio::WRITE, n, p, 0, 0);
    add("console_io write from NULL", cw(0, 8), efault);
    add("console_io write from a non-canonical pointer", cw(NON_CANONICAL, 8), efault);
    add("console_io write from hypervisor text", cw(HV_TEXT, 8), efault);
    add("console_io write from the M2P (guest-readable, still refused)", cw(MACH2PHYS_VIRT_START, 8), efault);
    let xv = |p: u64| hypercall5(nr::XEN_VERSION, u64::from(version::op::EXTRAVERSION), p, 0, 0, 0);
    add("xen_version(extraversion) to NULL", xv(0), efault);
    add("xen_version(extraversion) to a non-canonical pointer", xv(NON_CANONICAL), efault);
    add("xen_version(extraversion) into hypervisor text", xv(HV_TEXT), efault);
    let evs = |p: u64| hypercall5(nr::EVENT_CHANNEL_OP, u64::from(evtop::SEND), p, 0, 0, 0);
    add("event_channel_op(send) from NULL", evs(0), efault);
    add("set_trap_table from hypervisor text", hypercall5(nr::SET_TRAP_TABLE, HV_TEXT, 0, 0, 0, 0), efault);
    add("mmu_update from NULL", hypercall5(nr::MMU_UPDATE, 0, 1, 0, u64::from(DomId::SELF.0), 0), efault);
    if let Some(end) = end_va {
        add("console_io write straddling into an unmapped page", cw(end - 16, 64), efault);
        add("xen_version(extraversion) straddling into an unmapped page", xv(end - 8), efault);
        add("event_channel_op(send) straddling into an unmapped page", evs(end - 2), efault);
    } else {
        println!("badargs: no memory manager, straddling cases skipped");
    }
    // A write into a read-only page: a scratch page of ours remapped read-only (never a page
    // table, so a hypervisor that wrongly writes cannot hurt us).
    let ro = ro_scratch_page();
    if let Some(va) = ro {
        add("xen_version(extraversion) into a read-only page", xv(va), efault);
    }
    // Unknown hypercall numbers: through the page where it has a stub, else a bare syscall.
    add("hypercall 11 (unused)", hypercall5(11, 0, 0, 0, 0, 0), enosys);
    add("hypercall 45 (undefined)", hypercall5(45, 0, 0, 0, 0, 0), enosys);
    add("hypercall 64", hypercall5(64, 0, 0, 0, 0, 0), enosys);
    add("hypercall 127 (last stub)", hypercall5(127, 0, 0, 0, 0, 0), enosys);
    add("hypercall 200 (bare syscall)", raw_syscall(200, 0, 0, 0, 0, 0), enosys);
    add(
        "hypercall 2^32+17 (bare syscall, xen_version's low bits)",
        raw_syscall((1 << 32) + 17, 0, 0, 0, 0, 0),
        enosys,
    );
    add("hypercall u64::MAX (bare syscall)", raw_syscall(u64::MAX, 0, 0, 0, 0, 0), enosys);
    // Unknown sub-operations.
    let mut scratch = [0u64; 16];
    let sp = scratch.as_mut_ptr() as u64;
    add("sched_op(99)", hypercall5(nr::SCHED_OP, 99, 0, 0, 0, 0), enosys);
    add("event_channel_op(99)", hypercall5(nr::EVENT_CHANNEL_OP, 99, sp, 0, 0, 0), enosys);
    add("xen_version(99)", hypercall5(nr::XEN_VERSION, 99, 0, 0, 0, 0), enosys);
    add("console_io(99)", hypercall5(nr::CONSOLE_IO, 99, 0, 0, 0, 0), enosys);
    add("vcpu_op(99, vcpu 0)", hypercall5(nr::VCPU_OP, 99, 0, 0, 0, 0), enosys);
    add("callback_op(99)", hypercall5(nr::CALLBACK_OP, 99, sp, 0, 0, 0), enosys);
    add("memory_op(99)", hypercall5(nr::MEMORY_OP, 99, sp, 0, 0, 0), enosys);
    let mut done = 0u32;
    let bad_ext = [MmuextOp { cmd: 99, ..Default::default() }];
    add("mmuext_op(cmd 99)", hypercall::mmuext_op(&bad_ext, &mut done, DomId::SELF), enosys);
    // Invalid arguments.
    let reg = callback::CallbackRegister { type_: 99, flags: 0, _pad: 0, address: 0x1000 };
    add("callback_op(register, type 99)", hypercall::callback_op(callback::op::REGISTER, &reg), enosys);
    let unreg = |t: u16| {
        let u = callback::CallbackUnregister { type_: t, _unused: 0 };
        hypercall::callback_op(callback::op::UNREGISTER, &u)
    };
    add("callback_op(unregister, type 99)", unreg(99), enosys);
    add("callback_op(unregister, syscall) (Xen refuses)", unreg(callback::callback_type::SYSCALL), einval);
    let mut bv = EvtchnBindVirq { virq: 99, vcpu: 0, port: Port(0) };
    add("bind_virq(99)", hypercall::event_channel_op(evtop::BIND_VIRQ, &mut bv), einval);
    let mut s = EvtchnSend { port: Port(4095) };
    add("send on unbound port 4095", hypercall::event_channel_op(evtop::SEND, &mut s), einval);
    let mut s = EvtchnSend { port: Port(1 << 20) };
    add(
        "send on port 2^20 (beyond the 2-level ABI)",
        hypercall::event_channel_op(evtop::SEND, &mut s),
        einval,
    );
    let mut c = EvtchnClose { port: Port(0) };
    add("close port 0 (reserved)", hypercall::event_channel_op(evtop::CLOSE, &mut c), einval);
    add("vcpu_op(is_up, vcpu 99)", hypercall::vcpu_op(vcpu::op::IS_UP, 99, 0), Errno::ENOENT.to_ret());
    let bad_trap =
        [TrapInfo { vector: 14, flags: 0, cs: 0xe030, _pad: 0, address: NON_CANONICAL }, TrapInfo::default()];
    add("set_trap_table with a non-canonical handler", hypercall::set_trap_table(&bad_trap), einval);
    add(
        "update_va_mapping of hypervisor text",
        hypercall::update_va_mapping(HV_TEXT, 0, uvmf::INVLPG),
        einval,
    );
    add(
        "update_va_mapping of a non-canonical address",
        hypercall::update_va_mapping(NON_CANONICAL, 0, uvmf::INVLPG),
        einval,
    );
    // The debug hypercall is dom0's (issue 9): a domU may count only its own frames.
    let eperm = Errno::EPERM.to_ret();
    add("arch_debug(free_frames) from a domU", hypercall::debug_op(debug::FREE_FRAMES, 0), eperm);
    add("arch_debug(domain_frames of dom0) from a domU", hypercall::debug_op(debug::DOMAIN_FRAMES, 0), eperm);
    add("arch_debug(dump_memory) from a domU", hypercall::debug_op(debug::DUMP_MEMORY, 0), eperm);
    // Last: if the hypervisor wrongly accepted it, the domain would shut down here.
    add(
        "sched_op(shutdown) from NULL",
        hypercall5(nr::SCHED_OP, u64::from(sched::op::SHUTDOWN), 0, 0, 0, 0),
        efault,
    );

    let mut fails = Vec::new();
    for c in &cases {
        let ok = c.ret == c.want;
        println!(
            "badargs: {:<62} -> {:>4} (want {:>4} {}) {}",
            c.what,
            c.ret,
            c.want,
            Errno((-c.want) as i32),
            if ok { "ok" } else { "MISMATCH" }
        );
        check!(fails, ok, "{}: got {} want {}", c.what, c.ret, c.want);
        results::ret(c.what, c.ret);
    }
    if let Some(va) = ro {
        // SAFETY: `va` is our scratch page, mapped (read-only) for reading.
        let intact = (0..512).all(|i| unsafe { ((va + i * 8) as *const u64).read_volatile() } == 0);
        results::yes("read-only-page-intact", intact);
        check!(fails, intact, "the hypervisor wrote into our read-only page");
    }
    let own = hypercall::debug_op(debug::DOMAIN_FRAMES, u64::from(DomId::SELF.0));
    check!(fails, own > 0, "arch_debug(domain_frames, DOMID_SELF) gave {own}, want our frame count");
    // The domain must still work normally.
    check!(fails, hypercall::xen_version(version::op::VERSION, 0) > 0, "xen_version broken afterwards");
    // Our own trap table must be intact: a #UD handler still runs.
    UD_COUNT.store(0, Ordering::SeqCst);
    traps::set_handler(6, Some(ud_handler));
    execute_ud2();
    results::emit("trap-table-intact.ud-count", results::Value::Int(UD_COUNT.load(Ordering::SeqCst) as i64));
    check!(fails, UD_COUNT.load(Ordering::SeqCst) == 1, "trap table damaged by the bad set_trap_table");
    traps::set_handler(6, None);
    report("badargs", &fails, format_args!("{} cases", cases.len()));
}

/// A zeroed page of ours whose direct-map mapping is made read-only.
pub fn ro_scratch_page() -> Option<u64> {
    let p = mm::alloc_page().ok()?;
    match hypercall::check(hypercall::update_va_mapping(
        p.va,
        pt::make(p.mfn, pt::PAGE_KERNEL_RO),
        uvmf::INVLPG,
    )) {
        Ok(_) => Some(p.va),
        Err(e) => {
            println!("badargs: cannot make a read-only page ({e}); read-only case skipped");
            None
        }
    }
}
