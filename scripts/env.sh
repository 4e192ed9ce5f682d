#!/usr/bin/env bash
# Source me: creates (once) and activates a cached venv keyed by a hash of the pins.
#   NLCORE_FLAVOR=cpu|cuda   (default cpu) — which requirements/<flavor>.txt to use
# The venv lives outside the clone, under ${NLCORE_CACHE:-$HOME/.cache/nlcore}.
# (no `set -e` here: this file is sourced and must not change the caller's shell options)
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_flavor="${NLCORE_FLAVOR:-cpu}"
_py="${NLCORE_PYTHON:-python3}"
_cache="${NLCORE_CACHE:-$HOME/.cache/nlcore}"
_hash=$(cat "$_root/requirements/$_flavor.txt" "$_root/requirements/nodeps.txt" \
        <("$_py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)
NLCORE_VENV="$_cache/venv-$_flavor-$_hash"
if [ ! -f "$NLCORE_VENV/.complete" ]; then
  echo "[nlcore] creating $NLCORE_VENV (once; cached by a hash of the pins)" >&2
  rm -rf "$NLCORE_VENV"; mkdir -p "$_cache"
  { "$_py" -m venv "$NLCORE_VENV" \
    && "$NLCORE_VENV/bin/python" -m pip install -q --upgrade pip \
    && "$NLCORE_VENV/bin/python" -m pip install -q -r "$_root/requirements/$_flavor.txt" \
    && "$NLCORE_VENV/bin/python" -m pip install -q --no-deps -r "$_root/requirements/nodeps.txt" \
    && touch "$NLCORE_VENV/.complete"; } 2>&1 | { grep -v "^WARNING: Location 'file:" >&2 || true; }
  if [ ! -f "$NLCORE_VENV/.complete" ]; then
    echo "[nlcore] could not create $NLCORE_VENV" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
export NLCORE_VENV
export PATH="$NLCORE_VENV/bin:$PATH"
export VIRTUAL_ENV="$NLCORE_VENV"
