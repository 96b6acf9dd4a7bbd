//! The test guest's scenario table (`SCENARIOS` in pv-guest-kernel/src/bin/testguest.rs) stays
//! a true map from scenarios to the host tests that drive them: every entry names a test file
//! that exists and mentions the scenario, and no name is listed twice. (A host check of the
//! source; no QEMU.)

use std::collections::BTreeSet;
use std::path::Path;

/// `(name, test file)` of every `sc("<name>", "<file>", ...)` entry.
fn entries() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let src = std::fs::read_to_string(root.join("pv-guest-kernel/src/bin/testguest.rs")).unwrap();
    let start = src.find("pub const SCENARIOS").expect("the table");
    let table = &src[start..start + src[start..].find("\n];").expect("the table's end")];
    let mut out = Vec::new();
    for line in table.lines().map(str::trim).filter(|l| l.starts_with("sc(\"")) {
        let mut quoted = line.split('"').skip(1).step_by(2);
        let (name, file) = (quoted.next().unwrap(), quoted.next().unwrap());
        out.push((name.to_string(), root.join(file).to_string_lossy().into_owned()));
    }
    out
}

#[test]
fn every_scenario_names_the_test_that_drives_it() {
    let entries = entries();
    assert!(entries.len() >= 30, "the table parsed to only {} entries", entries.len());
    let mut seen = BTreeSet::new();
    for (name, file) in &entries {
        assert!(seen.insert(name.clone()), "scenario {name} is listed twice");
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
        assert!(text.contains(name.as_str()), "{name}: {file} never mentions it");
    }
}
