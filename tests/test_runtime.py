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
