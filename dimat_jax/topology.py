"""Communication graphs and their mixing matrices Π (docs/algorithm.md §4).

Π[i, j] is the weight agent i gives to agent j's model; rows sum to 1. Every matrix is validated
(:func:`validate`) and summarised by ρ = ‖Π − 11ᵀ/N‖₂ and the spectral gap 1 − ρ.

Names: ``fc``, ``ring``, ``bipartite``, ``disconnected``, ``torus``, ``exponential``,
``erdos_renyi``, ``one_peer_exponential`` (time-varying) and ``file`` (a user's matrix).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np

from dimat_jax.choices import TOPOLOGIES  # noqa: F401  (re-exported)
from dimat_jax.choices import TOPOLOGY_ALIASES as ALIASES


class TopologyError(ValueError):
    """A graph or mixing matrix is impossible or invalid; the message says why and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """A (possibly time-varying) mixing matrix sequence: round t uses ``matrices[t % period]``."""
    name: str
    matrices: tuple  # of float64 [N, N]

    @property
    def num_agents(self) -> int:
        return self.matrices[0].shape[0]

    @property
    def period(self) -> int:
        return len(self.matrices)

    @property
    def time_varying(self) -> bool:
        return self.period > 1

    def matrix(self, t: int = 0) -> np.ndarray:
        return self.matrices[t % self.period]

    @property
    def symmetric(self) -> bool:
        return all(np.allclose(m, m.T, atol=1e-9) for m in self.matrices)

    def rho(self) -> float:
        """‖Π − 11ᵀ/N‖₂ (for time-varying graphs: of the product over one period)."""
        return spectral_norm_rho(self.period_product())

    def period_product(self) -> np.ndarray:
        out = np.eye(self.num_agents)
        for m in self.matrices:
            out = m @ out
        return out

    def summary(self) -> dict:
        rho = self.rho()
        degrees = [int((np.count_nonzero(m, axis=1) - (np.diag(m) != 0)).max()) for m in self.matrices]
        return {"topology": self.name, "num_agents": self.num_agents, "time_varying": self.time_varying,
                "period": self.period, "rho": rho, "spectral_gap": 1.0 - rho, "max_degree": max(degrees),
                "symmetric": self.symmetric}


def spectral_norm_rho(w: np.ndarray) -> float:
    n = w.shape[0]
    return float(np.linalg.norm(w - np.full((n, n), 1.0 / n), 2))


# ----------------------------------------------------------------------------------- builders
def fully_connected(n: int) -> np.ndarray:
    return np.full((n, n), 1.0 / n)


def ring(n: int) -> np.ndarray:
    """1/3 to self and to each of the two neighbours. N = 2: one edge, weights 1/2 (the reference's
    2-agent "ring" has rows summing to 2/3, a bug); N = 1: [[1]]."""
    if n <= 2:
        return fully_connected(n)
    w = np.zeros((n, n))
    for i in range(n):
        for j in (i - 1, i, i + 1):
            w[i, j % n] = 1.0 / 3.0
    return w


def bipartite(n: int) -> np.ndarray:
    """The reference's hub graph: leaves 0..N−3 each link to hubs N−2 and N−1.

    Leaf-hub weight a = ⌊100/(N−1)⌋/100; leaf self-weight 1 − 2a; hub self-weight 1 − (N−2)a.
    """
    if n < 3:
        raise TopologyError(f"topology 'bipartite' needs num_agents >= 3 (two hubs and a leaf), got {n}")
    a = math.floor(100 / (n - 1)) / 100
    w = np.zeros((n, n))
    hubs = (n - 2, n - 1)
    for leaf in range(n - 2):
        w[leaf, leaf] = 1 - 2 * a
        for h in hubs:
            w[leaf, h] = w[h, leaf] = a
    for h in hubs:
        w[h, h] = 1 - (n - 2) * a
    return w


def disconnected(n: int) -> np.ndarray:
    return np.eye(n)


def uniform_neighbourhood(adjacency: np.ndarray) -> np.ndarray:
    """Π = (A + I) / (deg + 1) for a regular graph (symmetric, doubly stochastic)."""
    a = (adjacency > 0).astype(float)
    np.fill_diagonal(a, 0)
    deg = a.sum(1)
    if not np.all(deg == deg[0]):
        return metropolis_hastings(a)
    return (a + np.eye(len(a))) / (deg[0] + 1)


def metropolis_hastings(adjacency: np.ndarray) -> np.ndarray:
    """w_ij = 1 / (1 + max(d_i, d_j)) on edges, w_ii = 1 − Σ_j w_ij: symmetric, doubly stochastic."""
    a = (adjacency > 0).astype(float)
    np.fill_diagonal(a, 0)
    deg = a.sum(1)
    w = np.where(a > 0, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(1))
    return w


