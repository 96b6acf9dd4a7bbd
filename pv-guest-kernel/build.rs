//! Links the guest kernel binaries as freestanding Xen PV ELF images with the shared linker
//! script (linked at 0xffffffff80000000, Xen ELF notes in a PT_NOTE segment).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    kernel_link::emit(&std::path::Path::new(&dir).join("guest.ld"));
}
