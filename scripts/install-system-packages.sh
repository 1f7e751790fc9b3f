#!/usr/bin/env bash
# Debian packages vmseal and its tests need (Debian 12). Idempotent: does nothing when all are there.
set -euo pipefail
PKGS=(
  libvirt-daemon-system libvirt-clients libxml2-utils libvirt-dev pkg-config gcc
  qemu-system-x86 qemu-utils
  libguestfs-tools python3-guestfs linux-image-amd64
  openssh-server openssh-client iproute2 util-linux e2fsprogs
  python3 python3-venv python3-dev openssl ntfs-3g busybox-static
  debootstrap genisoimage
  postgresql redis-server
  chromium
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
# No systemd here: the packages' daemons are not started by their install, and vmseal does not need
# them on this machine (test hosts start their own sshd, libvirtd and virtlogd in namespaces).
