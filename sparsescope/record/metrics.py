"""Per-token activation sparsity metrics (design §4), computed on whole batches so they can stream.

Every metric maps one token's activation vector ``x`` (width ``n``) to a number; a split's value is the
token-weighted mean. ``token_metrics`` returns ``[N, M]`` values for ``N`` vectors at once, with an optional
validity mask for ragged rows (attention-pattern rows only cover keys a query can see).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from sparsescope.errors import UserError
from sparsescope.kernels.stats import HOYER, MASS, NEAR, TEAL, ZERO, StatsSpec, site_values

NEAR_ZERO_T = (0.01, 0.05, 0.1, 0.25)
TEAL_E = (0.1, 0.2)
MASS_P = (0.9,)
DELTA_T = (0.05, 0.1)
FIRE_T = 0.1  # a neuron "fires" on a token when |x_i| > FIRE_T · RMS(x)

BASE_METRICS = ("zero_frac", "near_zero_frac", "hoyer", "mass_density", "teal_sparsity", "delta_frac")
DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "zero_frac": (),
    "near_zero_frac": NEAR_ZERO_T,
    "hoyer": (),
    "mass_density": MASS_P,
    "teal_sparsity": TEAL_E,
    "delta_frac": DELTA_T,
}
SPLIT_METRICS = ("dead_frac", "dense_frac")  # from per-neuron firing counts, per suite only
# Valid parameter of each metric that takes one: (low, high, high allowed?); low itself is never allowed.
# near_zero/delta thresholds are in RMS units (any finite t > 0); mass_density keeps a share p of the energy;
# teal_sparsity allows a relative error e (e ≥ 1 would drop every entry of every token).
PARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    "near_zero_frac": (0.0, math.inf, False),
    "delta_frac": (0.0, math.inf, False),
    "mass_density": (0.0, 1.0, True),
    "teal_sparsity": (0.0, 1.0, False),
}


@dataclass(frozen=True)
class Metric:
    """One metric column: a base name and its parameter (``nan`` when it takes none)."""

    name: str
    threshold: float = math.nan

    def __post_init__(self) -> None:  # nan = no threshold given (a bare "near_zero_frac" means its defaults)
        if isinstance(self.threshold, float) and math.isnan(self.threshold):
            return
        if self.name in PARAM_RANGES:
            check_param(self.name, self.threshold)
        elif self.name in BASE_METRICS:
            raise UserError(f"metric {self.name!r} takes no threshold; write it without '@{self.threshold}'")

    @classmethod
    def parse(cls, text: str) -> "Metric":
        """The one reader of metric labels: ``"near_zero_frac@0.1"`` → ``Metric("near_zero_frac", 0.1)``,
        ``"hoyer"`` → ``Metric("hoyer")``. Names are not checked here (each table has its own)."""
        name, _, t = text.partition("@")
        if not t:
            return cls(name)
        try:
            value = float(t)
        except ValueError:
            value = math.nan
        if math.isnan(value):
            raise UserError(f"threshold {t!r} of {name!r} is not a number; write e.g. {name}@0.1")
        return cls(name, value)

    @property
    def label(self) -> str:
        """The one writer of metric labels: ``near_zero_frac@0.1``, or the bare name without a threshold."""
        return self.name if math.isnan(self.threshold) else f"{self.name}@{self.threshold:g}"


def check_param(name: str, value: float) -> None:
    """Refuse a metric parameter outside its range (so every stored fraction stays in [0, 1])."""
    low, high, closed = PARAM_RANGES[name]
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    inside = number and low < value and (value <= high if closed else value < high)
    if not inside:
        bracket = "]" if closed else ")"
        raise UserError(f"threshold of {name!r} must lie in ({low:g}, {high:g}{bracket}, got {value!r}; "
                        f"write e.g. {name}@{DEFAULT_THRESHOLDS[name][0]:g}")


def default_metrics() -> list[Metric]:
    out = []
    for name in BASE_METRICS:
        ts = DEFAULT_THRESHOLDS[name]
        out += [Metric(name, t) for t in ts] if ts else [Metric(name)]
    return out


def parse_metrics(spec: str | list[str | Metric] | None) -> list[Metric]:
    """Parse ``"hoyer,near_zero_frac@0.1,teal_sparsity"`` (a base name alone means its default thresholds);
    a list may mix such names and :class:`Metric` objects."""
    if spec is None:
        return default_metrics()
    items = spec.split(",") if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
    bad = [i for i in items or [spec] if not isinstance(i, (str, Metric))]
    if items is None or bad:
        raise UserError(f"metrics must be names such as 'hoyer' or 'near_zero_frac@0.1', got {bad[0]!r}; "
                        "pass e.g. 'hoyer,near_zero_frac@0.1' or a list of such names")
    out: list[Metric] = []
    for item in items:
        if not isinstance(item, Metric) and not item.strip():
            continue
        m = item if isinstance(item, Metric) else Metric.parse(item.strip())
        name = m.name
        if name not in BASE_METRICS:
            raise UserError(f"unknown metric {name!r}; choose from: {', '.join(BASE_METRICS)} (add @t for a threshold)")
        takes = bool(DEFAULT_THRESHOLDS[name])
        if not math.isnan(m.threshold):
            if not takes:
                raise UserError(f"metric {name!r} takes no threshold; write it without '@{m.threshold:g}'")
            out.append(m)
        else:
            out += [Metric(name, v) for v in DEFAULT_THRESHOLDS[name]] if takes else [Metric(name)]
    if not out:
        raise UserError("no metrics given; pass e.g. --metrics hoyer,near_zero_frac@0.1")
    return list(dict.fromkeys(out))


def stats_spec(metrics: list[Metric], delta: bool = True) -> StatsSpec:
    """The fused kernel's description of ``metrics``: static metric codes with their parameters, delta thresholds."""
    codes = {"zero_frac": ZERO, "near_zero_frac": NEAR, "hoyer": HOYER, "mass_density": MASS, "teal_sparsity": TEAL}
    static = [m for m in metrics if m.name != "delta_frac"]
    params = {"near_zero_frac": lambda t: t, "mass_density": lambda t: t, "teal_sparsity": lambda t: t**2}
    return StatsSpec(kinds=tuple(codes[m.name] for m in static),
                     params=tuple(params[m.name](m.threshold) if m.name in params else 0.0 for m in static),
                     delta_t=tuple(m.threshold for m in metrics if m.name == "delta_frac") if delta else (),
                     fire_t=FIRE_T)


