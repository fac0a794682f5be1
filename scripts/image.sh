#!/usr/bin/env bash
# Builds the aws-cni image with podman, with or without a registry. Run as root from anywhere.
#
#   scripts/image.sh                          compile in the image (needs the Rust image, pulled or present)
#   scripts/image.sh --binaries target/debug  the runtime stages only, with ipamd, aws-cni and egress-cni built on the host
#                                             (stripped of debug info on the way in); ipamd needs --features ipamd/aws
#                                             unless the image only ever runs --backend sim
#   --tag NAME       image name (default aws-cni:<workspace version>)
#
# Base images: the Dockerfile's defaults (docker.io's debian:bookworm-slim and rust:1.95-bookworm) when they are
# present or can be pulled. When the Debian one cannot be, a local one is made once with debootstrap from the Debian
# mirror this machine's apt uses, slimmed as Debian's slim images are (no docs, man pages, locales), cached as a
# tarball under $AWS_CNI_IMAGE_CACHE (default /var/cache/aws-cni-image) and imported as
# localhost/aws-cni-base/debian:bookworm-slim; reruns reuse the image, or the tarball if the image was removed.
# With --binaries the image without them is kept as localhost/aws-cni-base/runtime:<version> (rebuilt from the
# layer cache when the Dockerfile changes), so a build from new binaries leaves nothing but the image it names.
# There is no local stand-in for the Rust image: without it, build on the host and pass --binaries.
#
# podman runs with scripts/podman/containers.conf (runc, cgroupfs, fixed ulimits: what podman needs on a machine
# without systemd and without CAP_SYS_RESOURCE) unless CONTAINERS_CONF is set. Prints the image ID.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/scripts/podman/containers.conf}
cache=${AWS_CNI_IMAGE_CACHE:-/var/cache/aws-cni-image}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=aws-cni:$version
binaries=

while [ $# -gt 0 ]; do
  case "$1" in
  --binaries) binaries=$2; shift 2 ;;
  --tag) tag=$2; shift 2 ;;
  *) echo "usage: $0 [--binaries DIR] [--tag NAME]" >&2; exit 2 ;;
  esac
done

public_debian=docker.io/library/debian:bookworm-slim
public_rust=docker.io/library/rust:1.95-bookworm
local_debian=localhost/aws-cni-base/debian:bookworm-slim

log() { echo "image.sh: $*" >&2; }

# An image that is here or can be pulled.
available() {
  podman image exists "$1" || podman pull -q "$1" >/dev/null 2>&1
}

# The Debian mirror and security mirror apt uses here, for bookworm.
mirror() {
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | awk -v s="$1" '$2 == s { print $1; exit }'
}

local_debian_base() {
  if podman image exists "$local_debian"; then
    return
  fi
  local tarball=$cache/debian-bookworm-slim.tar
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap missing: run scripts/deps.sh"; exit 1; }
    local main security root
    main=$(mirror bookworm)
    security=$(mirror bookworm-security)
    [ -n "$main" ] || { log "no bookworm mirror in this machine's apt sources"; exit 1; }
    mkdir -p "$cache"
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    log "debootstrap bookworm from $main (about a minute)"
    debootstrap --variant=minbase bookworm "$root" "$main" >"$cache/debootstrap.log" 2>&1 ||
      { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    {
      echo "deb $main bookworm main"
      echo "deb $main bookworm-updates main"
      [ -z "$security" ] || echo "deb $security bookworm-security main"
    } >"$root/etc/apt/sources.list"
    # What Debian's slim images leave out, now and for every later apt-get install.
    cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/slim"
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/{man,info,lintian}/* "$root"/var/cache/apt/archives/*.deb \
      "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  log "importing $tarball as $local_debian"
  podman import -q --change 'CMD ["/bin/bash"]' "$tarball" "$local_debian" >/dev/null
}

# One build at a time makes the shared base images (tests build in parallel; the first run makes them).
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

debian=$public_debian
if ! available "$public_debian"; then
  log "$public_debian cannot be pulled: using a local Debian base"
  local_debian_base
  debian=$local_debian
fi

args=(--network host --build-arg "DEBIAN_IMAGE=$debian" --build-arg "VERSION=$version")
rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || rev="$rev-dirty"
args+=(--build-arg "REVISION=$rev")
src=$(git remote get-url origin 2>/dev/null || true)
[ -z "$src" ] || args+=(--build-arg "SOURCE=$src")

if [ -n "$binaries" ]; then
  for b in ipamd aws-cni egress-cni; do
    [ -x "$binaries/$b" ] || { log "$binaries/$b: not built"; exit 1; }
  done
  mkdir -p target/image
  for b in ipamd aws-cni egress-cni; do
    # A file of its own, renamed into place: builds running at the same time never see half a binary.
    tmp=$(mktemp "target/image/.$b.XXXXXX")
    strip --strip-debug -o "$tmp" "$binaries/$b"
    chmod 755 "$tmp"
    mv "$tmp" "target/image/$b"
  done
  args+=(--build-arg BINARIES=prebuilt)
else
  if ! available "$public_rust"; then
    log "$public_rust cannot be pulled: build on the host and pass --binaries (cargo build --release -p ipamd -p egress-cni --features ipamd/aws; scripts/plugin-release.sh)"
    exit 1
  fi
fi

if [ -n "$binaries" ]; then
  # Everything but our binaries, as an image of its own (its layers come from the cache when nothing changed):
  # the final build then only adds the binaries, without layer caching, so the binaries of every build (a test
  # run's) leave no intermediate images behind, only the final one, which its owner removes.
  runtime=localhost/aws-cni-base/runtime:$version
  log "podman build --target runtime -t $runtime"
  podman build -q --network host --build-arg "DEBIAN_IMAGE=$debian" --target runtime -t "$runtime" \
    -f Dockerfile . >/dev/null
  args+=(--layers=false --build-arg "RUNTIME=$runtime")
fi
flock -u 9
log "podman build -t $tag"
id_of() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
before=$(id_of "$tag")
if ! podman build -q "${args[@]}" -t "$tag" -f Dockerfile . >/dev/null; then
  # podman 4.3 with --layers=false commits and tags the image, then fails removing a stage's working image
  # ("identifier is not an image"): the build is good if the tag now names a new image.
  after=$(id_of "$tag")
  if [ -z "$binaries" ] || [ -z "$after" ] || [ "$after" = "$before" ]; then
    log "podman build failed"
    exit 1
  fi
  log "(the error above is podman's clean-up after it tagged $tag; the image is complete)"
fi
id_of "$tag"
