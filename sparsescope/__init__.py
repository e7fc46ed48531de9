"""sparsescope: record, explain and harvest sparsity in transformer language models."""

__version__ = "0.1.0"

from sparsescope.models import load_model  # noqa: E402
from sparsescope.record import record  # noqa: E402
from sparsescope import levers, spiking  # noqa: E402,F401  (registers the built-in levers with intervene)
from sparsescope.kernels import linear as _sparse_lever  # noqa: E402,F401  (registers the `sparse` lever)

__all__ = ["__version__", "load_model", "record"]
