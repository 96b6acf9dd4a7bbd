//! Host test kit: a fake machine (memory, clock, console) and a hypervisor with real domains
//! built by the real domain builder in fake memory, so hypercalls, traps and the exit path
//! can be exercised on the host exactly as guests would call them.

use crate::domain::DomainConfig;
use crate::event::PortState;
use crate::hv::Hypervisor;
use crate::loader::builder::{build_pv_domain, BuildConfig};
use crate::loader::elf::{parse_pv_image, testelf};
use crate::mm::fake::FakeMemory;
use crate::mm::{FrameAllocator, MachineMemory};
use crate::platform::Platform;
use crate::sched::VcpuRef;
use crate::time::TimeBase;
use crate::vcpu::{FpuArea, GuestFrame};
use hypercall_abi::{DomId, Mfn, Port};
use std::cell::Cell;
use std::rc::Rc;

/// Fake machine: memory, a settable TSC, and everything written to the console.
pub struct FakePlatform {
    pub mem: Rc<FakeMemory>,
    pub tsc: Cell<u64>,
    pub out: Vec<u8>,
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
    fn fpu_save(&mut self, _area: &mut FpuArea) {}
    fn fpu_restore(&mut self, _area: &FpuArea) {}
}

/// Frames handed out from the fake memory, zeroed like the real allocator does.
pub struct FakeFrames {
    pub mem: Rc<FakeMemory>,
    pub free: Vec<Mfn>,
}

impl FrameAllocator for FakeFrames {
    fn alloc_frame(&mut self, _owner: DomId) -> Option<Mfn> {
        let m = self.free.pop()?;
        self.mem.zero_frame(m);
        Some(m)
    }
    fn free_frames(&self) -> u64 {
        self.free.len() as u64
    }
}

pub type TestHv = Hypervisor<FakePlatform, FakeFrames>;

/// TSC rate of the fake clock: 1 GHz, so ticks are nanoseconds.
pub const TSC_HZ: u64 = 1_000_000_000;

/// A VA in the test kernel's writable data segment, free for hypercall arguments.
pub const SCRATCH_VA: u64 = testelf::BASE + 0x3000;

/// A hypervisor with dom0 and one domU (4 MiB each), both runnable; dom0 is running.
pub fn two_domains() -> TestHv {
    let mem = Rc::new(FakeMemory::new(4096, 16));
    let frames = FakeFrames { mem: mem.clone(), free: (16..4096).rev().map(Mfn).collect() };
    let plat = FakePlatform { mem, tsc: Cell::new(1_000), out: Vec::new() };
    let mut hv = Hypervisor::new(plat, frames, TimeBase::new(0, TSC_HZ));
    let image_bytes = testelf::TestElf::kernel().build();
    let image = parse_pv_image(&image_bytes, 1 << 20).expect("test image parses");
    for (id, name) in [(0u16, "dom0"), (1, "domU")] {
        let id = DomId(id);
        let shared_info = hv.frames.alloc_frame(id).unwrap();
        let cfg = DomainConfig {
            name: name.into(),
            privileged: id == DomId::DOM0,
            max_pages: 1024,
            max_vcpus: 1,
            max_evtchn_ports: 64,
        };
        hv.add_domain(id, &cfg, shared_info);
        let (store, console) = if id == DomId::DOM0 {
            (Port(0), Port(0))
        } else {
            let d = hv.domains.get_mut(&id).unwrap();
            let unbound = PortState::Unbound { remote: DomId::DOM0 };
            (d.evtchn.alloc(unbound, 0).unwrap(), d.evtchn.alloc(unbound, 0).unwrap())
        };
        let bc = BuildConfig {
            domid: id,
            nr_pages: 1024,
            is_dom0: id == DomId::DOM0,
            shared_info_maddr: shared_info.addr(),
            store_evtchn: store,
            console_evtchn: console,
            cmdline: b"",
            initrd: &[],
            hypervisor_l4: [0; 16],
        };
        let mem = hv.plat.mem.clone();
        let built =
            build_pv_domain(&*mem, &mut hv.frames, &image, &image_bytes, &bc).expect("test domain builds");
        let d = hv.domains.get_mut(&id).unwrap();
        d.tot_pages = built.p2m.len() as u64;
        d.vcpus[0].boot(built.entry, built.stack_top, built.start_info_va, built.l4);
        hv.start_domain(id);
    }
    let mut frame = GuestFrame::default();
    assert_eq!(hv.resume(&mut frame), crate::hv::Resume::Guest);
    assert_eq!(hv.current().domid, DomId::DOM0);
    hv
}

/// Switches the running vCPU to `domid` (as if the scheduler had picked it).
pub fn run_as(hv: &mut TestHv, domid: DomId) {
    hv.running = Some(VcpuRef { domid, vcpu: 0 });
}

/// Everything printed on the console so far.
pub fn console(hv: &TestHv) -> String {
    String::from_utf8_lossy(&hv.plat.out).into_owned()
}
