//! Entry points for the fuzz targets in `fuzz/` (`scripts/fuzz`): every decoder that takes
//! bytes from outside the shim, re-exported as they are. Not an API: hidden from the docs, and
//! it follows the functions it names.
//!
//! - runtime options: [`RuntimeOptions::from_any_bytes`] (runc `Options`, the legacy
//!   `containerd.linux.runc` types, `runtimeoptions.v1.Options` with its TOML config);
//! - `start`'s input: [`start_request`] (command line and stdin: an options Any, or
//!   containerd 2.3's `BootstrapParams`) and [`start_response`];
//! - a bundle's config.json: [`check_bundle`] (it reads `<bundle>/config.json`), then
//!   [`outlives_init`] and [`mapped_root`] on the parsed spec;
//! - an exec's process JSON: [`with_terminal`].
#![doc(hidden)]

pub use crate::bootstrap::protocol::{
    parse as start_request, response as start_response, StartRequest,
};
pub use crate::bootstrap::Args;
pub use crate::options::RuntimeOptions;
pub use crate::service::task::bundle::{check_bundle, mapped_root, outlives_init};
pub use crate::service::task::control::with_terminal;
