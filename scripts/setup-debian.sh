#!/usr/bin/env bash
# Installs the Debian packages named on the command line, idempotently:
#   bash scripts/setup-debian.sh libxen-dev gcc qemu-utils libnbd-bin fio
# Each package is checked with `dpkg -s` first; only when some are missing does it
# run `apt-get update` (once) and `apt-get install -y --no-install-recommends` for
# the missing ones — as root, or through `sudo -n` when that works without a
# password. Otherwise it prints one line naming what is missing and exits 1.
# Quiet when everything is already installed.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: bash scripts/setup-debian.sh PKG..." >&2
  exit 2
fi

missing=()
for pkg in "$@"; do
  # `dpkg -s` also succeeds for a removed package whose config files remain, so
  # check its Status line, not just its exit code.
  if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed$'; then
    missing+=("$pkg")
  fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-debian: missing Debian packages: ${missing[*]} (no apt-get on this machine; install them by hand)" >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "setup-debian: missing Debian packages: ${missing[*]} (not root and no passwordless sudo; run: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

echo "setup-debian: installing ${missing[*]}" >&2
# apt's chatter goes to a log that is shown only if the install fails.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >"$log" 2>&1 \
  || ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
       apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
  cat "$log" >&2
  echo "setup-debian: apt-get failed to install: ${missing[*]}" >&2
  exit 1
fi
