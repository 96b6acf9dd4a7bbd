//! `softint`: software interrupts from guest kernel and user mode (issue 11, item 2), as Xen
//! 4.17 delivers them. `int3` and `int $3` reach the #BP handler (a DPL-3 gate: whatever the
//! virtual IDT's DPL) after the instruction; `int $0x80` goes straight to the 0x80 handler
//! when there is one and is #GP(0x402) at the instruction when there is none; any other
//! `int $n` through a DPL-0 virtual gate is #GP with the IDT error code at the instruction.
//! (QEMU's TCG reports that error code for vector 2n, under Xen as here: only its low bits and
//! the RIP are asserted, the value is recorded.)

use super::checks::Results;
use super::landing::{self, Landed};
use super::user_space::{UserSpace, USER_CODE, USER_STACK_TOP};
use alloc::format;
use hypercall_abi::xen::{FLAT_KERNEL_CS, FLAT_RING3_CS64, FLAT_RING3_SS64};
use pv_guest_kernel::events;
use pv_guest_kernel::mm::{self, pt};

/// Where the guest kernel maps the probe code.
const CODE_VA: u64 = 0x60_0000;
/// Each probe instruction, at its offset in the code page (the rest of the page is `ud2`).
const INT3: (u64, &[u8]) = (0x00, &[0xcc]);
const INT_3: (u64, &[u8]) = (0x10, &[0xcd, 0x03]);
const INT_80: (u64, &[u8]) = (0x20, &[0xcd, 0x80]);
const INT_21: (u64, &[u8]) = (0x30, &[0xcd, 0x21]);
const BP: u8 = 3;
const GP: u8 = 13;
const UD: u8 = 6;
const LEGACY_SYSCALL: u8 = 0x80;
const KERNEL_CS_RPL0: u64 = FLAT_KERNEL_CS as u64 & !3;

fn code_page() -> [u8; 4096] {
    let mut page = [0u8; 4096];
    for pair in page.chunks_mut(2) {
        pair.copy_from_slice(&[0x0f, 0x0b]);
    }
    for (off, bytes) in [INT3, INT_3, INT_80, INT_21] {
        page[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    }
    page
}

fn expect(r: &mut Results, case: &str, l: Option<Landed>, vector: u8, rip: u64, cs: u64) -> Option<Landed> {
    let Some(l) = l else {
        r.fail(format!("{case}: the probe returned instead of landing"));
        return None;
    };
    r.eq(&format!("{case}.vector"), l.id, landing::VECTOR_BASE + u64::from(vector));
    r.eq(&format!("{case}.rip"), l.rip(), rip);
    r.eq(&format!("{case}.cs"), l.cs(), cs);
    Some(l)
}

/// Runs the probe at `off` in kernel mode (a jump) or user mode (an iret).
fn probe(us: Option<&UserSpace>, off: u64) -> Option<Landed> {
    match us {
        None => {
            let args = [0, 0, 0, 0, 0, 0, CODE_VA + off];
            // SAFETY: a jump to our probe instruction, which lands in a stub.
            unsafe { landing::catch(landing::__tg_jump, &args) }
        }
        Some(_) => {
            let args = [
                USER_CODE + off,
                u64::from(FLAT_RING3_CS64),
                0x2,
                USER_STACK_TOP,
                u64::from(FLAT_RING3_SS64),
            ];
            // SAFETY: the iret hypercall to the probe instruction in user mode; it lands in a stub.
            unsafe { landing::catch(landing::__tg_iret_to, &args) }
        }
    }
}

fn cases(r: &mut Results, mode: &str, us: Option<&UserSpace>, base: u64, cs: u64) {
    let c = |n: &str| format!("{mode}.{n}");
    expect(r, &c("int3"), probe(us, INT3.0), BP, base + INT3.0 + 1, cs);
    expect(r, &c("int_3"), probe(us, INT_3.0), BP, base + INT_3.0 + 2, cs);
    // Without a 0x80 handler: #GP(0x80 << 3 | 2) at the int.
    if let Some(l) = expect(r, &c("int_80.nohandler"), probe(us, INT_80.0), GP, base + INT_80.0, cs) {
        r.eq(&c("int_80.nohandler.error_code"), l.error_code().unwrap_or(u64::MAX), 0x402);
    }
    // Any other int $n through a DPL-0 entry: #GP at the int, error code "IDT, vector".
    if let Some(l) = expect(r, &c("int_21.dpl0"), probe(us, INT_21.0), GP, base + INT_21.0, cs) {
        let ec = l.error_code().unwrap_or(u64::MAX);
        pv_guest_kernel::println!("softint: {mode}: int $0x21 through a DPL-0 entry: #GP error code {ec:#x}");
        r.eq(&c("int_21.dpl0.error_code_idt"), ec & 7, 2);
    }
    // With a 0x80 handler (DPL 0: Xen checks none on this path): delivered after the int.
    if landing::install_vectors(&[(LEGACY_SYSCALL, 0)]).is_ok() {
        if let Some(l) =
            expect(r, &c("int_80.handler"), probe(us, INT_80.0), LEGACY_SYSCALL, base + INT_80.0 + 2, cs)
        {
            if us.is_some() {
                r.eq(&c("int_80.handler.rsp"), l.rsp(), USER_STACK_TOP);
            }
        }
    } else {
        r.fail(format!("{mode}: cannot register a 0x80 handler"));
    }
    // Back to no 0x80 handler for the next mode.
    if landing::restore_vectors().is_err() || landing::install_vectors(&[(BP, 3), (GP, 0), (UD, 0)]).is_err()
    {
        r.fail(format!("{mode}: cannot reset the trap table"));
    }
}

pub fn run() {
    let mut r = Results::new("softint");
    let page = code_page();
    let kpage = match mm::alloc_page() {
        Ok(p) => p,
        Err(e) => {
            r.fail(format!("alloc_page: {e}"));
            return r.report();
        }
    };
    // SAFETY: our page, writable in the direct map.
    unsafe { core::ptr::copy_nonoverlapping(page.as_ptr(), kpage.va as *mut u8, 4096) };
    if let Err(e) = mm::map_page(CODE_VA, kpage.mfn, pt::PAGE_KERNEL) {
        r.fail(format!("map_page: {e}"));
        return r.report();
    }
    if let Err(e) = landing::install_vectors(&[(BP, 3), (GP, 0), (UD, 0)]) {
        r.fail(format!("set_trap_table: {e}"));
    }
    let guard = events::mask_upcalls();
    cases(&mut r, "kernel", None, CODE_VA, KERNEL_CS_RPL0);
    match UserSpace::build(&page) {
        Ok(us) => {
            cases(&mut r, "user", Some(&us), USER_CODE, u64::from(FLAT_RING3_CS64));
            for f in us.teardown() {
                r.fail(f);
            }
        }
        Err(e) => r.fail(format!("user space: {e}")),
    }
    drop(guard);
    if let Err(e) = landing::restore_vectors() {
        r.fail(format!("restoring the trap table: {e}"));
    }
    let _ = mm::unmap_page(CODE_VA);
    let _ = mm::free_page(kpage.pfn);
    r.report();
}
