"""Weight sparsity statistics, training-free pruning masks, fake quantization and TEAL input thresholding.

Importing this package registers the levers ``prune``, ``quant``, ``act_quant`` and ``teal`` with ``intervene``.
"""

from sparsescope.weights.levers import global_magnitude_plan, parse_nm
from sparsescope.weights.prune import (
    global_magnitude_masks,
    magnitude_mask,
    nm_mask,
    random_mask,
    wanda_mask,
    wanda_score,
)
from sparsescope.weights.quant import SUPPORTED_BITS, bytes_per_param, quantize_activation, quantize_weight, ternary
from sparsescope.weights.stats import nm_readiness, weight_stats, weight_table
from sparsescope.weights.teal import calibrate_threshold, threshold_input

__all__ = [
    "SUPPORTED_BITS",
    "bytes_per_param",
    "calibrate_threshold",
    "global_magnitude_masks",
    "global_magnitude_plan",
    "magnitude_mask",
    "nm_mask",
    "nm_readiness",
    "parse_nm",
    "quantize_activation",
    "quantize_weight",
    "random_mask",
    "ternary",
    "threshold_input",
    "wanda_mask",
    "wanda_score",
    "weight_stats",
    "weight_table",
]
