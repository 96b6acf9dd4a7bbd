//! microvisor's runner as a library, shared by the `cargo xtask` command line and by the QEMU
//! integration tests in `tests/`: it builds the kernels with bare-metal flags, assembles QEMU
//! command lines, runs machines with a deadline and parses what they print.

pub mod bench;
pub mod kernels;
pub mod plot;
pub mod qemu;
pub mod trace;

use std::path::PathBuf;

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().expect("xtask lives one level below the workspace root").to_path_buf()
}

/// Errors the runner reports to the user, already worded for them.
pub type Result<T> = std::result::Result<T, String>;
