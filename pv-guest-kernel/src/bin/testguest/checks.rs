//! Structured results of conformance checks: one line per check,
//! `RESULT scenario=<s> check=<c> got=<v> want=<v> ok=<0|1>`, with values in hex, so that a
//! host test (or a differential run against Xen) compares values rather than prose. The
//! scenario ends with the usual `TEST <s> PASS|FAIL` line.

use alloc::string::String;
use alloc::vec::Vec;
use pv_guest_kernel::println;

/// The checks of one scenario.
pub struct Results {
    scenario: &'static str,
    fails: Vec<String>,
    n: usize,
}

impl Results {
    pub fn new(scenario: &'static str) -> Results {
        Results { scenario, fails: Vec::new(), n: 0 }
    }

    /// Records check `check`: `got` must equal `want`.
    pub fn eq(&mut self, check: &str, got: u64, want: u64) {
        self.n += 1;
        let ok = got == want;
        println!(
            "RESULT scenario={} check={check} got={got:#x} want={want:#x} ok={}",
            self.scenario,
            u8::from(ok)
        );
        if !ok {
            self.fails.push(alloc::format!("{check}: got {got:#x} want {want:#x}"));
        }
    }

    /// Records a boolean check.
    pub fn is(&mut self, check: &str, ok: bool) {
        self.eq(check, u64::from(ok), 1);
    }

    /// Records a failure that is not a value comparison (a set-up step).
    pub fn fail(&mut self, what: String) {
        println!("{}: {what}", self.scenario);
        self.fails.push(what);
    }

    /// Prints `TEST <scenario> PASS` or the failures and `TEST <scenario> FAIL`.
    pub fn report(&self) {
        super::report(self.scenario, &self.fails, format_args!("{} checks", self.n));
    }
}
