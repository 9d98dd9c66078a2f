"""Every named choice of the configuration, in one dependency-free place.

The config schema (``config.py``) checks values against these; the implementations import them from
here, so a name is declared once. Nothing here imports JAX, NumPy or any other part of the package.
"""

# --- data
TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist")
DATASETS = ("digits",) + TFDS_NAMES + ("tiny_imagenet", "npz")
IDX_NAMES = ("mnist", "fashion_mnist")  # also read from a folder of IDX files (data_path)
# (height, width) and class count of the datasets that fix them (npz: whatever the file holds)
IMAGE_SIZES = {"digits": (8, 8), "mnist": (28, 28), "fashion_mnist": (28, 28), "cifar10": (32, 32),
               "cifar100": (32, 32), "tiny_imagenet": (64, 64)}
NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "tiny_imagenet": 200}
PARTITIONS = ("iid", "noniid", "iid_shuffled", "k_classes", "shards", "dirichlet")
AUGMENTATIONS = ("auto", "none", "crop", "flip", "crop_flip")
NORMALIZATIONS = ("dataset", "reference")

# --- models
MODELS = ("cnn", "resnet20", "vgg16")
VGG_MIN_INPUT_SIZE = 32  # five 2x2 max-pools
FILTER_GRADS = ("auto", "xla", "taps")

# --- agents and optimizers
STRATEGIES = ("auto", "vmap", "unrolled", "map", "chunked")
OPTIMIZERS = ("sgd", "msgd", "adam")
OPTIMIZER_ALIASES = {"momentum": "msgd", "sgdm": "msgd"}

# --- algorithms
ALGORITHMS = ("dimat", "wa", "wm", "cdsgd", "cdmsgd", "sgp", "sgp_pushsum", "cga", "swarmsgd", "local", "centralized")
MERGE_FAMILY = {"dimat": "activation", "wa": "identity", "wm": "weight"}  # algorithm -> matcher
GOSSIP_FAMILY = ("cdsgd", "cdmsgd", "sgp", "sgp_pushsum", "cga")
SWARM_VARIANTS = ("reference", "uniform_edge")
MERGE_DATA = ("local", "global")
MERGE_BASES = ("own", "shared")            # merge.basis
REMATCH = ("always", "adaptive")           # merge.rematch
COMPRESSIONS = ("none", "bf16", "int8", "topk")  # merge.compression
# What each communicating algorithm requires of its mixing matrix (keyword arguments of
# topology.build); local and centralized ignore the topology.
TOPOLOGY_NEEDS = {
    "dimat": {}, "wa": {}, "wm": {},
    "cdsgd": {"require_doubly_stochastic": True}, "cdmsgd": {"require_doubly_stochastic": True},
    "sgp": {"require_doubly_stochastic": True}, "cga": {"require_doubly_stochastic": True},
    "sgp_pushsum": {"require_column_stochastic": True},
    "swarmsgd": {},
}

# --- topologies
TOPOLOGIES = ("fc", "ring", "bipartite", "disconnected", "torus", "exponential", "erdos_renyi",
              "one_peer_exponential", "file")
TOPOLOGY_ALIASES = {"fully_connected": "fc", "complete": "fc", "none": "disconnected", "star_bipartite": "bipartite"}
