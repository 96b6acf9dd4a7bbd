//! What the console shows when a guest is crashed by an exception it cannot take: the reason,
//! then the vCPU's registers, the faulting instruction's bytes and its decoded form, and the
//! words at the guest's stack pointer — what Xen's `show_execution_state` puts in `xl dmesg`,
//! for people debugging a guest they did not write.

use crate::emulate;
use crate::hv::Hypervisor;
use crate::platform::Platform;
use crate::vcpu::GuestFrame;
use alloc::string::String;
use core::fmt::Write;
use iced_x86::{Formatter, GasFormatter};

/// Stack words shown (four lines of four).
const STACK_WORDS: u64 = 16;

/// Crashes the running domain with `why` and prints its state as it faulted (`frame`, the
/// exception `vector`, `cr2` for a #PF).
pub fn crash_with_report<P: Platform>(
    hv: &mut Hypervisor<P>,
    frame: &GuestFrame,
    why: core::fmt::Arguments<'_>,
) {
    let r = hv.current();
    hv.crash_domain(r.domid, why);
    let mode = if hv.cur_vcpu().kernel_mode { "kernel" } else { "user" };
    hv.log(format_args!("----[ d{}v{} guest state ({mode} mode) ]----", r.domid.0, r.vcpu));
    hv.log(format_args!("RIP:    {:04x}:[<{:016x}>]   RFLAGS: {:016x}", frame.cs, frame.rip, frame.rflags));
    let f = frame;
    let rows: [[(&str, u64); 3]; 5] = [
        [("rax", f.rax), ("rbx", f.rbx), ("rcx", f.rcx)],
        [("rdx", f.rdx), ("rsi", f.rsi), ("rdi", f.rdi)],
        [("rbp", f.rbp), ("rsp", f.rsp), ("r8", f.r8)],
        [("r9", f.r9), ("r10", f.r10), ("r11", f.r11)],
        [("r12", f.r12), ("r13", f.r13), ("r14", f.r14)],
    ];
    for row in rows {
        hv.log(format_args!(
            "{:>3}: {:016x}   {:>3}: {:016x}   {:>3}: {:016x}",
            row[0].0, row[0].1, row[1].0, row[1].1, row[2].0, row[2].1
        ));
    }
    hv.log(format_args!("r15: {:016x}   ss: {:04x}   error code: {:x}", f.r15, f.ss, f.error_code));
    let (bytes, n) = emulate::fetch(hv, frame.rip);
    let mut line = String::new();
    for b in &bytes[..n] {
        let _ = write!(line, "{b:02x} ");
    }
    match emulate::decode(&bytes[..n], frame.rip) {
        Some(insn) => {
            let mut text = String::new();
            GasFormatter::new().format(&insn, &mut text);
            let shown = &bytes[..insn.len().min(n)];
            let mut hex = String::new();
            for b in shown {
                let _ = write!(hex, "{b:02x} ");
            }
            hv.log(format_args!("Guest code at rip: {}=> {text}", hex));
        }
        None if n == 0 => hv.log(format_args!("Guest code at rip: not readable")),
        None => hv.log(format_args!("Guest code at rip: {line}(not a valid instruction)")),
    }
    hv.log(format_args!("Guest stack at rsp {:016x}:", frame.rsp));
    let space = hv.guest();
    let words: alloc::vec::Vec<Option<u64>> =
        (0..STACK_WORDS).map(|i| space.read_obj::<u64>(frame.rsp.wrapping_add(8 * i)).ok()).collect();
    for chunk in words.chunks(4) {
        let mut l = String::from("  ");
        for w in chunk {
            match w {
                Some(v) => {
                    let _ = write!(l, " {v:016x}");
                }
                None => l.push_str(" ????????????????"),
            }
        }
        hv.log(format_args!("{l}"));
    }
}
