"""Weight sparsity statistics, training-free pruning masks, fake quantization and TEAL input thresholding."""

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
    "magnitude_mask",
    "nm_mask",
    "nm_readiness",
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
