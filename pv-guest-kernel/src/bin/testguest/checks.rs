//! Checks against an expected (Xen 4.17) value: each observed value is reported as a
//! `RESULT <scenario> <check>=<got>` line (hex; the one format of `results`, which the
//! differential run against Xen compares), and a value that is not the expected one is a
//! failure with both values in the scenario's `TEST <s> FAIL` report.

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
        super::results::emit(check, super::results::Value::Hex(got));
        if !ok {
            self.fails.push(alloc::format!("{check}: got {got:#x} want {want:#x}"));
        }
    }

    /// Records a boolean check.
    pub fn is(&mut self, check: &str, ok: bool) {
        self.eq(check, u64::from(ok), 1);
    }

    /// Records a hypercall's return value (reported as `0`, a count or the errno's name).
    pub fn ret(&mut self, check: &str, got: i64, want: i64) {
        self.word_check(
            check,
            super::results::Value::Ret(got),
            got == want,
            format_args!("{got} want {want}"),
        );
    }

    /// Records a check whose value is a word (`done`, `#GP`, ...).
    pub fn word(&mut self, check: &str, got: &str, want: &str) {
        self.word_check(
            check,
            super::results::Value::Word(got),
            got == want,
            format_args!("{got} want {want}"),
        );
    }

    fn word_check(
        &mut self,
        check: &str,
        v: super::results::Value<'_>,
        ok: bool,
        detail: core::fmt::Arguments<'_>,
    ) {
        self.n += 1;
        super::results::emit(check, v);
        if !ok {
            self.fails.push(alloc::format!("{check}: got {detail}"));
        }
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
