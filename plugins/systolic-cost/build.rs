//! Adds an rpath to libtorch: in a workspace build nce's `train` feature is on, so this crate's
//! test and binary link libtorch too (see nce's build.rs and ../../.cargo/config.toml).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
