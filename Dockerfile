# syntax=docker/dockerfile:1
# The aws-cni image: ipamd (daemon, installer, probes), aws-cni and egress-cni, the upstream CNI plugins, and the node's
# netfilter tools (iptables nft and legacy, nft, conntrack) on Debian bookworm. Build from the repository root:
#
#   docker build -t aws-cni:0.1.0 .                      compiles in the Rust stage (release, exactly Cargo.lock)
#   scripts/image.sh                                     podman, no registry needed (see there), or prebuilt:
#   podman build --build-arg BINARIES=prebuilt ...       takes target/image/{ipamd,aws-cni,egress-cni} staged
#
#   build      Rust on Debian bookworm: ipamd (with the aws backend), aws-cni and egress-cni
#   compiled   the binaries of `build`              } BINARIES picks one; an engine that skips unused stages
#   prebuilt   the binaries staged from the host     } (BuildKit, buildah) never runs the other
#   plugins    Debian's containernetworking-plugins: the five that `ipamd install` copies to the host
#   runtime    Debian bookworm (slim) with iptables, nftables, conntrack, the plugins and the conflist template
#   final      runtime (or RUNTIME) + the binaries: /app as `ipamd install` expects it
#
# Why Debian and not distroless: ipamd runs iptables and iptables-restore against whatever backend the node's
# kubelet and kube-proxy use (nf_tables on current EKS AMIs, legacy on older ones), and the choice must be made
# at run time on the node (iptables-wrapper below). That needs both backends' binaries, their extensions and
# every library they load, nft and conntrack for debugging a node, and a shell for the wrapper: Debian's
# packages bring all of it with their dependencies resolved by dpkg, where copying files into distroless by
# hand silently drops a library. tests/tests/image_pod.rs checks every ELF file's library closure in the built
# image (ldd: nothing "not found") and plays the DaemonSet's pod with podman (scripts/image.sh builds it).
#
# Base images are build arguments, so a build without a registry can use local ones (scripts/image.sh makes
# them with debootstrap). The defaults are the public images.

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
ARG BINARIES=compiled
# The image the final stage adds the binaries to: the runtime stage below, or (scripts/image.sh) that stage built
# once and tagged, so a build from new binaries makes one image and leaves no intermediate ones behind.
ARG RUNTIME=runtime

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# aws-sdk-ec2 makes this long (about 13 minutes and 8 GB of memory on 2 cores).
# The plugin is built as shipped by scripts/plugin-release.sh (static musl with dlmalloc, not PIE; it adds the
# musl target with rustup), into target/release/aws-cni.
RUN cargo build --locked --release -p ipamd -p egress-cni --features ipamd/aws \
 && scripts/plugin-release.sh --locked

FROM scratch AS compiled
COPY --from=build /src/target/release/ipamd /src/target/release/aws-cni /src/target/release/egress-cni /

# Binaries built on the host (glibc of bookworm or older, ipamd with its aws feature), staged into
# target/image/ by scripts/image.sh (.dockerignore lets exactly that directory of target/ through).
FROM scratch AS prebuilt
COPY target/image/ipamd target/image/aws-cni target/image/egress-cni /

FROM ${BINARIES} AS binaries

FROM ${DEBIAN_IMAGE} AS plugins
RUN apt-get update \
 && apt-get install -y --no-install-recommends containernetworking-plugins \
 && mkdir -p /out/cni-plugins \
 && for p in portmap loopback host-local bandwidth tuning; do cp /usr/lib/cni/$p /out/cni-plugins/; done

FROM ${DEBIAN_IMAGE} AS runtime
# iptables (nft and legacy backends: both multi-call binaries and all extensions), nftables, conntrack. Docs,
# man pages and apt's lists go (a slim base already excludes them through dpkg's path-exclude).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables conntrack \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
           /usr/share/doc /usr/share/man /usr/share/info
# The backend is chosen on the node at first use, as kubernetes-sigs/iptables-wrappers does it: whichever of
# legacy and nft already holds more rules (kubelet's and kube-proxy's), nft when neither holds any. The wrapper
# points the alternatives at the chosen backend and execs it; later calls go straight to the real binary.
COPY scripts/iptables-wrapper /usr/sbin/iptables-wrapper
RUN for c in iptables ip6tables; do \
      update-alternatives --install /usr/sbin/$c $c /usr/sbin/iptables-wrapper 100 \
        --slave /usr/sbin/$c-restore $c-restore /usr/sbin/iptables-wrapper \
        --slave /usr/sbin/$c-save $c-save /usr/sbin/iptables-wrapper; \
    done
COPY --from=plugins /out/cni-plugins/ /app/cni-plugins/
COPY deploy/10-aws.conflist.tmpl /app/10-aws.conflist.tmpl

FROM ${RUNTIME} AS final
COPY --from=binaries /ipamd /aws-cni /egress-cni /app/
WORKDIR /app
# Every container of the DaemonSet runs as root (see deploy/base/daemonset.yaml for the privileges each keeps):
# it writes the host's root-owned /opt/cni/bin, /etc/cni/net.d and /var/run/aws-node, and a non-root process
# loses the NET_ADMIN the daemon needs at exec (Kubernetes sets no ambient capabilities).
ENTRYPOINT ["/app/ipamd"]
CMD ["run"]
# Last, so a new revision reuses every layer above from the cache.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="aws-cni" \
      org.opencontainers.image.description="AWS VPC CNI in Rust: ipamd and the aws-cni plugin (the aws-node DaemonSet)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
