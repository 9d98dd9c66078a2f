"""dimat_jax: DIMAT (Decentralized Iterative Merging-And-Training) and decentralized-learning
baselines for stacked agents in JAX/Flax."""

__version__ = "0.1.0"
