//! Writes a RUNPATH to libtorch into every binary, test and bench of this package, so they run with no
//! `LD_LIBRARY_PATH` (torch-sys links libtorch but sets no rpath: ../shared/STACK.md).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run scripts/setup.sh (binaries will need LD_LIBRARY_PATH)");
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    // Canonicalise the `.venv/libtorch` symlink so the RUNPATH survives `.venv` being recreated elsewhere
    // only as long as this checkout stays put; the symlink path itself is also added as a fallback.
    let real = lib.canonicalize().unwrap_or_else(|_| lib.clone());
    for dir in [&real, &lib] {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // Keep libtorch_cuda.so even though no symbol of it is referenced directly.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-Wl,-L{}", real.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
