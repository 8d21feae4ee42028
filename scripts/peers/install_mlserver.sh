#!/usr/bin/env bash
# Install the MLServer remote peer (KServe V2 REST) for tiergate's v2-infer tier tests:
# a venv (default: <repo>/.venv-mlserver) with mlserver + mlserver-sklearn (~530 MB, all wheels,
# no compiling; pulls scipy, pandas, grpcio, gevent, opentelemetry, tritonclient...).
#
# scikit-learn is pinned to the version in the project's main venv (<repo>/.venv) when that venv
# has it, because a .joblib pickled by one scikit-learn release is not guaranteed to load in
# another: the model served by MLServer must be unpickled by the release that trained it.
# onnxruntime and tokenizers (for examples/remote_accurate's custom runtime, which serves the
# demo's ONNX accurate tier over V2) are pinned to the main venv's versions for the same reason.
#
# Idempotent: skipped when the right versions are already importable. Non-interactive, safe for
# CI. Prints how long it took.
#
# Start a model repository afterwards with:
#   .venv-mlserver/bin/mlserver start DIR      # DIR holds settings.json + model-settings.json
# (settings.json: "host": "127.0.0.1", "parallel_workers": 0, "metrics_endpoint": null, ports).
#
# Environment (all optional):
#   PYTHON             interpreter for the venv (default: python3; MLServer 1.7 needs 3.9-3.12)
#   MLSERVER_VENV      venv dir                 (default: <repo>/.venv-mlserver)
#   MLSERVER_VERSION   mlserver + mlserver-sklearn version (default: 1.7.1)
#   SKLEARN_VERSION    scikit-learn pin; "auto" = main venv's version (default), "" = unpinned
#   MLSERVER_FORCE=1   reinstall even if present
set -euo pipefail

log() { printf '[install_mlserver] %s\n' "$*"; }
die() { printf '[install_mlserver] ERROR: %s\n' "$*" >&2; exit 1; }

T0=$SECONDS
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${MLSERVER_VENV:-$ROOT/.venv-mlserver}"
VERSION="${MLSERVER_VERSION:-1.7.1}"
SKLEARN_VERSION="${SKLEARN_VERSION-auto}"
FORCE="${MLSERVER_FORCE:-0}"
VPY="$VENV/bin/python"
PIP_FLAGS=(--no-input --disable-pip-version-check --progress-bar off)

if [[ "$SKLEARN_VERSION" == auto ]]; then
    SKLEARN_VERSION=""
    if [[ -x "$ROOT/.venv/bin/python" ]]; then
        SKLEARN_VERSION="$("$ROOT/.venv/bin/python" -c 'import sklearn; print(sklearn.__version__)' 2>/dev/null || true)"
    fi
    if [[ -n "$SKLEARN_VERSION" ]]; then
        log "pinning scikit-learn==$SKLEARN_VERSION (the main venv's, so its .joblib files load)"
    else
        log "no scikit-learn in $ROOT/.venv: leaving scikit-learn unpinned"
    fi
fi

main_version() {  # a package's version in the main venv, or nothing
    [[ -x "$ROOT/.venv/bin/python" ]] || return 0
    "$ROOT/.venv/bin/python" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null || true
}
EXTRAS=()
for pkg in onnxruntime tokenizers; do
    v="$(main_version "$pkg")"
    EXTRAS+=("$pkg${v:+==$v}")
done

mlserver_ok() {
    "$VPY" - "$VERSION" "$SKLEARN_VERSION" "${EXTRAS[@]}" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import mlserver, mlserver_sklearn, sklearn, onnxruntime, tokenizers  # noqa: F401
ok = version("mlserver") == sys.argv[1] and version("mlserver-sklearn") == sys.argv[1]
if sys.argv[2]:
    ok = ok and sklearn.__version__ == sys.argv[2]
for req in sys.argv[3:]:
    name, _, pin = req.partition("==")
    ok = ok and (not pin or version(name) == pin)
sys.exit(0 if ok else 1)
EOF
}

if [[ "$FORCE" != 1 && -x "$VPY" ]] && mlserver_ok; then
    log "mlserver $VERSION already installed in $VENV: skipping"
else
    "$PYTHON" - <<'EOF' || die "MLServer $VERSION needs Python 3.9-3.12 (set PYTHON=...)"
import sys
sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)
EOF
    if [[ ! -x "$VPY" ]]; then
        log "creating venv $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    reqs=("mlserver==$VERSION" "mlserver-sklearn==$VERSION")
    [[ -n "$SKLEARN_VERSION" ]] && reqs+=("scikit-learn==$SKLEARN_VERSION")
    reqs+=("${EXTRAS[@]}")
    log "pip install ${reqs[*]} (~1 CPU-min, mostly wheel unpacking)"
    T1=$SECONDS
    "$VPY" -m pip install "${PIP_FLAGS[@]}" --quiet "${reqs[@]}"
    log "pip install done in $((SECONDS - T1))s"
    mlserver_ok || die "mlserver $VERSION not importable after install"
fi

"$VENV/bin/mlserver" --version >/dev/null || die "the mlserver CLI does not run"
log "$("$VPY" -c 'from importlib.metadata import version as v; print("mlserver", v("mlserver"), "| mlserver-sklearn", v("mlserver-sklearn"), "| scikit-learn", v("scikit-learn"), "| onnxruntime", v("onnxruntime"), "| tokenizers", v("tokenizers"))')"
log "done in $((SECONDS - T0))s"
log "MLSERVER_BIN=$VENV/bin/mlserver"
