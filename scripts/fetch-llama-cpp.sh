#!/usr/bin/env bash
# Fetches llama.cpp as node-llama-cpp ships it (prebuilt CPU binaries) into an isolated cache folder, never into the
# project's node_modules: `bench engine --vs llama.cpp` and tests/bench/gguf.test.ts drive it from a child process.
#
# @node-llama-cpp/linux-x64 holds only shared libraries (libllama, libggml-*) and the N-API addon llama-addon.node,
# no llama-cli/llama-bench executables, so the node-llama-cpp JS package is installed beside it (install scripts
# off, optional GPU packages omitted) to drive the addon.
#
# Usage: scripts/fetch-llama-cpp.sh [DEST]    (default: .kvfleet-cache/llama-cpp-$VERSION in the repo root)
# Env:   NODE_LLAMA_CPP_VERSION (default 3.22.1)
# Prints DEST on success. Idempotent: a complete DEST (marked by .complete) is reused. Safe to run concurrently.
set -euo pipefail

VERSION="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.kvfleet-cache/llama-cpp-$VERSION}"

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  echo "fetch-llama-cpp: only linux-x64 is supported (this host is $(uname -s)-$(uname -m))" >&2
  exit 2
fi
if [[ -f "$DEST/.complete" && "$(cat "$DEST/.complete")" == "$VERSION" ]]; then
  echo "$DEST"
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-llama-cpp: npm is not on PATH" >&2; exit 2; }

mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock"
flock 9
# another process may have finished while this one waited for the lock
if [[ -f "$DEST/.complete" && "$(cat "$DEST/.complete")" == "$VERSION" ]]; then
  echo "$DEST"
  exit 0
fi

TMP="$(mktemp -d "$DEST.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
fail() { echo "fetch-llama-cpp: $1 (npm registry: $(npm config get registry 2>/dev/null || echo '?'))" >&2; exit 3; }

mkdir -p "$TMP/pack" "$TMP/js"
( cd "$TMP/pack" && npm pack "@node-llama-cpp/linux-x64@$VERSION" --silent >"$TMP/pack.log" 2>&1 ) \
  || { cat "$TMP/pack.log" >&2; fail "could not download @node-llama-cpp/linux-x64@$VERSION"; }
echo '{"private": true}' >"$TMP/js/package.json"
npm install --prefix "$TMP/js" "node-llama-cpp@$VERSION" --ignore-scripts --omit=optional --no-save \
  --no-package-lock --no-audit --no-fund --loglevel=error >"$TMP/install.log" 2>&1 \
  || { cat "$TMP/install.log" >&2; fail "could not install node-llama-cpp@$VERSION"; }
mkdir -p "$TMP/js/node_modules/@node-llama-cpp/linux-x64"
tar -xzf "$TMP/pack/"node-llama-cpp-linux-x64-"$VERSION".tgz -C "$TMP/js/node_modules/@node-llama-cpp/linux-x64" --strip-components=1
[[ -f "$TMP/js/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node" ]] \
  || fail "@node-llama-cpp/linux-x64@$VERSION has no bins/linux-x64/llama-addon.node"
[[ -f "$TMP/js/node_modules/node-llama-cpp/dist/index.js" ]] || fail "node-llama-cpp@$VERSION has no dist/index.js"
echo "$VERSION" >"$TMP/js/.complete"

rm -rf "$DEST"
mv "$TMP/js" "$DEST"
echo "$DEST"
