import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same small programs (tiny end-to-end runs build fresh jitted closures, and
# the CLI / notebook / multi-device tests start subprocesses). A session-local persistent
# compilation cache, passed to subprocesses through the environment, lets identical XLA programs
# compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="dimat_jax_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
