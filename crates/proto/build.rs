//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/knative/stat.proto",
        "proto/sluice/v1/stats.proto",
        "proto/sluice/v1/decisions.proto",
        "proto/sluice/v1/endpoints.proto",
        "proto/sluice/v1/routes.proto",
        "proto/sluice/v1/node.proto",
        "proto/sluice/v1/config.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // The gateway's static routes file spells a mode `serve` or `proxy`.
        .type_attribute(
            ".sluice.v1.Mode",
            "#[derive(serde::Deserialize, serde::Serialize)] #[serde(rename_all = \"lowercase\")]",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
