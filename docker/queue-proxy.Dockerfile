# The queue-proxy image: a drop-in for Knative's `queue-sidecar-image`.
# Build from the repository root:
#   docker build -f docker/queue-proxy.Dockerfile -t REGISTRY/sluice/queue-proxy:TAG .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-queue-proxy

# distroless/cc: glibc and nothing else; nonroot matches Knative's restricted
# securityContext for the queue-proxy (runAsNonRoot, readOnlyRootFilesystem).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/queue-proxy /ko-app/queue
USER 65532:65532
# Knative's ports: serving 8012 (8013 for h2c revisions), admin 8022, metrics 9090/9091.
EXPOSE 8012 8013 8022 9090 9091
ENTRYPOINT ["/ko-app/queue"]
