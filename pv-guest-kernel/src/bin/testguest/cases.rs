//! Recording hostile-input cases: each attempt's result next to the one Xen gives, one
//! `HOSTILE <tag> -> <got> (<name>) want <want> (<name>) ok|MISMATCH` line per case, so the
//! host test can check every case and the scenario can report PASS or FAIL at the end. Each
//! case is also a `RESULT` line (`results`), for the differential run against Xen.

use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::Errno;
use pv_guest_kernel::println;

/// The cases of one scenario.
pub struct Cases {
    scenario: &'static str,
    pub lines: Vec<String>,
    pub fails: Vec<String>,
    pub n: usize,
}

impl Cases {
    pub fn new(scenario: &'static str) -> Cases {
        Cases { scenario, lines: Vec::new(), fails: Vec::new(), n: 0 }
    }

    /// Records one case: `got` must equal `want` (hypercall results, named as errnos).
    pub fn case(&mut self, tag: &str, got: i64, want: i64) {
        super::results::ret(tag, got);
        self.case_named(tag, got, want, name);
    }

    /// Records one case of a grant operation's status (named as `GNTST_*`).
    pub fn status_case(&mut self, tag: &str, got: i16, want: i16) {
        super::results::emit(tag, super::results::Value::Word(hypercall_abi::grant_table::gntst::name(got)));
        self.case_named(tag, i64::from(got), i64::from(want), |s| {
            hypercall_abi::grant_table::gntst::name(s as i16)
        });
    }

    fn case_named(&mut self, tag: &str, got: i64, want: i64, name: impl Fn(i64) -> &'static str) {
        self.n += 1;
        let ok = got == want;
        let line = alloc::format!(
            "HOSTILE {tag} -> {got} ({}) want {want} ({}) {}",
            name(got),
            name(want),
            if ok { "ok" } else { "MISMATCH" }
        );
        println!("{line}");
        self.lines.push(line);
        if !ok {
            self.fails.push(alloc::format!("{tag}: got {got} want {want}"));
        }
    }

    /// Records a failure that is not a case result.
    pub fn fail(&mut self, what: String) {
        println!("{}: {what}", self.scenario);
        self.fails.push(what);
    }

    /// Prints `TEST <scenario> PASS` or the failures and `TEST <scenario> FAIL`.
    pub fn report(&self) {
        super::report(self.scenario, &self.fails, format_args!("{} cases", self.n));
    }
}

pub fn name(r: i64) -> &'static str {
    if r >= 0 {
        "ok"
    } else {
        i32::try_from(-r).map(|e| Errno(e).name()).unwrap_or("?")
    }
}
