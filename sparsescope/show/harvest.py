"""Where latent sparsity can be harvested, from stored runs only: per layer × linear, what is there and what it buys.

Inputs are tables other commands stored: a `spike` run (per-linear costs of the spiking conversion from the
energy model, per-layer Δppl when run with `--per-layer`), `scan` runs (the recorded activation sparsity at each
linear's input site), a `weights` run (per-layer essential weight sparsity), a `compare` run (whole-model Δppl
of int8 and TEAL) and, when present, a `plan` run (the planner's per-linear choices).

Costs are priced by the project's cost model (`LinearCost`, `cost_table`) per token. A linear's shape is not
stored by any run, so it is recovered from the spike run's dense row: macs = tokens·in·out and
act_bytes = tokens·(in + out)·bits/8 give in·out and in + out, i.e. the two widths without their order, which is
all the dense, input-sparse and int8 rows of the cost model depend on (they are symmetric in in and out).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ..intervene import Plan, Rule
from ..models.sites import LINEAR_INPUT_SITE
from ..cost import PRESETS, LinearCost, cost_table
from ..spiking.stats import BITS

SPARSITY_METRIC = ("teal_sparsity", 0.1)  # share of smallest inputs zeroable at ≤ 10 % relative L2 error
SCAN_HINT = ("sparsescope scan --sites ln1.hook_normalized,attn.hook_z,ln2.hook_normalized,mlp.hook_post "
             "--metrics teal_sparsity")


def linear_shapes(energy: pd.DataFrame, spikes: pd.DataFrame) -> pd.DataFrame:
    """Per linear of a spike run: layer, site, name, width_a ≤ width_b (the unordered in/out widths), tokens."""
    dense = energy[(energy["method"] == "dense") & (energy["layer"] >= 0)]
    tokens = (spikes[spikes["metric"] == "spike_sparsity"].groupby(["layer", "site"])["n_tokens"].first()
              .rename("tokens"))
    d = dense.join(tokens, on=["layer", "site"])
    bits = d["constants"].map(BITS)
    product = d["macs"] / d["tokens"]
    total = d["act_bytes"] * 8 / (bits * d["tokens"])
    root = np.sqrt(np.maximum(total**2 - 4 * product, 0))
    return pd.DataFrame({"layer": d["layer"], "site": d["site"], "name": d["name"],
                         "width_a": ((total - root) / 2).round().astype(int),
                         "width_b": ((total + root) / 2).round().astype(int),
                         "tokens": d["tokens"], "constants": d["constants"]}).reset_index(drop=True)


def _per_token(c: LinearCost, method: str, constants: str) -> tuple[float, float]:
    """(bytes, energy µJ) per token of one linear under the cost model."""
    row = cost_table([c], PRESETS[constants], methods=(method,)).iloc[0]
    return float(row["bytes"]), float(row["energy_total_uJ"])


def available_sparsity(activations: pd.DataFrame, split: str = "id") -> pd.DataFrame:
    """Token-weighted SPARSITY_METRIC per layer × activation site over a split's suites (all scans pooled)."""
    metric, t = SPARSITY_METRIC
    rows = activations[(activations["metric"] == metric) & np.isclose(activations["threshold"], t)
                       & (activations["split"] == split)]
    if rows.empty:
        return pd.DataFrame(columns=["layer", "input_site", "available"])
    w = rows["n_tokens"].where(rows["value"].notna(), 0)
    g = rows.assign(wv=rows["value"].fillna(0) * w, w=w).groupby(["layer", "site"])[["wv", "w"]].sum()
    out = (g["wv"] / g["w"].replace(0, np.nan)).rename("available").reset_index()
    return out.rename(columns={"site": "input_site"})


