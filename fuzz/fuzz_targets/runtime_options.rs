//! The runtime options Any (a Create request's options, or `start`'s stdin before containerd
//! 2.3): runc `Options`, the legacy `containerd.linux.runc` types and
//! `runtimeoptions.v1.Options` with its TOML (`ConfigBody`, or the file `ConfigPath` names).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use libshim::fuzzing::RuntimeOptions;

/// A bundle directory for the options file, one per fuzzing process.
fn bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("libshim-fuzz-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the bundle directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    match RuntimeOptions::from_any_bytes(data) {
        Ok(options) => {
            // Whatever decodes is what the `delete` action gets back after the shim died.
            options.save(bundle()).expect("save the options");
            assert_eq!(RuntimeOptions::load(bundle()), options);
        }
        Err(e) => drop(e.to_string()),
    }
});
