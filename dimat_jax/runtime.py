"""Facts about the running process that change speed but not results: the C heap allocator.

XLA:CPU allocates its temporary buffers afresh on every execution of a jitted step, and glibc's
malloc serves that pattern badly: large blocks go back to the kernel when freed, so every training
step page-faults them in again (ResNet-20 w=1, batch 128: ~76k minor faults per agent per step).
tcmalloc keeps the memory: measured 4-17 % more images/s on a 2-core CPU, and the 10-agent
``unrolled`` step back from 0.89x to 1.01x of separate steps (README, "Agents and execution
strategies"). Preloading it is a launch-time choice:
``LD_PRELOAD=libtcmalloc_minimal.so.4 python -m dimat_jax.main ...``.
"""
from __future__ import annotations

import ctypes.util

KNOWN = ("tcmalloc", "jemalloc", "mimalloc")


def malloc_in_use(maps: str | None = None) -> str:
    """'tcmalloc', 'jemalloc', 'mimalloc' or 'glibc' (read from ``/proc/self/maps`` unless ``maps``
    is given); 'unknown' where that file does not exist (macOS, Windows)."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:
            return "unknown"
    for name in KNOWN:
        if f"/lib{name}" in maps:
            return name
    return "glibc"


def allocator_hint(backend: str, maps: str | None = None, find=ctypes.util.find_library) -> str | None:
    """A one-line tip when running on CPU under glibc malloc while tcmalloc is installed, else None."""
    if backend != "cpu" or malloc_in_use(maps) != "glibc":
        return None
    lib = find("tcmalloc_minimal") or find("tcmalloc")
    if not lib:
        return None
    return (f"tip: XLA:CPU steps run faster with tcmalloc, which is installed here: "
            f"LD_PRELOAD={lib} python -m dimat_jax.main ... (measurements: README, Benchmarks)")