def token_metrics(x: torch.Tensor, metrics: list[Metric], mask: torch.Tensor | None = None,
                  use_kernel: bool | None = None) -> torch.Tensor:
    """Values ``[N, M]`` (float64) of every non-temporal metric for each row of ``x`` ``[N, n]``.

    ``mask`` ``[N, n]`` marks the valid entries of ragged rows. mass_density@p is the share of the largest entries
    needed to keep ≥ p of the energy ‖x‖² (the smallest entries are dropped while the kept energy stays
    ≥ p‖x‖²); teal_sparsity@e the share of the smallest entries that can be zeroed with ‖x − x̂‖ ≤ e‖x‖.
    Conventions for an all-zero row: hoyer 1, mass_density 0, teal_sparsity 1 (nothing carries signal, everything
    can be dropped). Rows with a NaN or inf entry give NaN. Computed by :mod:`sparsescope.kernels.stats` (the fused
    C++ kernel, or its torch twin with ``use_kernel=False``).
    """
    spec = stats_spec(metrics, delta=False)
    owner = torch.zeros(1, x.shape[0], dtype=torch.long, device=x.device)
    vals = site_values(x[None, :, None, :], owner, spec, None if mask is None else mask[None], use_kernel=use_kernel)[0]
    m = len(spec.kinds)
    return vals[:, :m].masked_fill(vals[:, m + 1: m + 2] > 0, math.nan)


def delta_frac(x: torch.Tensor, thresholds: list[float], use_kernel: bool | None = None) -> torch.Tensor:
    """Temporal sparsity ``[B, T, len(thresholds)]``: share of channels whose change from the previous token is
    ≤ t·RMS(x_t). Position 0 has no predecessor; its value is 0 and callers must mask it out."""
    spec = StatsSpec(delta_t=tuple(thresholds), fire_t=FIRE_T)
    owner = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
    return site_values(x[:, :, None, :], owner, spec, use_kernel=use_kernel)[..., : len(thresholds)]
