//! The bindings generator (uniffi's), built against this workspace's uniffi version.
fn main() {
    uniffi::uniffi_bindgen_main()
}