def harvest_table(energy: pd.DataFrame, spikes: pd.DataFrame, quality: pd.DataFrame | None = None,
                  activations: pd.DataFrame | None = None, knees: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per layer × linear: sparsity there, bytes and µJ per token each lever saves, and its quality cost.

    Columns: layer, site, input_site, widths, spike_sparsity, available (activation sparsity recorded by scans,
    SPARSITY_METRIC on ID text), then per lever (spike, act = input sparsity at `available`, int8 = int8 weights)
    `<lever>_bytes_saved` and `<lever>_uJ_saved` per token, `spike_dppl_layer` (Δppl of the layer converted alone)
    and `essential_weight_sparsity` (largest magnitude-pruning sparsity with Δppl/ppl ≤ 1 %, that layer alone).
    """
    shapes = linear_shapes(energy, spikes)
    per = energy[energy["layer"] >= 0].pivot_table(index=["layer", "site"], columns="method",
                                                   values=["bytes", "energy_total_uJ"], aggfunc="sum")
    spars = spikes[spikes["metric"] == "spike_sparsity"].set_index(["layer", "site"])["value"]
    avail = available_sparsity(activations) if activations is not None else None
    rows = []
    for s in shapes.itertuples(index=False):
        key, bits = (s.layer, s.site), BITS[s.constants]
        base = LinearCost(s.name, s.width_a, s.width_b, weight_bits=bits, act_bits=bits)
        dense_b, dense_e = _per_token(base, "dense", s.constants)
        int8_b, int8_e = _per_token(LinearCost(s.name, s.width_a, s.width_b, weight_bits=8, act_bits=bits),
                                    "dense", s.constants)
        input_site = LINEAR_INPUT_SITE.get(s.site, "")
        a = math.nan
        if avail is not None:
            hit = avail[(avail["layer"] == s.layer) & (avail["input_site"] == input_site)]["available"]
            a = float(hit.iloc[0]) if len(hit) else math.nan
        act_b = act_e = math.nan
        if not math.isnan(a):
            sparse = LinearCost(s.name, s.width_a, s.width_b, weight_bits=bits, act_bits=bits, input_density=1 - a)
            act_b, act_e = _per_token(sparse, "sparse", s.constants)
            act_b, act_e = dense_b - act_b, dense_e - act_e
        rows.append({
            "layer": s.layer, "site": s.site, "input_site": input_site, "widths": f"{s.width_a}×{s.width_b}",
            "spike_sparsity": spars.get(key, math.nan), "available": a,
            "dense_bytes": dense_b, "dense_uJ": dense_e,
            "spike_bytes_saved": (per.loc[key, ("bytes", "dense")] - per.loc[key, ("bytes", "spiking")]) / s.tokens,
            "spike_uJ_saved": (per.loc[key, ("energy_total_uJ", "dense")]
                               - per.loc[key, ("energy_total_uJ", "spiking")]) / s.tokens,
            "act_bytes_saved": act_b, "act_uJ_saved": act_e,
            "int8_bytes_saved": dense_b - int8_b, "int8_uJ_saved": dense_e - int8_e,
        })
    table = pd.DataFrame(rows)
    table["spike_dppl_layer"] = np.nan
    if quality is not None and not quality.empty:
        per_layer = quality[(quality["scope"] == "layer") & (quality["metric"] == "delta_ppl")]
        table["spike_dppl_layer"] = table["layer"].map(per_layer.set_index("layer")["value"])
    table["essential_weight_sparsity"] = np.nan
    if knees is not None and not knees.empty:
        k = knees[(knees["layer"] >= 0) & (knees["method"] == "magnitude")].set_index("layer")
        table["essential_weight_sparsity"] = table["layer"].map(k["essential_sparsity"])
    return table


def whole_model_quality(compare: pd.DataFrame) -> pd.DataFrame:
    """The compare run's whole-model Δppl of the levers the harvest table prices (int8, TEAL, spiking)."""
    keep = compare["method"].isin(["weight quant", "TEAL", "spiking", "int8 + spiking"])
    cols = ["method", "config", "ppl", "delta_ppl", "kl", "energy_uJ_per_token", "bytes_per_token"]
    return compare.loc[keep, cols].reset_index(drop=True)


# -- the budgeted choice --------------------------------------------------------------------------------------------
def layer_candidates(table: pd.DataFrame, int8_dppl: float | None = None) -> pd.DataFrame:
    """Options per layer for the budget slider: spiking (its measured Δppl, layer alone) and, given the compare
    run's whole-model int8 Δppl, int8 weights with that Δppl shared out by the layer's share of dense bytes
    (an estimate, marked `measured=False`). Columns: layer, choice, uJ_saved, bytes_saved, dppl, measured."""
    g = table.groupby("layer")
    out = []
    if table["spike_dppl_layer"].notna().any():
        out.append(pd.DataFrame({"layer": g.size().index, "choice": "spike", "uJ_saved": g["spike_uJ_saved"].sum(),
                                 "bytes_saved": g["spike_bytes_saved"].sum(),
                                 "dppl": g["spike_dppl_layer"].first(), "measured": True}).dropna(subset=["dppl"]))
    if int8_dppl is not None and not math.isnan(int8_dppl):
        share = g["dense_bytes"].sum() / table["dense_bytes"].sum()
        out.append(pd.DataFrame({"layer": g.size().index, "choice": "int8", "uJ_saved": g["int8_uJ_saved"].sum(),
                                 "bytes_saved": g["int8_bytes_saved"].sum(), "dppl": int8_dppl * share,
                                 "measured": False}))
    if not out:
        return pd.DataFrame(columns=["layer", "choice", "uJ_saved", "bytes_saved", "dppl", "measured"])
    return pd.concat(out, ignore_index=True)


def choose(candidates: pd.DataFrame, budget: float, unit: str | list[str] = "layer", grid: int = 1000) -> pd.DataFrame:
    """The options that save the most µJ per token with their Δppl adding up to at most `budget`, at most one per
    `unit` (a column or columns): a multiple-choice knapsack solved exactly by dynamic programming over the
    budget cut into `grid` steps, each option's Δppl rounded *up* to a step so the sum never exceeds the budget.

    Δppl is assumed additive over options (the apply step measures the real one); a measured Δppl ≤ 0 counts as
    free. Returns `candidates` with a boolean `selected` column.
    """
    if budget < 0 or math.isnan(budget):
        raise ValueError(f"budget must be a number ≥ 0, got {budget}")
    c = candidates.reset_index(drop=True).copy()
    c["selected"] = False
    cost = c["dppl"].clip(lower=0).to_numpy(float)
    steps = np.where(cost == 0, 0, np.ceil(cost / budget * grid) if budget > 0 else grid + 1).astype(int)
    value = c["uJ_saved"].to_numpy(float)
    keys = [unit] if isinstance(unit, str) else list(unit)
    best = np.zeros(grid + 1)  # best[g]: most µJ saved with at most g budget steps spent
    picks = []  # per group: the option chosen at each g (-1 = none)
    groups = list(c.groupby(keys, sort=False).indices.values())
    for idx in groups:
        new, pick = best.copy(), np.full(grid + 1, -1)
        for i in idx:
            w = steps[i]
            if value[i] <= 0 or w > grid:
                continue
            gain = np.full(grid + 1, -np.inf)
            gain[w:] = best[:grid + 1 - w] + value[i]
            better = gain > new
            new[better], pick[better] = gain[better], i
        best = new
        picks.append(pick)
    g = grid
    for idx, pick in zip(reversed(groups), reversed(picks)):
        i = pick[g]
        if i >= 0:
            c.loc[i, "selected"] = True
            g -= steps[i]
    return c


def plan_for(selected: pd.DataFrame, spike_params: dict | None = None, name: str = "harvest") -> Plan:
    """The intervene Plan of a choice: one rule per chosen option (layer, and site where the option has one).

    A `choice` of 'spike' uses `spike_params` (the spike run's own parameters), 'int8' is quant bits=8; any other
    choice (a planner row) names its lever and carries its parameters as JSON in `params`.
    """
    rules = []
    for r in selected.itertuples(index=False):
        sites = [r.site] if "site" in selected.columns and isinstance(r.site, str) else None
        if r.choice == "spike":
            lever, params = "spike", dict(spike_params or {})
        elif r.choice == "int8":
            lever, params = "quant", {"bits": 8}
        else:
            params = json.loads(r.params) if isinstance(getattr(r, "params", None), str) else {}
            lever = params.pop("lever", r.choice)
        rules.append(Rule(lever, params, layers=[int(r.layer)], sites=sites))
    return Plan(rules, name=name)
