# The multi-call `sluice` image: every component (`sluice control`, `autoscaler`,
# `activator`, `gateway`, `queue-proxy`), as deploy/sluice.yaml runs them.
# Build from the repository root (not built on Sluice's CI machines, which cannot reach
# Docker Hub; see the README's "Run on Kubernetes"):
#   docker build -f docker/sluice.Dockerfile -t REGISTRY/sluice:TAG .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice

# distroless/cc: glibc (with its NSS modules, for Service names) and nothing else;
# nonroot matches the restricted securityContext of deploy/sluice.yaml.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice /sluice
USER 65532:65532
ENTRYPOINT ["/sluice"]
