"""One of the processes of tests/test_multiprocess.py: python multiprocess_check.py <id> <port> <workdir> <algorithm>."""
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.pop("XLA_FLAGS", None)  # one CPU device per process

from dimat_jax import distributed  # noqa: E402

process_id, port, workdir, algorithm = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

from dimat_jax import train  # noqa: E402
from test_multiprocess import tiny  # noqa: E402

train.run(tiny(algorithm, mesh_devices=0), workdir, log=print)
print(f"process {process_id} done", flush=True)