def torus_shape(n: int, rows: int = 0) -> tuple[int, int]:
    if rows <= 0:
        rows = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    if n % rows:
        raise TopologyError(f"graph.torus_rows = {rows} does not divide num_agents = {n}")
    return rows, n // rows


def torus(n: int, rows: int = 0) -> np.ndarray:
    """2-D torus r x c (r = the largest divisor of N not above √N unless given); 1/(deg+1) weights.
    A prime N gives a 1 x N torus, i.e. a ring."""
    r, c = torus_shape(n, rows)
    a = np.zeros((n, n))
    for i in range(r):
        for j in range(c):
            u = i * c + j
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                v = ((i + di) % r) * c + (j + dj) % c
                if v != u:
                    a[u, v] = 1
    return uniform_neighbourhood(a)


def exponential(n: int) -> np.ndarray:
    """Undirected exponential graph: i ~ i ± 2^k (mod N), k = 0..⌊log2(N−1)⌋; 1/(deg+1) weights."""
    a = np.zeros((n, n))
    if n > 1:
        for i in range(n):
            for k in range(int(math.floor(math.log2(n - 1))) + 1):
                for s in (1, -1):
                    j = (i + s * 2 ** k) % n
                    if j != i:
                        a[i, j] = 1
    return uniform_neighbourhood(a)


