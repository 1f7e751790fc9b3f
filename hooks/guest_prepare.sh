#!/bin/sh
# vmseal's first step of a seal, in the guest. virt-sysprep's customize step runs it (--run) inside its
# libguestfs appliance, chrooted into the guest's own filesystems, with the guest's own /bin/sh: a
# guest's absolute symlinks point into the guest itself, never to the hypervisor host (vmseal never
# runs anything over a guest's files on the host: no virt-sysprep `script` operation).
#
# 1. vmseal's Linux-only guard. virt-sysprep itself has already refused disks with no OS, several
#    OSes or an encryption key it does not have; this refuses anything that is not Linux.
# 2. Remove MAC pinning that virt-sysprep 1.48 leaves on Debian-family guests: NetworkManager keyfiles
#    (net-nmconn only handles Red Hat-family guests) and ifupdown's hwaddress.
# A refusal is one "vmseal-refused: <why>" line and exit 1: virt-sysprep then fails and prints it.
# What the guest is (os-release) is reported by the audit, the last step (guest_audit.sh).
if [ -d /Windows/System32 ] || [ -d /WINDOWS/system32 ] || [ -d /Windows/system32 ]; then
  echo "vmseal-refused: the guest is Windows: virt-sysprep seals Linux guests only"
  exit 1
fi
if [ ! -d /etc ] || { [ ! -f /etc/os-release ] && [ ! -f /usr/lib/os-release ]; }; then
  echo "vmseal-refused: no Linux system found on the VM's disks (no /etc/os-release): only Linux guests can be sealed"
  exit 1
fi
for f in /etc/NetworkManager/system-connections/*; do
  [ -f "$f" ] && sed -i -e '/^[[:space:]]*mac-address[[:space:]]*=/d' -e '/^[[:space:]]*cloned-mac-address[[:space:]]*=/d' "$f"
done
for f in /etc/network/interfaces /etc/network/interfaces.d/*; do
  [ -f "$f" ] && sed -i -e '/^[[:space:]]*hwaddress[[:space:]]/d' "$f"
done
exit 0
