//! The ttrpc task service.
pub mod status;
