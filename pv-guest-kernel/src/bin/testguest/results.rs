//! Structured conformance results: each scenario reports what it observed as
//! `RESULT <scenario> <check>=<value>` lines (formatted by `hypercall_abi::microvisor::
//! conformance`, which the runner parses too), so `cargo xtask conformance` can run it under
//! microvisor and under Xen 4.17 and compare the two check by check. Values must not depend on
//! where memory happens to be (report "the fault address was the one written", not the address).

use alloc::string::String;
use hypercall_abi::microvisor::conformance::Line;
pub use hypercall_abi::microvisor::conformance::Value;
use pv_guest_kernel::println;

/// The running scenario's name, set once by `main`.
static SCENARIO: spin::Once<String> = spin::Once::new();

/// Names the scenario every later result belongs to.
pub fn set_scenario(name: &str) {
    SCENARIO.call_once(|| String::from(name));
}

fn scenario() -> &'static str {
    SCENARIO.get().map_or("unnamed", String::as_str)
}

/// Reports one observation of the running scenario.
pub fn emit(check: &str, value: Value<'_>) {
    println!("{}", Line { scenario: scenario(), check, value });
}

/// Reports a hypercall's return value.
pub fn ret(check: &str, r: i64) {
    emit(check, Value::Ret(r));
}

/// Reports a yes/no observation.
pub fn yes(check: &str, b: bool) {
    emit(check, Value::Bool(b));
}
