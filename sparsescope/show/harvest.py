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


def _per_token(costs: list[LinearCost], method: str, constants: str) -> pd.DataFrame:
    """Bytes and energy (µJ) per token of each linear (costs built with tokens=1) under the cost model."""
    rows = cost_table(costs, PRESETS[constants], methods=(method,))
    return rows[rows["name"] != "total"].set_index("name")[["bytes", "energy_total_uJ"]]


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
    constants = shapes["constants"].iloc[0]
    bits = BITS[constants]
    table = shapes[["layer", "site"]].copy()
    table["input_site"] = table["site"].map(LINEAR_INPUT_SITE)
    table["widths"] = shapes["width_a"].astype(str) + "×" + shapes["width_b"].astype(str)
    spars = spikes[spikes["metric"] == "spike_sparsity"].set_index(["layer", "site"])["value"]
    table["spike_sparsity"] = spars.reindex(pd.MultiIndex.from_frame(table[["layer", "site"]])).to_numpy()
    table["available"] = np.nan
    if activations is not None:
        avail = available_sparsity(activations).set_index(["layer", "input_site"])["available"]
        table["available"] = avail.reindex(pd.MultiIndex.from_frame(table[["layer", "input_site"]])).to_numpy()

    def priced(method: str, weight_bits: int, density=None) -> pd.DataFrame:
        density = np.ones(len(shapes)) if density is None else np.asarray(density, dtype=float)
        costs = [LinearCost(s.name, s.width_a, s.width_b, weight_bits=weight_bits, act_bits=bits, input_density=d)
                 for s, d in zip(shapes.itertuples(index=False), density)]
        return _per_token(costs, method, constants).reindex(shapes["name"])

    dense, int8 = priced("dense", bits), priced("dense", 8)
    table["dense_bytes"], table["dense_uJ"] = dense["bytes"].to_numpy(), dense["energy_total_uJ"].to_numpy()
    per = energy[energy["layer"] >= 0].pivot_table(index=["layer", "site"], columns="method",
                                                   values=["bytes", "energy_total_uJ"], aggfunc="sum")
    per = per.reindex(pd.MultiIndex.from_frame(table[["layer", "site"]]))
    tokens = shapes["tokens"].to_numpy()
    table["spike_bytes_saved"] = (per[("bytes", "dense")] - per[("bytes", "spiking")]).to_numpy() / tokens
    table["spike_uJ_saved"] = (per[("energy_total_uJ", "dense")]
                               - per[("energy_total_uJ", "spiking")]).to_numpy() / tokens
    table["act_bytes_saved"] = table["act_uJ_saved"] = np.nan
    have = table["available"].notna().to_numpy()
    if have.any():
        sparse = priced("sparse", bits, 1 - table["available"].fillna(0))
        table.loc[have, "act_bytes_saved"] = (dense["bytes"] - sparse["bytes"]).to_numpy()[have]
        table.loc[have, "act_uJ_saved"] = (dense["energy_total_uJ"] - sparse["energy_total_uJ"]).to_numpy()[have]
    table["int8_bytes_saved"] = (dense["bytes"] - int8["bytes"]).to_numpy()
    table["int8_uJ_saved"] = (dense["energy_total_uJ"] - int8["energy_total_uJ"]).to_numpy()
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

    A `choice` of 'spike' uses `spike_params` (the spike run's own parameters), 'int8' is quant bits=8; a planner
    row (`params` = JSON of the sparse lever's parameters, as `sparsescope plan` stores them) becomes a `sparse`
    rule; rows without parameters (dense) and the LM head (not a block linear; `sparsescope plan` sets its
    format) add no rule.
    """
    rules = []
    for r in selected.itertuples(index=False):
        sites = [r.site] if "site" in selected.columns and isinstance(r.site, str) else None
        if isinstance(getattr(r, "params", None), str):  # a `sparsescope plan` row
            lever, params = "sparse", json.loads(r.params)
            if not params or int(r.layer) < 0:
                continue
        elif r.choice == "spike":
            lever, params = "spike", dict(spike_params or {})
        else:  # "int8"
            lever, params = "quant", {"bits": 8}
        rules.append(Rule(lever, params, layers=[int(r.layer)], sites=sites))
    return Plan(rules, name=name)
