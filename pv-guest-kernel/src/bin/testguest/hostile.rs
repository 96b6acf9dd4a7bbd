//! Hostile scenarios the hypervisor must answer by crashing the domain alone: a privileged
//! instruction, an unmapped access and a jump into hypervisor space, each with no trap table
//! to bounce to. They print FAIL only if the domain survives.

use core::arch::asm;
use hypercall_abi::sched;
use pv_guest_kernel::{cmdline, hypercall, println, traps};

/// Removes every trap handler so the fault reaches the hypervisor with nowhere to go.
fn no_trap_table(name: &str, what: &str) {
    if let Err(e) = traps::clear_table() {
        println!("TEST {name} FAIL set_trap_table(NULL) returned {e}");
        hypercall::shutdown(sched::shutdown::POWEROFF);
    }
    println!("TEST {name} RUNNING {what} with no trap table: the hypervisor must crash this domain");
}

pub fn privop(cmd: &str) {
    let insn = cmdline::get(cmd, "insn").unwrap_or("hlt");
    no_trap_table("privop", insn);
    match insn {
        // SAFETY: hlt faults (#GP) in ring 3; nothing is touched.
        "hlt" => unsafe { asm!("hlt", options(nomem, nostack)) },
        // SAFETY: an unsupported MSR write faults (#GP); nothing is touched.
        "wrmsr" => unsafe {
            asm!("wrmsr", in("ecx") 0x1234u32, in("eax") 0u32, in("edx") 0u32, options(nomem, nostack))
        },
        // SAFETY: port I/O without permission faults (#GP); al is declared clobbered.
        "in" => unsafe { asm!("in al, dx", in("dx") 0x80u16, out("al") _, options(nomem, nostack)) },
        other => println!("TEST privop FAIL unknown insn={other}"),
    }
    println!("TEST privop FAIL the domain survived {insn}");
}

pub fn unmapped() {
    no_trap_table("unmapped", "a read of unmapped address 0x1000");
    // SAFETY: the load faults (#PF) and the domain is crashed; if it does not, it reads a
    // register-sized value into a scratch register and nothing else happens.
    unsafe { asm!("mov ({0}), {0}", inout(reg) 0x1000u64 => _, options(att_syntax, nostack, readonly)) };
    println!("TEST unmapped FAIL the domain survived the access");
}

pub fn hvspace() {
    no_trap_table("hvspace", "a call into hypervisor space 0xffff82d080200000");
    // SAFETY: the instruction fetch faults (#PF, supervisor page) and the domain is crashed.
    // Should the hypervisor let it run, whatever runs there is not our code: the result is
    // reported only if it returns, with every register it could clobber declared clobbered.
    unsafe {
        asm!("call *{0}", in(reg) 0xffff_82d0_8020_0000u64, clobber_abi("C"), options(att_syntax));
    }
    println!("TEST hvspace FAIL the domain survived the call");
}
