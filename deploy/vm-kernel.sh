#!/usr/bin/env bash
# Unpack a Debian kernel package, without installing it, for the VM lab:
#
#   bash deploy/vm-kernel.sh DIR [PACKAGE]
#
# PACKAGE is a kernel image package or a meta-package naming one (default:
# linux-image-6.12-cloud-amd64, Debian 12's newer cloud kernel). DIR gets
# the package's tree: DIR/boot/vmlinuz-RELEASE and DIR/lib/modules/RELEASE
# (compressed modules, no modules.dep: the lab runs depmod itself). Then:
#
#   faultlab run --lab vm --kernel DIR/boot/vmlinuz-RELEASE
#
# Prints the kernel's path. Needs apt's package lists (apt-get update).
set -euo pipefail
dir=${1:?usage: vm-kernel.sh DIR [PACKAGE]}
package=${2:-linux-image-6.12-cloud-amd64}
if compgen -G "$dir/boot/vmlinuz-*" >/dev/null; then
  ls "$dir"/boot/vmlinuz-*
  exit 0
fi
# A meta-package depends on the versioned image package. awk reads to the
# end: leaving early could kill apt-cache by SIGPIPE, failing under pipefail.
image=$(apt-cache depends "$package" 2>/dev/null \
  | awk '/Depends: linux-image-[0-9]/ && !found { print $2; found = 1 }')
image=${image:-$package}
if ! apt-cache show "$image" >/dev/null 2>&1; then
  echo "vm-kernel.sh: no package $image (run apt-get update first?)" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$image")
mkdir -p "$dir"
dpkg -x "$work"/*.deb "$dir"
ls "$dir"/boot/vmlinuz-*
