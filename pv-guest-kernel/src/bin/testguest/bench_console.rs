//! `hypercall.console_io_16b`: `console_io(CONSOLEIO_write, 16, buf)` from a domU, the
//! hypercall every PV kernel uses for its earliest output. The path is a 16-byte copy-in
//! through the software page walk plus the domain's line buffer; every 15th call fills the
//! 240-byte line and pays for writing it to the UART, so the median is the hypercall path and
//! the p99 shows the serial line. Iterations are capped at 20 000 so the log stays small
//! (20 000 × 16 bytes is 320 KiB of console output).

use super::timing::{print, samples, timed4, Failure};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::consoleio;
use pv_guest_kernel::{cmdline, hypercall, println};

const MAX_ITERS: usize = 20_000;
const WARMUP: usize = 100;

pub fn run(cmd: &str) {
    let iters = match cmdline::get_u64(cmd, "iters", 100_000, 1, 10_000_000) {
        Ok(n) => (n as usize).min(MAX_ITERS),
        Err(e) => return println!("TEST bench-console FAIL bad iters= ({e:?})"),
    };
    match measure(iters) {
        Ok(()) => println!("TEST bench-console PASS"),
        Err(e) => println!("TEST bench-console FAIL {e}"),
    }
}

fn measure(iters: usize) -> Result<(), Failure> {
    // No newline: the line buffer decides when a line goes out, as for any partial write.
    let text = *b"console_io 16 b ";
    let arg = hypercall::ptr(&text);
    let mut s = samples(iters)?;
    for i in 0..iters + WARMUP {
        let (t, r) = timed4::<{ nr::CONSOLE_IO }>(consoleio::WRITE, text.len() as u64, arg, 0);
        if r != 0 {
            return Err(alloc::format!("console_io returned {r}"));
        }
        if i >= WARMUP {
            s.push(t);
        }
    }
    // End the partial line in the hypervisor's buffer for this domain.
    let newline = *b"\n";
    let _ = hypercall::console_write(&newline);
    print("hypercall.console_io_16b", &mut s).map(drop)
}
