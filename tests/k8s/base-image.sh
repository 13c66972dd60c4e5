#!/usr/bin/env bash
# Makes sure podman has a local docker.io/library/debian:bookworm-slim to build FROM, without a
# registry: debootstrap --variant=minbase bookworm (Debian's mirror is the one network source
# here), tarred once into a cache folder and `podman import`ed. Later runs reuse the image in
# podman's storage, or re-import the cached tarball after storage was wiped.
#
#   base-image.sh CACHE_DIR       (CONTAINERS_CONF should already point at runc)
set -euo pipefail
cache="${1:?usage: base-image.sh CACHE_DIR}"
image=docker.io/library/debian:bookworm-slim
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 900 9   # one bootstrap at a time, whoever else runs this suite

if podman image exists "$image"; then
  echo "base image $image present"
  exit 0
fi
tarball="$cache/debian-bookworm-minbase.tar"
if [ ! -s "$tarball" ]; then
  root="$cache/rootfs.tmp"
  rm -rf "$root"
  echo "debootstrap --variant=minbase bookworm (cached in $cache)"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log"; exit 1; }
  # like the official slim image: no package lists or downloaded .debs
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
fi
podman import --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
echo "imported $image from $tarball"
