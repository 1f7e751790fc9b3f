#!/bin/sh
# virt-sysprep --script: runs on the host inside virt-sysprep's own appliance session (no extra
# launch), with the guest's root filesystem FUSE-mounted as the current directory.
#
# 1. vmseal's Linux-only guard. virt-sysprep itself has already refused disks with no OS, several
#    OSes or an encryption key it does not have; this refuses anything that is not Linux.
# 2. Report what the guest is (one "vmseal-guest {json}" line, read by the app).
# 3. Remove MAC pinning that virt-sysprep 1.48 leaves on Debian-family guests: NetworkManager keyfiles
#    (net-nmconn only handles Red Hat-family guests) and ifupdown's hwaddress.
if [ -d Windows/System32 ] || [ -d WINDOWS/system32 ] || [ -d Windows/system32 ]; then
  echo "vmseal-refused: the guest is Windows: virt-sysprep seals Linux guests only" >&2
  exit 1
fi
release=""
for f in etc/os-release usr/lib/os-release; do
  if [ -f "$f" ]; then release="$f"; break; fi
done
if [ -z "$release" ] || [ ! -d etc ]; then
  echo "vmseal-refused: no Linux system found on the VM's disks (no /etc/os-release): only Linux guests can be sealed" >&2
  exit 1
fi
field() { sed -n "s/^$1=//p" "$release" | head -n 1 | tr -d '"\\' | tr -cd '[:print:]'; }
printf 'vmseal-guest {"id": "%s", "version_id": "%s", "pretty_name": "%s"}\n' \
  "$(field ID)" "$(field VERSION_ID)" "$(field PRETTY_NAME)"
for f in etc/NetworkManager/system-connections/*; do
  [ -f "$f" ] && sed -i -e '/^[[:space:]]*mac-address[[:space:]]*=/d' -e '/^[[:space:]]*cloned-mac-address[[:space:]]*=/d' "$f"
done
for f in etc/network/interfaces etc/network/interfaces.d/*; do
  [ -f "$f" ] && sed -i -e '/^[[:space:]]*hwaddress[[:space:]]/d' "$f"
done
exit 0
