# The demo app: Knative's helloworld-go and autoscale-go samples in one image.
#   docker build -f docker/sample-app.Dockerfile -t REGISTRY/sluice/sample-app:TAG .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-sample-app

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sample-app /sample-app
USER 65532:65532
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/sample-app"]
