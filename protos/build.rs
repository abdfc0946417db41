//! Generates the few protobuf types that `containerd-shim-protos` does not carry.
use std::{env, fs, path::Path, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed=proto");
    generate(
        &out.join("runctypes"),
        "proto/runctypes/runc.proto",
        "runc.rs",
    );
    generate(
        &out.join("runtimeoptions"),
        "proto/runtimeoptions/runtimeoptions.proto",
        "runtimeoptions.rs",
    );
}

fn generate(out: &Path, input: &str, generated: &str) {
    fs::create_dir_all(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    Codegen::new()
        .inputs([input])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize::default())
        .out_dir(out)
        .run()
        .unwrap_or_else(|e| panic!("generate {input}: {e}"));
    // `include!` rejects inner attributes and inner doc comments; drop them.
    let file = out.join(generated);
    let text = fs::read_to_string(&file).expect("read generated code");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
        .collect();
    fs::write(&file, kept.join("\n")).expect("rewrite generated code");
}
