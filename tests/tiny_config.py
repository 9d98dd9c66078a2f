"""The one test-sized run configuration shared by the in-process end-to-end tests."""
from dimat_jax.config import get_default_config, set_key

# 3 CNN agents of width 0.25, 1 pre-training epoch, 2 rounds of 1 local epoch of 2 steps of batch 16,
# one merge batch of 32, no progress bars or plots; vmap compiles once whatever N (the unrolled
# default is covered by test_agents).
TINY = dict(width=0.25, num_agents=3, pretrain_epochs=1, rounds=2, local_epochs=1, batch_size=16,
            data__steps_per_epoch=2, merge__batch_size=32, merge__num_batches=1, log__progress=False,
            log__plot=False, agents__strategy="vmap")


def override(config, **kw):
    """Set ``config.a.b = v`` for every keyword ``a__b=v``; returns ``config``."""
    for key, value in kw.items():
        set_key(config, key.replace("__", "."), value)
    return config


def tiny_config(base=None, **kw):
    """``base`` (default: the default config) with :data:`TINY` and then ``kw`` applied (``a__b=v``
    sets ``a.b``)."""
    return override(base if base is not None else get_default_config(), **{**TINY, **kw})
