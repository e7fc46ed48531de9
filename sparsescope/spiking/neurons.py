"""Rate-coded integrate-and-fire (IF) and leaky IF (LIF) neurons driven by a constant input over T steps.

Each step the membrane integrates the input: IF ``v ← v + x``; LIF ``v ← v + (x − v)/τ`` (spikingjelly's
``decay_input`` form with v_reset = 0). A spike fires when v ≥ v_th; a soft reset subtracts v_th, a hard reset
sets v to 0. The decoded value is the rate ``x̂ = v_th · (number of spikes)/T``.

Known error (the ann2snn conversion error). With soft reset and constant input x the IF neuron fires
``n = floor(x·T/v_th)`` times for 0 ≤ x ≤ v_th, so ``x̂ = floor(x·T/v_th)/T · v_th``: x is quantised to T levels
and always rounded *down* (error in [0, v_th/T), v_th/(2T) on average); x > v_th clips to v_th and x < 0 gives 0
(the neuron is one-sided: use the ternary integer coding in ``coding.py`` for signed values). A hard reset also
throws away the charge above threshold: IF then fires every ceil(v_th/x) steps, n = floor(T/ceil(v_th/x)),
which is far coarser (x = 0.6·v_th decodes to 0.5·v_th for any T). A LIF neuron with hard reset fires only
when x > v_th, every m steps with m the first t where x·(1 − (1 − 1/τ)^t) ≥ v_th.
"""

import torch

from sparsescope.errors import UserError
from sparsescope.record.calibration import quantile_threshold

RATE_NEURONS = ("if", "lif")
RESETS = ("soft", "hard")


def rate_encode(
    x: torch.Tensor,
    v_th: float | torch.Tensor,
    steps: int,
    neuron: str = "if",
    reset: str = "soft",
    tau: float = 2.0,
) -> torch.Tensor:
    """Spikes ``[steps, *x.shape]`` (0/1 in x's dtype) of IF/LIF neurons fed x at every step.

    ``v_th`` is a positive number or a tensor broadcastable to x (e.g. one threshold per channel).
    """
    if neuron not in RATE_NEURONS:
        raise UserError(f"unknown neuron {neuron!r}; use one of {', '.join(RATE_NEURONS)}")
    if reset not in RESETS:
        raise UserError(f"unknown reset {reset!r}; use one of {', '.join(RESETS)}")
    if int(steps) != steps or steps < 1:
        raise UserError(f"steps must be a whole number ≥ 1, got {steps!r}")
    if not tau >= 1:
        raise UserError(f"tau must be ≥ 1 (1 = no memory, larger = slower leak), got {tau!r}")
    v_th = torch.as_tensor(v_th, dtype=x.dtype)
    if not bool((v_th > 0).all()):
        raise UserError("v_th must be > 0; calibrate it with calibrate_threshold() on positive activations")
    v = torch.zeros_like(x)
    spikes = []
    for _ in range(int(steps)):
        v = v + x if neuron == "if" else v + (x - v) / tau
        spike = (v >= v_th).to(x.dtype)
        v = v - spike * v_th if reset == "soft" else v * (1 - spike)
        spikes.append(spike)
    return torch.stack(spikes)


def rate_decode(spikes: torch.Tensor, v_th: float | torch.Tensor) -> torch.Tensor:
    """The value a spike train stands for: x̂ = v_th · spikes.sum(0) / T."""
    return torch.as_tensor(v_th, dtype=spikes.dtype) * spikes.sum(0) / spikes.shape[0]


def calibrate_threshold(samples: torch.Tensor, percentile: float = 99.9) -> float:
    """Threshold = the ``percentile`` of the samples (ann2snn's robust max: outliers do not set the scale), by the
    project's one quantile rule (`record.calibration.quantile_threshold`)."""
    if not 0 < percentile <= 100:
        raise UserError(f"percentile must be in (0, 100], got {percentile!r}; ann2snn uses 99.9")
    value = quantile_threshold(samples, percentile / 100)
    if not value > 0:
        raise UserError(
            f"the {percentile} percentile of the samples is {float(value):.3g} ≤ 0; "
            "calibrate on positive activations (e.g. after ReLU, or |x|)"
        )
    return float(value)
