#!/usr/bin/env bash
# `make images`: Sluice's container images, built without any registry.
#
# 1. One static `sluice` binary (glibc, `+crt-static`; glibc >= 2.34 carries its `files`
#    and `dns` name services inside libc, so Service names resolve in a scratch image
#    through the pod's /etc/resolv.conf, search domains included).
# 2. docker/Dockerfile's three `FROM scratch` stages, built with buildah from a context
#    holding only that binary.
# 3. Each image written as an OCI archive: target/images/{sluice,sluice-queue-proxy,
#    sluice-sample-app}.tar, for `podman load`, `skopeo copy` or `kind load image-archive`.
#
# IMAGE_PROFILE=release builds the benchmarked fat-LTO binary (slower to build).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${IMAGE_PROFILE:-image}
target=$(rustc -vV | sed -n 's/^host: //p')
out=target/images
version=$(cargo pkgid -p sluice | sed 's/.*[#@]//')

for tool in buildah; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "images: $tool is missing (Debian: apt-get install buildah)" >&2
    exit 1
  }
done

echo "images: building a static sluice $version for $target (profile $profile)"
# --target keeps crt-static off build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked --profile "$profile" --target "$target" -p sluice
dir=$profile
[ "$profile" = dev ] && dir=debug
bin=target/$target/$dir/sluice
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "images: $bin is dynamically linked; a scratch image cannot run it" >&2
  exit 1
fi

mkdir -p "$out"
context=$(mktemp -d "$out/context.XXXXXX")
trap 'rm -rf "$context"' EXIT
cp "$bin" "$context/sluice"

for stage in sluice queue-proxy sample-app; do
  name=sluice-$stage
  [ "$stage" = sluice ] && name=sluice
  ref=localhost/$name:$version
  buildah build --quiet --file docker/Dockerfile --target "$stage" \
    --build-arg "VERSION=$version" --tag "$ref" "$context" >/dev/null
  rm -f "$out/$name.tar"
  buildah push --quiet "$ref" "oci-archive:$out/$name.tar:$ref"
  echo "images: $out/$name.tar ($ref, $(du -h "$out/$name.tar" | cut -f1))"
done
