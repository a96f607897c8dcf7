# syntax=docker/dockerfile:1
#
# btrfs-csi driver image: the Python package and what it needs at run time, nothing else.
#   docker build -t btrfs-csi:dev .
#
# Runtime needs:
#   - mount/umount/losetup and findmnt/blkid: the `mount` and `util-linux` packages, both part of
#     every Debian base (required/essential), so nothing to install.
#   - btrfs-progs: mkfs.btrfs for the chart's pool.mode=loopfile init container, which formats a
#     fresh test pool with this same image, and `btrfs receive` for a snapshot streamed from another
#     node (a restore or clone across nodes). Everything else goes through the kernel's ioctls.
#   - setpriv (util-linux, required/essential): the receive process dies with the driver.
#
# Pin the base by digest for reproducible builds, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11-slim-trixie@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/btrfs-csi
WORKDIR /src
# The whole build context (.dockerignore keeps tests, charts, caches and the venv out); the
# generated gRPC stubs are committed under csi/pb, so no protoc step is needed.
COPY . .
RUN /opt/btrfs-csi/bin/pip install . \
 && /opt/btrfs-csi/bin/btrfs-csi --help >/dev/null

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="btrfs-csi" \
      org.opencontainers.image.description="Kubernetes CSI driver for node-local volumes on btrfs subvolumes, snapshots and qgroups" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# The Debian packages are listed in image-packages.txt (shared with the e2e image builder).
COPY image-packages.txt /tmp/image-packages.txt
RUN apt-get update \
 && sed 's/#.*//' /tmp/image-packages.txt | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/image-packages.txt

COPY --from=build /opt/btrfs-csi /opt/btrfs-csi
ENV PATH=/opt/btrfs-csi/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Runs as root, on purpose. A CSI node plugin mounts: NodePublishVolume bind-mounts subvolumes
# into the kubelet's pod directories, which needs CAP_SYS_ADMIN in the host's mount namespace
# (via Bidirectional propagation, which Kubernetes only grants privileged containers), and it
# creates, snapshots and limits subvolumes with btrfs ioctls (subvolume delete and qgroup control
# also need CAP_SYS_ADMIN). A non-root user would need those capabilities back anyway, and the
# pool and kubelet directories are root-owned. The chart keeps the privilege in this one
# container: the sidecars run unprivileged with all capabilities dropped.
USER 0:0
ENTRYPOINT ["btrfs-csi"]
CMD ["--help"]
