//! Compiles `proto/switchboard/v1/*.proto` with a vendored `protoc`, so building needs nothing
//! beyond a Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through `PROTOC`. A build script is single-threaded at this point,
    // which is what makes `set_var` sound here.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    let root = "../../proto".to_owned();
    let files = ["calls", "auth", "registry", "bus", "gateway"]
        .map(|name| format!("{root}/switchboard/v1/{name}.proto"));
    println!("cargo:rerun-if-changed={root}");
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}
