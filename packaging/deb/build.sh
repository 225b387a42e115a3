#!/bin/sh
# packaging/deb/build.sh BUILD_DIR OUT_DIR [--strip] [--fast]
#
# Builds airlock_VERSION_ARCH.deb in OUT_DIR from an already built cmake
# tree (`make deb` passes a Release build; the integration test its own
# build) with dpkg-deb only: no debhelper, no network. The tree is staged
# with `cmake --install BUILD_DIR --prefix /usr` (cmake/Install.cmake), the
# maintainer scripts and conffiles come from this folder, Depends from the
# Debian packages that hold the libraries the binary links (ldd + dpkg -S,
# at least the versions installed here). Prints the .deb's path last.
#   --strip  strip the binary (cmake --install --strip)
#   --fast   gzip -1 instead of xz (tests)
set -eu

[ $# -ge 2 ] || { echo "usage: $0 BUILD_DIR OUT_DIR [--strip] [--fast]" >&2; exit 2; }
build=$1
out=$2
shift 2
strip=""
comp="-Zxz"
for a in "$@"; do
    case "$a" in
    --strip) strip="--strip" ;;
    --fast) comp="-Zgzip -z1" ;;
    *) echo "$0: unknown option $a" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/airlock-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM

DESTDIR="$stage/root" cmake --install "$build" --prefix /usr $strip >"$stage/install.log" ||
    { cat "$stage/install.log" >&2; exit 1; }
bin="$stage/root/usr/bin/airlock"
[ -x "$bin" ] || { echo "$0: $bin missing after cmake --install" >&2; exit 1; }

version=$("$bin" version | awk '{print $2}')
arch=$(dpkg --print-architecture)

# Depends: the package of every shared library the binary names (DT_NEEDED;
# theirs come with their packages' own Depends).
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
deps=""
for lib in $(ldd "$bin" | awk -v n=" $(echo $needed) " \
        '$2 == "=>" && $3 ~ /^\// && index(n, " " $1 " ") {print $3}'); do
    pkg=""
    for p in "$lib" "$(readlink -f "$lib")" "/usr$lib"; do
        pkg=$(dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$pkg" ] && break
    done
    [ -n "$pkg" ] || { echo "$0: no Debian package holds $lib" >&2; exit 1; }
    case " $deps " in *" $pkg "*) continue ;; esac
    deps="$deps $pkg"
done
depends=""
for pkg in $(echo $deps | tr ' ' '\n' | sort -u); do
    v=$(dpkg-query -W -f='${Version}' "$pkg")
    depends="${depends:+$depends, }$pkg (>= $v)"
done
depends="$depends, passwd"

mkdir -p "$stage/root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage/root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@SIZE@|$size|" \
    -e "s|@DEPENDS@|$depends|" "$here/control.in" >"$stage/root/DEBIAN/control"
cp "$here/conffiles" "$stage/root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
    install -m 0755 "$here/$s" "$stage/root/DEBIAN/$s"
done
chmod 0755 "$stage/root" "$stage/root/DEBIAN"
find "$stage/root" -type d -exec chmod 0755 {} +

deb="$out/airlock_${version}_${arch}.deb"
# shellcheck disable=SC2086
dpkg-deb --root-owner-group $comp --build "$stage/root" "$deb" >/dev/null
echo "$deb"
