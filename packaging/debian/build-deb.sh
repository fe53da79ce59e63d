#!/usr/bin/env bash
# Builds the cgp-helpers Debian package from a staged tree with dpkg-deb.
#
#   packaging/debian/build-deb.sh [--bin-dir DIR] [--out DIR] [--compress xz|gzip|zstd|none]
#
# Without --bin-dir it builds the release binaries first (cargo build
# --release); with it, it packages the binaries found in DIR (the test uses
# the debug build). The .deb lands in --out (default target/debian) and its
# path is printed on stdout. --compress is dpkg-deb's -Z (default xz; the
# test uses gzip, which is many times faster on debug binaries).
#
# Why not cargo-deb: it is not packaged in Debian and `cargo install
# cargo-deb` compiles for minutes on every fresh CI machine; the staged tree
# below is what cargo-deb would produce (files, modes, control, md5sums,
# maintainer scripts), built with dpkg-deb which every Debian has.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
bins=(cgp-auth cgp-filter cgp-banner cgp-balancer cgp-helper-sim)

bin_dir="" out="$top/target/debian" compress=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$bin_dir" ]; then
  (cd "$top" && cargo build --release --quiet $(printf -- '-p %s ' "${bins[@]}" cgp-manpages))
  bin_dir="${CARGO_TARGET_DIR:-$top/target}/release"
fi
for b in "${bins[@]}" cgp-manpages; do
  [ -x "$bin_dir/$b" ] || { echo "build-deb.sh: $bin_dir/$b is not built" >&2; exit 1; }
done

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$top/Cargo.toml")"
debversion="$version-1"
# Reproducible: file times and the changelog date come from the last commit.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}"
arch="$(dpkg --print-architecture)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/cgp-helpers"
doc="$root/usr/share/doc/cgp-helpers"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" "$doc/examples"

for b in "${bins[@]}"; do
  install -m 0755 "$bin_dir/$b" "$root/usr/bin/$b"
  strip --strip-unneeded "$root/usr/bin/$b"
done

# Man pages: from the binaries' clap definitions, plus the sim's own page.
"$bin_dir/cgp-manpages" "$stage/man" "$top/packaging/examples" >/dev/null
for page in "$stage"/man/*.1; do
  gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
chmod 0644 "$root"/usr/share/man/man1/*

# Examples: whatever the helper engineers have written at build time.
shopt -s nullglob
for f in "$top"/packaging/examples/*.toml; do
  install -m 0644 "$f" "$doc/examples/"
done
# The guides: deployment, troubleshooting, soak and each helper's page.
for f in "$top"/docs/*.md; do
  install -m 0644 "$f" "$doc/"
done
shopt -u nullglob
install -m 0644 "$here/copyright" "$doc/copyright"
install -D -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/cgp-helpers"
sed "s/@VERSION@/$debversion/; s/@DATE@/$(date -R -d "@$SOURCE_DATE_EPOCH")/" \
  "$here/changelog.in" | gzip -9n >"$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"

# Configuration, state and log directories. Their group and final modes are
# set by postinst once the cgp-helpers group exists; here they start closed.
install -d -m 0750 "$root/etc/cgp-helpers"
install -d -m 0750 "$root/var/lib/cgp-helpers" "$root/var/log/cgp-helpers"
install -d -m 0755 "$root/etc/logrotate.d"
install -m 0644 "$top/packaging/etc/logrotate.d/cgp-helpers" "$root/etc/logrotate.d/cgp-helpers"

# Depends: from the shared libraries the binaries really link, so the
# package never claims less than it needs.
libs="$(for b in "${bins[@]}"; do objdump -p "$root/usr/bin/$b" | awk '$1 == "NEEDED" { print $2 }'; done | sort -u)"
glibc="$(for b in "${bins[@]}"; do objdump -T "$root/usr/bin/$b"; done | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
depends="libc6 (>= $glibc)"
for l in $libs; do
  case "$l" in
    libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|librt.so.1|ld-linux*) ;;
    libgcc_s.so.1) depends="$depends, libgcc-s1" ;;
    *) echo "build-deb.sh: no Debian package known for $l" >&2; exit 1 ;;
  esac
done
depends="$depends, passwd"

install -m 0755 "$here/postinst" "$here/postrm" "$root/DEBIAN/"
printf '/etc/logrotate.d/cgp-helpers\n' >"$root/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$debversion/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@SIZE@/$size/" "$here/control.in" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/cgp-helpers_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group "-Z$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
