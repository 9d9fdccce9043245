#!/usr/bin/env bash
# Build dist/jobworkerd_<version>_<arch>.deb from the working tree (committed or not) with debhelper,
# then check it with lintian. Run as root on Debian 12 (installs its build dependencies if missing).
#   scripts/build-deb.sh            build and lint (fails on lintian errors)
#   LINTIAN=0 scripts/build-deb.sh  build only
# The build runs in a staging copy (tracked and untracked-but-not-ignored files, packaging/debian
# as debian/), so the repository stays clean. Needs PyPI (pip fetches the pinned dependencies).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIST=${DIST:-$ROOT/dist}
cd "$ROOT"

"$ROOT/scripts/apt-need.sh" build-deb debhelper python3-venv dpkg-dev build-essential lintian

VERSION=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
STAGE=$(mktemp -d /tmp/jobworkerd-deb.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
SRC=$STAGE/jobworkerd-$VERSION
mkdir -p "$SRC"

# the working tree: tracked files that still exist plus untracked ones .gitignore does not exclude
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$SRC"
else
  tar --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./dist --exclude=./build --exclude='*.egg-info' \
      --exclude=__pycache__ -cf - . | tar -xf - -C "$SRC"
fi
rm -rf "$SRC/debian"
cp -a packaging/debian "$SRC/debian"
# pyproject names README.md as the long description; until it exists a stub lets the build run
[ -e "$SRC/README.md" ] || echo "# jobworkerd" > "$SRC/README.md"

# the package version follows pyproject.toml; add a changelog entry in the staging copy if needed
DEBVER=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
if [ "$DEBVER" != "$VERSION" ]; then
  echo "build-deb: pyproject version $VERSION, changelog $DEBVER: adding a changelog entry to the build copy"
  { printf 'jobworkerd (%s) unstable; urgency=medium\n\n  * Build of version %s.\n\n -- %s  %s\n\n' \
      "$VERSION" "$VERSION" "$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Maintainer)" "$(date -R)"
    cat "$SRC/debian/changelog"; } > "$SRC/debian/changelog.new"
  mv "$SRC/debian/changelog.new" "$SRC/debian/changelog"
fi

SECONDS=0
(cd "$SRC" && env -u VIRTUAL_ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc) > "$STAGE/build.log" 2>&1 || {
  tail -60 "$STAGE/build.log" >&2; echo "build-deb: dpkg-buildpackage failed (log above)" >&2; exit 1; }
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
DEB=jobworkerd_${VERSION}_${ARCH}.deb
mkdir -p "$DIST"
cp "$STAGE/$DEB" "$DIST/$DEB"
echo "build-deb: $DIST/$DEB ($(du -h "$DIST/$DEB" | cut -f1), ${SECONDS}s)"

if [ "${LINTIAN:-1}" != 0 ]; then
  # --fail-on error: warnings are reported but do not fail the build
  lintian --fail-on error "$DIST/$DEB" || { echo "build-deb: lintian found errors" >&2; exit 1; }
  echo "build-deb: lintian: no errors"
fi
