import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Many tests compile the same small programs (tiny end-to-end runs build fresh jitted closures);
# a session-local persistent compilation cache lets identical XLA programs compile once.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="dimat_jax_test_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
