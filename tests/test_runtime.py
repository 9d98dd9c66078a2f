"""The allocator probe reads /proc/self/maps; checked on hand-written maps and, where tcmalloc is
installed, on a real preloaded subprocess."""
import ctypes.util
import os
import subprocess
import sys

import pytest

from dimat_jax import runtime

GLIBC_MAPS = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
TC_MAPS = GLIBC_MAPS + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"


def test_malloc_in_use_from_maps():
    assert runtime.malloc_in_use(GLIBC_MAPS) == "glibc"
    assert runtime.malloc_in_use(TC_MAPS) == "tcmalloc"
    assert runtime.malloc_in_use(GLIBC_MAPS + "x /opt/lib/libjemalloc.so.2\n") == "jemalloc"


def test_hint_only_on_cpu_under_glibc_with_tcmalloc_installed():
    found = lambda name: "libtcmalloc_minimal.so.4" if name == "tcmalloc_minimal" else None
    hint = runtime.allocator_hint("cpu", GLIBC_MAPS, find=found)
    assert hint is not None and "LD_PRELOAD=libtcmalloc_minimal.so.4" in hint
    assert runtime.allocator_hint("gpu", GLIBC_MAPS, find=found) is None
    assert runtime.allocator_hint("cpu", TC_MAPS, find=found) is None
    assert runtime.allocator_hint("cpu", GLIBC_MAPS, find=lambda name: None) is None


@pytest.mark.skipif(not ctypes.util.find_library("tcmalloc_minimal"), reason="tcmalloc not installed")
def test_preloaded_tcmalloc_is_detected():
    env = dict(os.environ, LD_PRELOAD=ctypes.util.find_library("tcmalloc_minimal"))
    out = subprocess.run([sys.executable, "-c", "from dimat_jax import runtime; print(runtime.malloc_in_use())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "tcmalloc"


def test_compile_cache_dir_resolution():
    home = {"HOME": "/home/u"}
    assert runtime.compile_cache_dir("off", home) is None and runtime.compile_cache_dir("", home) is None
    assert runtime.compile_cache_dir("auto", home) == "/home/u/.cache/dimat_jax/xla"
    assert runtime.compile_cache_dir("auto", {**home, "XDG_CACHE_HOME": "/c"}) == "/c/dimat_jax/xla"
    assert runtime.compile_cache_dir("auto", {**home, "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"  # the user's wins
    assert runtime.compile_cache_dir("/data/xla", {**home, "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/data/xla"


def test_compile_cache_stores_and_reuses_a_program(tmp_path):
    """Two fresh processes compile the same program: the first writes the cache, the second reads it
    (JAX's own counters; the threshold lowered so that a small program is stored)."""
    code = (
        "import sys, jax, jax.numpy as jnp\n"
        "from jax import monitoring\n"
        "from dimat_jax import runtime\n"
        "seen = []\n"
        "monitoring.register_event_listener(lambda e, **k: seen.append(e))\n"
        "assert runtime.use_compile_cache(sys.argv[1]) == sys.argv[1]\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8))).block_until_ready()\n"
        "print(seen.count('/jax/compilation_cache/cache_hits'), seen.count('/jax/compilation_cache/cache_misses'))\n")
    cache = tmp_path / "xla"
    runs = [subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    (hits1, misses1), (hits2, misses2) = [tuple(map(int, r.stdout.split())) for r in runs]
    assert hits1 == 0 and misses1 >= 1 and hits2 >= 1 and any(cache.iterdir())


def test_compile_cache_off_leaves_jax_alone(tmp_path, monkeypatch):
    import jax
    before = jax.config.jax_compilation_cache_dir
    assert runtime.use_compile_cache("off") is None and jax.config.jax_compilation_cache_dir == before
