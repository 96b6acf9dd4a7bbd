//! Host test kit: a fake machine (memory, clock, console) and a hypervisor with real domains
//! built by the real domain builder in fake memory, so hypercalls, traps and the exit path
//! can be exercised on the host exactly as guests would call them.

use crate::domain_lifecycle::DomainSpec;
use crate::guest_mem::GuestRange;
use crate::hv::Hypervisor;
use crate::loader::elf::testelf;
use crate::mm::fake::FakeMemory;
use crate::mm::frame_table::FrameTable;
use crate::platform::Platform;
use crate::sched::VcpuRef;
use crate::time::TimeBase;
use crate::vcpu::{FpuArea, GuestFrame};
use hypercall_abi::{DomId, Errno, Mfn};
use std::cell::Cell;
use std::rc::Rc;

/// Fake machine: memory, a settable TSC, and everything written to the console.
pub struct FakePlatform {
    pub mem: Rc<FakeMemory>,
    pub tsc: Cell<u64>,
    pub out: Vec<u8>,
    /// Cache flushes (`wbinvd`) the core asked for.
    pub wbinvds: u32,
    /// The segment bases "in the CPU" (FS, active GS) and whose they are, for tests of the
    /// rule that the CPU's bases are the truth while a vCPU runs.
    pub live_bases: Cell<Option<(VcpuRef, u64, u64)>>,
    /// Copies the core handed to the platform (the kernel's MMU copy; here the software walk).
    pub mmu_copies: Cell<u64>,
}

impl Platform for FakePlatform {
    type Mem = FakeMemory;
    fn mem(&self) -> &FakeMemory {
        &self.mem
    }
    fn tsc(&self) -> u64 {
        self.tsc.get()
    }
    fn console_write(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
    fn cpuid(&self, _leaf: u32, _subleaf: u32) -> [u32; 4] {
        [0; 4]
    }
    fn live_segment_bases(&self, vcpu: VcpuRef) -> Option<(u64, u64)> {
        self.live_bases.get().filter(|&(v, _, _)| v == vcpu).map(|(_, fs, gs)| (fs, gs))
    }
    fn rdmsr_safe(&self, msr: u32) -> Option<u64> {
        FAKE_MSRS.iter().find(|&&(m, _)| m == msr).map(|&(_, v)| v)
    }
    fn wbinvd(&mut self) {
        self.wbinvds += 1;
    }
    /// The fake MMU is the software walk: the copy the kernel makes with the guest's page
    /// tables loaded enforces the same rules on the same entries (see `guest_mem`).
    fn copy_from_guest(&self, l4: Mfn, va: GuestRange, buf: &mut [u8]) -> Option<Result<(), Errno>> {
        self.mmu_copies.set(self.mmu_copies.get() + 1);
        Some(crate::guest_mem::soft_read(&*self.mem, l4, va.va(), buf))
    }
    fn copy_to_guest(&self, l4: Mfn, va: GuestRange, data: &[u8]) -> Option<Result<(), Errno>> {
        self.mmu_copies.set(self.mmu_copies.get() + 1);
        Some(crate::guest_mem::soft_write(&*self.mem, l4, va.va(), data))
    }
    fn fpu_save(&mut self, _area: &mut FpuArea) {}
    fn fpu_restore(&mut self, _area: &FpuArea) {}
}

pub type TestHv = Hypervisor<FakePlatform>;

/// The MSRs the fake CPU has: MTRRcap, and MISC_ENABLE with fast strings and MONITOR enabled.
pub const FAKE_MSRS: &[(u32, u64)] = &[(0xfe, 0x508), (0x1a0, 0x4_0001)];

/// TSC rate of the fake clock: 1 GHz, so ticks are nanoseconds.
pub const TSC_HZ: u64 = 1_000_000_000;

/// A VA in the test kernel's writable data segment, free for hypercall arguments.
pub const SCRATCH_VA: u64 = testelf::BASE + 0x3000;

/// Frames of fake RAM; the first 16 are "hypervisor" frames (the M2P lives there).
pub const FAKE_FRAMES: u64 = 4096;

/// A hypervisor with dom0 and one domU (4 MiB each), both runnable; dom0 is running.
pub fn two_domains() -> TestHv {
    let mem = Rc::new(FakeMemory::new(FAKE_FRAMES, 16));
    let mut ft = FrameTable::new(Mfn(FAKE_FRAMES));
    ft.release_to_free(Mfn(16), Mfn(FAKE_FRAMES));
    // The M2P: FAKE_FRAMES * 8 bytes in frames 8..16, readable by guests.
    let m2p_base = Mfn(8);
    for f in 8..16 {
        ft.share_xen_frame(Mfn(f), DomId::XEN, false).unwrap();
    }
    let plat = FakePlatform {
        mem,
        tsc: Cell::new(1_000),
        out: Vec::new(),
        wbinvds: 0,
        live_bases: Cell::new(None),
        mmu_copies: Cell::new(0),
    };
    let mut hv = Hypervisor::new(plat, ft, m2p_base, TimeBase::new(0, TSC_HZ));
    let image = testelf::TestElf::kernel().build();
    for (name, is_dom0) in [("dom0", true), ("domU", false)] {
        let spec = DomainSpec { name, is_dom0, mem_bytes: 4 << 20, vcpus: 1, cmdline: "", initrd: &[] };
        hv.create_domain(&spec, &image).expect("test domain builds");
    }
    let mut frame = GuestFrame::default();
    assert!(matches!(hv.resume(&mut frame), crate::hv::Resume::Guest(_)));
    assert_eq!(hv.current().domid, DomId::DOM0);
    hv
}

/// Switches the running vCPU to `domid` (as if the scheduler had picked it).
pub fn run_as(hv: &mut TestHv, domid: DomId) {
    let now = hv.now_ns();
    if let Some(prev) = hv.sched.current().filter(|p| p.domid != domid) {
        if let Some(v) = hv.domains.get_mut(&prev.domid).and_then(|d| d.vcpu_mut(prev.vcpu)) {
            v.runstate.leave_cpu(v.state, now);
        }
    }
    hv.sched.set_current(VcpuRef { domid, vcpu: 0 });
    if let Some(v) = hv.domains.get_mut(&domid).and_then(|d| d.vcpu_mut(0)) {
        if v.runstate.state != hypercall_abi::vcpu::runstate::RUNNING {
            v.runstate.enter_cpu(now);
        }
    }
}

/// Runs the exit path for the running vCPU (which must stay running) and returns what it
/// hands the arch layer.
pub fn exit_work(hv: &mut TestHv) -> crate::hv::GuestExit {
    let r = hv.current();
    let mut frame = hv.domains[&r.domid].vcpu(r.vcpu).expect("running vCPU").frame;
    match hv.resume(&mut frame) {
        crate::hv::Resume::Guest(e) => {
            assert_eq!(e.hw.vcpu, r, "the exit path kept the running vCPU");
            e
        }
        other => panic!("the exit path did not return to the guest: {other:?}"),
    }
}

/// Everything printed on the console so far.
pub fn console(hv: &TestHv) -> String {
    String::from_utf8_lossy(&hv.plat.out).into_owned()
}
