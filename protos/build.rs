//! Generates the few protobuf types that `containerd-shim-protos` does not carry.
use std::{env, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out =
        PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("runctypes");
    fs::create_dir_all(&out).expect("create OUT_DIR/runctypes");
    println!("cargo:rerun-if-changed=proto");
    Codegen::new()
        .inputs(["proto/runctypes/runc.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize::default())
        .out_dir(&out)
        .run()
        .expect("generate runctypes");
    // `include!` rejects inner attributes and inner doc comments; drop them.
    let file = out.join("runc.rs");
    let text = fs::read_to_string(&file).expect("read generated runc.rs");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
        .collect();
    fs::write(&file, kept.join("\n")).expect("rewrite runc.rs");
}