def erdos_renyi(n: int, p: float, seed: int, max_tries: int = 1000) -> np.ndarray:
    """Connected G(N, p) (redrawn until connected, seeded) with Metropolis–Hastings weights."""
    if not 0 < p <= 1:
        raise TopologyError(f"graph.edge_probability must be in (0, 1], got {p}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE7]))
    for _ in range(max_tries):
        upper = np.triu(rng.random((n, n)) < p, 1)
        a = (upper | upper.T).astype(float)
        if n == 1 or is_connected(a):
            return metropolis_hastings(a)
    raise TopologyError(f"no connected Erdős–Rényi graph with N = {n}, p = {p} in {max_tries} draws; "
                        "raise graph.edge_probability")


def one_peer_exponential(n: int) -> tuple:
    """Time-varying one-peer exponential graph: at round t every agent i averages (weights 1/2) with
    agent i − 2^(t mod τ), τ = ⌈log2 N⌉. Each matrix is doubly stochastic but not symmetric; for N a
    power of two the product over one period is exact averaging."""
    if n == 1:
        return (np.eye(1),)
    tau = max(1, math.ceil(math.log2(n)))
    mats = []
    for k in range(tau):
        w = 0.5 * np.eye(n)
        for i in range(n):
            w[i, (i - 2 ** k) % n] += 0.5
        mats.append(w)
    return tuple(mats)


def from_file(path: str) -> np.ndarray:
    """A mixing matrix from ``.npy`` or a text file (whitespace/comma separated rows)."""
    if not path:
        raise TopologyError("topology 'file' needs --config.topology_path=/path/to/matrix (.npy, .txt or .csv)")
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        raise TopologyError(f"topology_path {str(p)!r} is a directory; give the matrix file (.npy, .txt or .csv)")
    if not p.is_file():
        raise TopologyError(f"topology_path {str(p)!r} does not exist")
    try:
        if p.suffix == ".npy":
            w = np.load(p, allow_pickle=False)
        else:
            w = np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
    except (OSError, ValueError) as e:
        raise TopologyError(f"cannot read a mixing matrix from {p}: {e}") from e
    return np.asarray(w, np.float64)


# ----------------------------------------------------------------------------------- validation
def is_connected(w: np.ndarray) -> bool:
    """Whether the directed graph of w's off-diagonal non-zeros is strongly connected."""
    n = w.shape[0]
    a = (np.abs(w) > 0)
    for adj in (a, a.T):
        seen, stack = {0}, [0]
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(adj[i]):
                if j not in seen:
                    seen.add(int(j))
                    stack.append(int(j))
        if len(seen) < n:
            return False
    return True


def validate(w, *, num_agents: int | None = None, require_symmetric: bool = False,
             require_doubly_stochastic: bool = False, require_column_stochastic: bool = False,
             require_connected: bool = True, atol: float = 1e-6, name: str = "mixing matrix") -> np.ndarray:
    """Check Π and return it as float64; raise :class:`TopologyError` naming the violated property.

    Row-stochastic (Π[i, j]: weight agent i gives agent j's model) unless ``require_column_stochastic``
    (push-sum: Π[i, j] is the share agent j sends to i; columns sum to 1, rows need not)."""
    w = np.asarray(w, np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise TopologyError(f"{name} must be square, got shape {w.shape}")
    n = w.shape[0]
    if num_agents is not None and n != num_agents:
        raise TopologyError(f"{name} is {n}x{n} but num_agents = {num_agents}")
    if not np.all(np.isfinite(w)):
        raise TopologyError(f"{name} has non-finite entries")
    if np.any(w < -atol):
        i, j = np.argwhere(w < -atol)[0]
        raise TopologyError(f"{name} has a negative weight {w[i, j]:.4g} at ({i}, {j}); weights must be >= 0")
    rows = w.sum(1)
    if not require_column_stochastic and not np.allclose(rows, 1.0, atol=atol):
        i = int(np.argmax(np.abs(rows - 1)))
        raise TopologyError(f"{name} is not row-stochastic: row {i} sums to {rows[i]:.6g} (must be 1)")
    if require_symmetric and not np.allclose(w, w.T, atol=atol):
        raise TopologyError(f"{name} must be symmetric for this algorithm (max |Π − Πᵀ| = "
                            f"{np.abs(w - w.T).max():.3g})")
    cols = w.sum(0)
    if require_column_stochastic and not np.allclose(cols, 1.0, atol=atol):
        j = int(np.argmax(np.abs(cols - 1)))
        raise TopologyError(f"{name} must be column-stochastic for push-sum: column {j} sums to {cols[j]:.6g}")
    if require_doubly_stochastic and not np.allclose(cols, 1.0, atol=atol):
        j = int(np.argmax(np.abs(cols - 1)))
        raise TopologyError(f"{name} must be doubly stochastic for this algorithm: column {j} sums to "
                            f"{cols[j]:.6g}")
    is_identity = np.allclose(w, np.eye(n), atol=atol)
    if require_connected and n > 1 and not is_identity and not is_connected(w):
        raise TopologyError(f"{name} describes a disconnected graph; agents in different components never "
                            "mix (use topology 'disconnected' for Π = I on purpose)")
    return np.clip(w, 0.0, None)


def build(name: str, num_agents: int, *, seed: int = 0, edge_probability: float = 0.5, torus_rows: int = 0,
          path: str = "", require_symmetric: bool = False, require_doubly_stochastic: bool = False,
          require_column_stochastic: bool = False) -> Topology:
    """Topology ``name`` for ``num_agents`` agents, validated."""
    name = ALIASES.get(name, name)
    n = num_agents
    if n < 1:
        raise TopologyError(f"num_agents must be >= 1, got {n}")
    if name == "fc":
        mats = (fully_connected(n),)
    elif name == "ring":
        mats = (ring(n),)
    elif name == "bipartite":
        mats = (bipartite(n),)
    elif name == "disconnected":
        mats = (disconnected(n),)
    elif name == "torus":
        mats = (torus(n, torus_rows),)
    elif name == "exponential":
        mats = (exponential(n),)
    elif name == "erdos_renyi":
        mats = (erdos_renyi(n, edge_probability, seed),)
    elif name == "one_peer_exponential":
        mats = one_peer_exponential(n)
    elif name == "file":
        mats = (from_file(path),)
    else:
        raise TopologyError(f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    checked = tuple(validate(m, num_agents=n, require_symmetric=require_symmetric,
                             require_doubly_stochastic=require_doubly_stochastic,
                             require_column_stochastic=require_column_stochastic,
                             require_connected=len(mats) == 1, name=f"topology {name!r} (round {t})"
                             if len(mats) > 1 else f"topology {name!r}") for t, m in enumerate(mats))
    topo = Topology(name=name, matrices=checked)
    if topo.time_varying and n > 1 and not is_connected(sum(checked)):
        raise TopologyError(f"topology {name!r}: the union of its graphs over one period is disconnected")
    return topo


def drop_edges(w: np.ndarray, edge_fraction: float = 1.0, straggler_prob: float = 0.0,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """A partial round of Π: every undirected edge {i, j} is kept with probability ``edge_fraction``
    and every agent misses the round with probability ``straggler_prob`` (all its edges dropped).
    A dropped edge's weights go to the two diagonals (Π_ii += Π_ij, Π_jj += Π_ji), so rows still sum
    to 1 and a symmetric Π stays symmetric, hence doubly stochastic. float64 [N, N]."""
    w = np.array(w, np.float64)
    rng = rng if rng is not None else np.random.default_rng()
    n = w.shape[0]
    missing = rng.random(n) < straggler_prob
    for i, j in zip(*np.nonzero(np.triu((w > 0) | (w.T > 0), 1))):
        if missing[i] or missing[j] or rng.random() >= edge_fraction:
            w[i, i] += w[i, j]
            w[j, j] += w[j, i]
            w[i, j] = w[j, i] = 0.0
    return w
