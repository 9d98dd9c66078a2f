"""Facts about the running process that change speed but not results: the C heap allocator and
JAX's on-disk cache of compiled programs.

Compilation is most of a short run's time on a CPU, and every run of a sweep compiles the same
programs again. :func:`use_compile_cache` turns on JAX's persistent compilation cache (keyed by the
program, the compile options and the jax / XLA versions, so a stale entry is never used); the
quick start: 49 s cold, 25 s warm (experiments/benchmarks/compile_cache.py).

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
import os
import pathlib

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


def compile_cache_dir(setting: str, env=None) -> str | None:
    """The directory ``runtime.compile_cache`` names: None for 'off' (or ''); for 'auto'
    ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dimat_jax/xla`` (default
    ``~/.cache/dimat_jax/xla``); otherwise the setting itself."""
    env = os.environ if env is None else env
    if setting in ("", "off"):
        return None
    if setting != "auto":
        return setting
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return env["JAX_COMPILATION_CACHE_DIR"]
    base = env.get("XDG_CACHE_HOME") or str(pathlib.Path(env.get("HOME", "~")).expanduser() / ".cache")
    return str(pathlib.Path(base) / "dimat_jax" / "xla")


def use_compile_cache(setting: str) -> str | None:
    """Point JAX's persistent compilation cache at :func:`compile_cache_dir` (``setting``); return
    the directory, or None when off or when it cannot be created (then nothing changes). Programs
    that compile in under a second are not stored (JAX's default threshold)."""
    import jax
    path = compile_cache_dir(setting)
    if path is None:
        return None
    try:
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
    return path
