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


def token_metrics(x: torch.Tensor, metrics: list[Metric], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Values ``[N, M]`` of every non-temporal metric for each row of ``x`` ``[N, n]``.

    ``mask`` ``[N, n]`` marks the valid entries of ragged rows. When a sort-based metric (mass_density,
    teal_sparsity) is asked for, one ascending sort of |x| serves every metric (threshold counts become binary
    searches); otherwise no sort is done. Conventions for an all-zero row: hoyer 1, mass_density 0,
    teal_sparsity 1 (nothing carries signal, everything can be dropped).
    """
    x = x if x.dtype == torch.float64 else x.float()  # float64 stays: Hoyer of near-uniform rows cancels
    dt = x.dtype
    a = x.abs()
    if mask is None:
        n = torch.full((x.shape[0],), x.shape[1], dtype=dt, device=x.device)
    else:
        a = a.masked_fill(~mask, math.inf)  # invalid entries sort last; counts are capped at n (a huge t·rms is inf)
        n = mask.sum(1).to(dt)
    finite = a if mask is None else a.masked_fill(~mask, 0.0)
    total = finite.pow(2).sum(1, dtype=torch.float64)
    rms = (total / n).sqrt().to(dt)
    static = [m for m in metrics if m.name != "delta_frac"]
    cols: list[torch.Tensor] = []
    if any(m.name in ("mass_density", "teal_sparsity") for m in static):
        srt = a.sort(dim=1).values.contiguous()
        c = srt.to(torch.float64).pow(2).cumsum(1)  # c[j] = energy of the j+1 smallest entries

        def count_le(v: torch.Tensor) -> torch.Tensor:  # entries with |x| ≤ v, per row
            return torch.searchsorted(srt, v.to(dt)[:, None].contiguous(), right=True)[:, 0].to(dt).minimum(n)
    else:
        c = None

        def count_le(v: torch.Tensor) -> torch.Tensor:
            return (a <= v[:, None]).sum(1).to(dt).minimum(n)

    for m in static:
        if m.name == "zero_frac":
            cols.append(count_le(torch.zeros_like(rms)) / n)
        elif m.name == "near_zero_frac":
            cols.append(count_le(m.threshold * rms) / n)
        elif m.name == "hoyer":
            l1 = finite.sum(1)
            l2 = total.sqrt().to(dt)
            sqrt_n = n.sqrt()
            ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-30), torch.ones_like(sqrt_n))
            cols.append((sqrt_n - ratio) / (sqrt_n - 1).clamp_min(1e-12))
        elif m.name == "mass_density":  # dropping the smallest m' entries keeps ≥ p of the energy
            droppable = (c <= (1 - m.threshold) * total[:, None]).sum(1)
            cols.append((n - droppable) / n)
        elif m.name == "teal_sparsity":  # ‖x − x̂‖/‖x‖ ≤ e  ⇔  dropped energy ≤ e²·‖x‖²
            cols.append((c <= m.threshold**2 * total[:, None]).sum(1) / n)
    return torch.stack(cols, dim=1) if cols else x.new_zeros(x.shape[0], 0)


def delta_frac(x: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """Temporal sparsity ``[B, T, len(thresholds)]``: share of channels whose change from the previous token is
    ≤ t·RMS(x_t). Position 0 has no predecessor; its value is 0 and callers must mask it out."""
    x = x.float()
    rms = x.pow(2).mean(-1).sqrt()
    diff = (x[:, 1:] - x[:, :-1]).abs()
    out = x.new_zeros(x.shape[0], x.shape[1], len(thresholds))
    for i, t in enumerate(thresholds):
        out[:, 1:, i] = (diff <= t * rms[:, 1:, None]).float().mean(-1)
    return out
