//! Links dom0 with the PV guest linker script shared with the domU kernels.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    kernel_link::emit(&std::path::Path::new(&dir).join("../pv-guest-kernel/guest.ld"));
}
