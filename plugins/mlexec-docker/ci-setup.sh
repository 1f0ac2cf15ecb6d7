#!/usr/bin/env bash
# Prepare a bare Debian 12 machine (as root) for the mlexec-docker tests:
# a Docker engine from Debian, started detached, the offline base images the
# tests build on, and the registry binary the push tests start themselves.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail

BUSYBOX_IMAGE=mlexec-test/busybox:1
PYTHON_IMAGE=mlexec-test/python:3.11

log() { echo "mlexec-docker ci-setup: $*"; }

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The engine: no systemd here, so start dockerd ourselves, detached so it
# outlives this script.
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    setsid nohup dockerd >/tmp/dockerd.log 2>&1 </dev/null &
    for _ in $(seq 300); do
        docker info >/dev/null 2>&1 && break
        sleep 0.1
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not start:"; tail -n 30 /tmp/dockerd.log; exit 1; }
fi

# A busybox image for shell-only tests, from Debian's static busybox.
if ! docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
    log "building $BUSYBOX_IMAGE"
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$BUSYBOX_IMAGE" >/dev/null
    rm -rf "$root"
fi

# A Debian image with Python 3.11 for tests that run Python in the container.
if ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    log "building $PYTHON_IMAGE (mmdebstrap, ~1 min)"
    work=$(mktemp -d)
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs.tar"
    docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$PYTHON_IMAGE" >/dev/null
    rm -rf "$work"
fi

log "ready: $(docker version --format '{{.Server.Version}}') with $BUSYBOX_IMAGE and $PYTHON_IMAGE"
