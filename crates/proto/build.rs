//! Generates the hearth.v1 messages and services from `proto/` with the vendored `protoc` (nothing
//! to install), plus the encoded file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["hearth/v1/generation.proto", "hearth/v1/models.proto"].map(|f| root.join(f));
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("hearth_v1_descriptor.bin"))
        .codec_path("crate::codec::HearthCodec")
        .compile_with_config(config, &files, std::slice::from_ref(&root))?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
