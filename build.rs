//! Compiles the protos with protox (pure Rust), so no system `protoc` is needed.
//!
//! Two passes over the same descriptors: the messages and the servers, whose codec
//! (`crate::api::codec::RequestCodec`) answers an undecodable request INVALID_ARGUMENT; then
//! the clients alone (`OUT_DIR/clients`, the messages taken from the first pass) with
//! tonic-prost's own codec, so a client that cannot decode an answer still reports INTERNAL
//! and not a bad request of its own.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/ocs/lifecycle/v1/lifecycle.proto",
        "proto/ocs/lifecycle/v1/events.proto",
        "proto/ocs/lifecycle/v1/analytics.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds migrations/ at compile time: a new migration must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("ocs_lifecycle_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::api::codec::RequestCodec")
        .compile_fds(descriptors.clone())?;
    let clients = out_dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .extern_path(".ocs.lifecycle.v1", "crate::proto")
        .out_dir(&clients)
        .compile_fds(descriptors)?;
    Ok(())
}
