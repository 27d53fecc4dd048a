//! Compiles `proto/switchboard/v1/*.proto` with a vendored `protoc`, so building needs nothing
//! beyond a Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let root = "../../proto".to_owned();
    let files = ["calls", "auth", "registry", "bus", "gateway"]
        .map(|name| format!("{root}/switchboard/v1/{name}.proto"));
    println!("cargo:rerun-if-changed={root}");
    tonic_prost_build::configure().compile_with_config(config, &files, &[root])?;
    Ok(())
}
