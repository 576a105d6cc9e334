//! Compiles `proto/parley.proto` with the pure-Rust `protox` compiler, so no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = proto_dir.join("parley.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&proto_dir])?;
    // The rendezvous of a file transfer is the largest server frame by far
    // and a rare one: boxed, it does not make every frame's body larger.
    prost_build::Config::new()
        .boxed(".parley.v1.ServerFrame.body.transfer_ready")
        .compile_fds(descriptors)?;
    Ok(())
}
