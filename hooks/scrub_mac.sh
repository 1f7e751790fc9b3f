#!/bin/sh
# virt-sysprep --script: runs on the host inside virt-sysprep's own appliance session, with the guest's
# root filesystem (FUSE-mounted) as the current directory. Removes MAC pinning that virt-sysprep 1.48
# leaves on Debian-family guests: NetworkManager keyfiles (net-nmconn only handles Red Hat-family
# guests) and ifupdown's hwaddress. Must not fail on guests without these files.
for f in etc/NetworkManager/system-connections/*; do
  [ -f "$f" ] && sed -i -e '/^[[:space:]]*mac-address[[:space:]]*=/d' -e '/^[[:space:]]*cloned-mac-address[[:space:]]*=/d' "$f"
done
for f in etc/network/interfaces etc/network/interfaces.d/*; do
  [ -f "$f" ] && sed -i -e '/^[[:space:]]*hwaddress[[:space:]]/d' "$f"
done
exit 0
