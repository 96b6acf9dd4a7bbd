//! Links the `microvisor` binary as a freestanding Multiboot image with our linker script.
//! The library (host-tested core) is unaffected: these arguments apply to the binary only.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    kernel_link::emit(&std::path::Path::new(&dir).join("linker.ld"));
}
