# syntax=docker/dockerfile:1
# The aws-cni image: ipamd (daemon, installer, probes) and aws-cni, plus the upstream CNI plugins and iptables, on
# distroless. Build from the repository root:  docker build -t aws-cni:0.1.0 .
#
#   build   Rust on Debian bookworm: ipamd (with the aws backend) and aws-cni, release, exactly Cargo.lock
#   debian  Debian bookworm: the upstream plugins (containernetworking-plugins) and iptables with what it loads
#   final   distroless cc on Debian 12 (bookworm's glibc, as the build): /app and iptables, no shell
#
# Layout of /app is what `ipamd install` expects next to its executable: aws-cni, 10-aws.conflist.tmpl and
# cni-plugins/. The DaemonSet (deploy/base/daemonset.yaml) runs /app/ipamd with run / install arguments.
#
# Not verified here (no container engine on the build machines): that the images and packages resolve, that the
# release build fits the builder, and the iptables staging below. deploy-check/tests/dockerfile.rs checks what can
# be checked statically.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# aws-sdk-ec2 makes this long (about 13 minutes and 8 GB of memory on 2 cores).
RUN cargo build --locked --release -p ipamd -p aws-cni --features ipamd/aws

FROM docker.io/library/debian:bookworm-slim AS debian
RUN apt-get update \
 && apt-get install -y --no-install-recommends containernetworking-plugins iptables nftables \
 && rm -rf /var/lib/apt/lists/*
# Stage into /out: the plugins `ipamd install` copies to the host, and the tools of ipamd's SNAT backends (`nft`,
# `iptables-nft*`, `iptables-legacy*`; ipamd picks one from what kube-proxy uses): `nft`, both iptables multi-call
# binaries (the nft one also under the plain names, the default of current EKS AMIs), the extensions, and every
# library they load except glibc's own, which distroless has.
RUN set -eu; \
    mkdir -p /out/cni-plugins /out/usr/sbin; \
    for p in portmap loopback host-local bandwidth tuning; do cp /usr/lib/cni/$p /out/cni-plugins/; done; \
    cp /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft /out/usr/sbin/; \
    for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
      ln -s xtables-nft-multi /out/usr/sbin/$n; \
    done; \
    for n in iptables ip6tables; do for s in "" -save -restore; do \
      ln -s xtables-nft-multi /out/usr/sbin/$n-nft$s; \
    done; done; \
    for n in iptables ip6tables; do for s in "" -save -restore; do \
      ln -s xtables-legacy-multi /out/usr/sbin/$n-legacy$s; \
    done; done; \
    xt=$(dirname "$(readlink -f /usr/lib/*/xtables/libxt_comment.so)"); \
    mkdir -p "/out$xt" && cp -a "$xt/." "/out$xt/"; \
    for f in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft "$xt"/*.so; do \
      ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'; \
    done | sort -u | while read -r lib; do \
      case "$(basename "$lib")" in libc.so*|libm.so*|ld-linux*|libpthread.so*|libdl.so*|librt.so*) continue;; esac; \
      real=$(readlink -f "$lib"); mkdir -p "/out$(dirname "$real")"; \
      cp "$real" "/out$(dirname "$real")/$(basename "$lib")"; \
    done

FROM gcr.io/distroless/cc-debian12 AS final
COPY --from=debian /out/usr/ /usr/
COPY --from=debian /out/cni-plugins/ /app/cni-plugins/
COPY --from=build /src/target/release/ipamd /src/target/release/aws-cni /app/
COPY deploy/10-aws.conflist.tmpl /app/10-aws.conflist.tmpl
WORKDIR /app
ENTRYPOINT ["/app/ipamd"]
CMD ["run"]
