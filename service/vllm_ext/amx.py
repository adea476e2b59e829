"""Permission for Intel AMX tile instructions, which vLLM's CPU attention uses but never asks for.

With bf16 weights and a KV block size that is a multiple of 32, vLLM's CPU attention kernel
uses AMX. Linux lets a process execute AMX instructions only after it asked once with
`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; otherwise the first AMX instruction kills
the process with SIGILL. oneDNN asks only when it picks an AMX matmul (larger batches), so a
vLLM worker whose first batch is tiny dies ("Illegal instruction"), one whose first batch is
larger survives. The permission is per process: inherited by `fork`, reset by `exec` (vLLM's CPU
workers are started with `spawn`), so every process that runs attention has to ask itself.

`request_amx_permission()` asks; it is a no-op returning False on anything but Linux on x86-64,
and never raises. Importing `service.vllm_ext.scheduler` calls it (the process that builds the
scheduler); `register` is the hook for vLLM's `vllm.general_plugins` entry point group, which
vLLM loads in every process it starts, model workers included (docs/vllm.md, "AMX"). No vLLM
import here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

SYS_ARCH_PRCTL = 158  # x86-64 syscall number
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def _supported_platform() -> bool:
    return sys.platform == "linux" and platform.machine().lower() in {"x86_64", "amd64"}


def _syscall(*args: int | ctypes.c_void_p) -> int | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(*args))
    except (OSError, AttributeError, TypeError, ValueError):
        return None


def request_amx_permission() -> bool:
    """Ask the kernel to let this process use AMX tiles; True when it may (now or already).

    Safe everywhere: False on other systems or CPUs, or when the kernel refuses (no AMX, an
    old kernel); idempotent."""
    if not _supported_platform():
        return False
    return _syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0


def amx_permitted() -> bool:
    """Whether this process may execute AMX tile instructions now."""
    if not _supported_platform():
        return False
    mask = ctypes.c_uint64(0)
    rc = _syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.c_void_p(ctypes.addressof(mask)))
    return rc == 0 and bool(mask.value & (1 << XFEATURE_XTILEDATA))


def register() -> None:
    """vLLM general plugin (`vllm.general_plugins` entry point): runs in every vLLM process.

    Logs one line per process on x86-64 Linux through vLLM's "vllm" logger."""
    if not _supported_platform():
        return
    granted = request_amx_permission()
    logging.getLogger("vllm.kvsched").info(
        "kvsched: AMX tile permission for process %d: %s",
        os.getpid(),
        "granted" if granted else "not available",
    )
