//! The microvisor kernel binary: the x86_64 architecture layer plus the glue that hands the
//! machine to the core logic of the `microvisor` library. `kmain` brings the machine up and
//! builds the boot domains from the Multiboot modules; from then on the hypervisor only runs
//! in response to hypercalls, exceptions and timer interrupts.
#![no_std]
#![no_main]

extern crate alloc;

use kernel_rt as _;

mod arch;
mod boot_modules;
mod machine;

use arch::x86_64::{apic, bootmem, cpu, entry, paging, serial};
use core::fmt::Write;
use hypercall_abi::{DomId, Mfn};
use microvisor::hv::Hypervisor;
use microvisor::iomem::IomemPolicy;
use microvisor::mm::frame_table::{FrameTable, XenL4Slots};
use microvisor::time::TimeBase;

/// Rust entry from `boot.rs`, on the boot stack with the early page tables.
pub extern "C" fn kmain(mb_magic: u32, mb_info: u32) -> ! {
    serial::init();
    let tsc_at_boot = cpu::rdtsc();
    let mut w = machine::SerialWriter;
    let _ = writeln!(
        w,
        "(XEN) microvisor {} (Xen {}.{} PV ABI)",
        env!("CARGO_PKG_VERSION"),
        microvisor::version::XEN_MAJOR,
        microvisor::version::XEN_MINOR
    );
    if mb_magic != hypercall_abi::multiboot::BOOTLOADER_MAGIC {
        let _ = writeln!(w, "(XEN) not started by a Multiboot loader (magic {mb_magic:#x})");
        cpu::qemu_exit(machine_exit_fault());
    }
    let bi = bootmem::parse(u64::from(mb_info));
    let mut balloc = bootmem::BootAllocator::new(&bi);
    let ram: u64 = bi.ram.iter().map(|r| r.end - r.start).sum();
    let options = bi.cmdline.split_once(' ').map_or("", |(_, rest)| rest).trim();
    let _ = writeln!(
        w,
        "(XEN) RAM {} MiB, {} boot module(s), options \"{options}\"",
        ram >> 20,
        bi.modules.len()
    );

    let aspace = paging::init(&mut balloc);
    let mem = paging::DirectMap { max_mfn: aspace.max_mfn };

    // Heap for the core's tables: a fixed base plus room per frame of RAM.
    let heap_bytes: u64 = (16 << 20) + aspace.max_mfn.0 * 24;
    paging::init_heap(&mut balloc, heap_bytes);

    entry::init();
    cpu::detect_features();
    let protections = cpu::enable_protections();
    if protections.smap {
        entry::set_smap_on();
    }
    let rates = apic::init();
    arch::x86_64::ioapic::init();
    let _ = writeln!(
        w,
        "(XEN) TSC {} MHz, APIC timer {} MHz",
        rates.tsc_hz / 1_000_000,
        rates.apic_hz / 1_000_000
    );

    // The frame table: free RAM is everything the boot allocator has not handed out, except
    // the modules (released once their domains are built); the M2P is readable by guests.
    let mut frames = FrameTable::new(aspace.max_mfn);
    for r in balloc.remaining() {
        let mut pa = r.start;
        while pa < r.end {
            let run_start = pa;
            while pa < r.end && !balloc.is_reserved(pa) {
                pa += 4096;
            }
            if pa > run_start {
                frames.release_to_free(Mfn(run_start >> 12), Mfn(pa >> 12));
            }
            while pa < r.end && balloc.is_reserved(pa) {
                pa += 4096;
            }
        }
    }
    for i in 0..aspace.m2p_frames {
        frames.share_xen_frame(Mfn(aspace.m2p_base.0 + i), DomId::XEN, false).expect("M2P frames are fresh");
    }
    frames.set_xen_l4_slots(XenL4Slots { entries: aspace.hv_slots, self_slot: None });
    // Holes in the RAM map below the top of RAM are device memory (VGA, ROMs, PCI windows).
    let mut ram: heapless::Vec<bootmem::Range, 64> = bi.ram.clone();
    ram.sort_unstable_by_key(|r| r.start);
    for w in ram.windows(2) {
        if w[1].start > w[0].end {
            frames.mark_io(Mfn(w[0].end >> 12), Mfn(w[1].start >> 12));
        }
    }
    // Proves on every boot that ring 0 can neither run nor read a page a guest maps.
    match arch::x86_64::probe::run(&mut frames, &mem, &aspace.hv_slots) {
        Some((exec, read)) => {
            let _ = writeln!(
                w,
                "(XEN) cpu-protection smep={} smap={} user-exec={exec} user-read={read}",
                u8::from(protections.smep),
                u8::from(protections.smap)
            );
        }
        None => {
            let _ = writeln!(w, "(XEN) cpu-protection: no memory for the probe");
        }
    }
    // Device memory dom0 may map: below the physical address width, never the interrupt
    // controllers (XSA-173; see microvisor::iomem).
    let phys_addr_bits = cpu::cpuid(0x8000_0008, 0)[0] & 0xff;
    frames.set_phys_addr_bits(phys_addr_bits);
    // L1TF checks of PV domains' non-present entries where the CPU needs them (Xen's pv-l1tf).
    let [_, b, c, d] = cpu::cpuid(0, 0);
    let arch_caps = (cpu::cpuid(7, 0)[3] & microvisor::x86::cpuid::l7_edx::ARCH_CAPABILITIES != 0)
        .then(|| arch::x86_64::probe::rdmsr_safe(microvisor::x86::msr::ARCH_CAPABILITIES))
        .flatten();
    let l1tf_bug = microvisor::mm::frame_table::cpu_has_bug_l1tf([b, d, c], arch_caps);
    frames.set_l1tf_policy(microvisor::mm::frame_table::L1tfPolicy::from_cmdline(options, l1tf_bug));
    frames.set_iomem_policy(IomemPolicy::new(
        phys_addr_bits,
        apic::base_address(),
        arch::x86_64::ioapic::IOAPIC_PHYS,
    ));
    let mut hv = Hypervisor::new(
        machine::Machine { mem },
        frames,
        aspace.m2p_base,
        TimeBase::new(tsc_at_boot, rates.tsc_hz),
    );
    hv.set_cmdline(options);
    boot_modules::build_all(&mut hv, &bi);
    #[cfg(feature = "test-aids")]
    let floor = floor_iterations(hv.cmdline());
    #[cfg(feature = "test-aids")]
    if hv.cmdline().split_whitespace().any(|o| o == "selftest=fault") {
        // Proves the ring-0 fault report.
        cpu::fault_on_purpose();
    }
    if hv.cmdline().split_whitespace().any(|o| o == "trace=1") {
        hv.enable_trace(microvisor::trace::DEFAULT_CAPACITY);
    }
    match microvisor::audit::Audit::from_cmdline(hv.cmdline()) {
        Ok(Some(a)) => {
            let every = a.period();
            hv.enable_audit(a);
            hv.log(format_args!("audit: the frame table is checked every {every} hypercalls"));
        }
        Ok(None) => {}
        Err(e) => hv.log(format_args!("{e}: no audit")),
    }
    machine::install(hv);
    #[cfg(feature = "test-aids")]
    machine::start(floor, &aspace.hv_slots);
    #[cfg(not(feature = "test-aids"))]
    machine::start()
}

/// `floor=<iterations>` on the command line asks for the ring-3 latency floor.
#[cfg(feature = "test-aids")]
fn floor_iterations(cmdline: &str) -> Option<u64> {
    cmdline
        .split_whitespace()
        .find_map(|o| o.strip_prefix("floor="))
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0 && n <= 10_000_000)
}

fn machine_exit_fault() -> u8 {
    microvisor::hv::exit_code::HYPERVISOR_FAULT
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut w = machine::SerialWriter;
    let _ = writeln!(w, "(XEN) ****************************************");
    let _ = writeln!(w, "(XEN) PANIC: {info}");
    match machine::running() {
        Some((d, v)) => {
            let _ = writeln!(w, "(XEN) running: d{d}v{v}");
        }
        None => {
            let _ = writeln!(w, "(XEN) running: idle or boot");
        }
    }
    let _ = writeln!(w, "(XEN) ****************************************");
    cpu::qemu_exit(microvisor::hv::exit_code::HYPERVISOR_FAULT)
}
