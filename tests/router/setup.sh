#!/usr/bin/env bash
# The router tier's LiteLLM proxy: requirements.txt beside this script (one exact LiteLLM release, every package
# pinned with its hashes) installed with --require-hashes into a venv of its own, never ComfyUI's or the tests'.
# Idempotent: a finished venv for the same requirements is reused (about 2 minutes the first time).
#
#   tests/router/setup.sh            -> builds if needed, prints `export LITELLM_BIN=<venv>/bin/litellm`
#   tests/router/setup.sh --cached   -> prints it only if already built; else exit 3, builds nothing
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
stamp=$(sha256sum "$here/requirements.txt" | cut -c1-16)
venv="${LITELLM_VENV_DIR:-$HOME/.cache/lmstudio-router}/$stamp"
if [ -x "$venv/bin/litellm" ] && [ -f "$venv/.done" ]; then
  echo "export LITELLM_BIN=$venv/bin/litellm"; exit 0
fi
if [ "${1:-}" = "--cached" ]; then
  echo "router setup: no finished LiteLLM venv in $venv (run this script without --cached to build it)" >&2
  exit 3
fi
echo "router setup: installing LiteLLM's proxy into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$here/requirements.txt" >&2
touch "$venv/.done"
echo "export LITELLM_BIN=$venv/bin/litellm"
