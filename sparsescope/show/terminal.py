"""Terminal output: rich tables and lines for what the commands print (presentation only; no computing)."""

from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from sparsescope.harvest.summary import (DEFAULT_SITES, DIFF, GROUPS, ID, OOD, effect_summary, layer_rows,
                                         trend_summary)
from sparsescope.ood import versus_baseline
from sparsescope.record.metrics import Metric


def print_summary(summary: pd.DataFrame, console: Console | None = None, title: str = "") -> None:
    """Print `summary_table` output as one row per layer with ID, OOD and OOD − ID columns per site."""
    table = Table(title=title or None, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False, pad_edge=False)
    table.add_column("layer", justify="right")
    sites = list(dict.fromkeys(summary["site"]))
    for site in sites:  # short heads ('mlp.post') keep three sites within 80 columns
        short = site.replace("hook_", "")
        for head in (f"{short}\nID", "\nOOD", "\nOOD−ID"):
            table.add_column(head, justify="right", no_wrap=True)
    fmt = lambda x, sign="": "–" if pd.isna(x) else f"{x:{sign}.3f}"  # noqa: E731
    for layer, row in layer_rows(summary).iterrows():
        table.add_row(str(layer), *(fmt(row[(site, col)], "+" if col == DIFF else "") for site in sites
                                    for col in (ID, OOD, DIFF)))
    (console or Console()).print(table)


TERMINAL_SITES = ("mlp.hook_pre", *DEFAULT_SITES)


def print_stats(stats: dict[str, pd.DataFrame], console: Console) -> None:
    """A short terminal summary of `statistics` (sites of TERMINAL_SITES; the HTML report shows all)."""
    if "effects" in stats:
        s = effect_summary(stats["effects"])
        s = s[s["site"].isin(TERMINAL_SITES) & (s["family"] == "all")]
        console.print("[bold]ID vs OOD, all OOD suites pooled, Holm-significant layers[/] (site, metric: "
                      "significant/tested, up = OOD − ID > 0, down; largest g \\[CI] at layer)")
        for r in s.itertuples(index=False):
            name = Metric(r.metric, float(r.threshold)).label
            console.print(f"  {r.site:22} {name:20} {r.n_significant:3}/{r.n_tests:<3} up {r.n_up:3} down {r.n_down:3}"
                          f"  g {r.g:+.2f} [{r.g_lo:+.2f}, {r.g_hi:+.2f}] @ L{r.top_layer}",
                          highlight=False, soft_wrap=True)
    if "trends" in stats:
        console.print("[bold]Ladder trends[/] (layers increasing/decreasing of tested; rho [CI] per layer group)")
        s = trend_summary(stats["trends"])
        for r in s[s["site"].isin(TERMINAL_SITES)].itertuples(index=False):
            d = r._asdict()
            name = Metric(r.metric, float(r.threshold)).label
            rhos = "  ".join(f"{g} {d[f'rho_{g}']}" for g in GROUPS if f"rho_{g}" in d)
            console.print(f"  {r.ladder:10} {r.site:18} {name:20} {r.n_increasing:2}/{r.n_decreasing:<2} of "
                          f"{r.n_layers:<2} {rhos}", highlight=False, soft_wrap=True)
    if "detector" in stats:
        console.print("[bold]OOD detector[/] (AUROC \\[CI] on the held-out family: sparsity profile, best baseline, "
                      "profile − best \\[paired CI])")
        for r in versus_baseline(stats["detector"]).itertuples():
            best = "" if not isinstance(r.best_baseline, str) else (
                f"  {r.best_baseline} {r.baseline:.2f} [{r.baseline_lo:.2f}, {r.baseline_hi:.2f}]"
                f"  {r.profile_minus_best:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]")
            console.print(f"  {r.family:16} profile {r.profile:.2f} [{r.profile_lo:.2f}, {r.profile_hi:.2f}]{best}",
                          highlight=False, soft_wrap=True)


def frame_table(df: pd.DataFrame, title: str) -> Table:
    """A rich table of a small frame (index as the first columns), numbers to 4 significant digits."""
    df = df.reset_index()
    table = Table(*[str(c) for c in df.columns], title=title)
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    return table


def weights_tables(model: str, tables: dict[str, pd.DataFrame], metric: str, tolerance: float, dense_ppl: float,
                   n_tokens: int) -> list[Table]:
    """The `weights` run as terminal tables: the statistic grid, then (if measured) Δppl per sparsity and the knees."""
    from sparsescope.weights.sensitivity import ALL_LAYERS
    from sparsescope.weights.study import grid

    out = [frame_table(grid(tables["weights"], metric), f"{model}: {metric} per layer × weight site")]
    if "sensitivity" in tables:
        whole = tables["sensitivity"][tables["sensitivity"]["layer"] == ALL_LAYERS]
        out += [frame_table(whole.pivot(index="config", columns="method", values="rel_delta_ppl"),
                            f"Δppl / dense ppl {dense_ppl:.3f} (whole model, {n_tokens} tokens)"),
                frame_table(tables["knees"].set_index(["method", "layer"]),
                            f"essential sparsity (largest with Δppl/ppl ≤ {tolerance:.1%})")]
    return out


def compare_table(model: str, table: pd.DataFrame) -> Table:
    """The head-to-head in per-token units a reader can compare (MB, Mops, mJ)."""
    shown = pd.DataFrame({"method": table["method"], "config": table["config"], "ppl": table["ppl"],
                          "Δppl": table["delta_ppl"], "KL": table["kl"], "bits/w": table["bits_per_weight"],
                          "density": table["input_density"], "MB/tok": table["bytes_per_token"] / 1e6,
                          "Mops/tok": table["ops_per_token"] / 1e6, "mJ/tok": table["energy_uJ_per_token"] / 1e3,
                          "compute mJ": table["energy_compute_uJ_per_token"] / 1e3})
    return frame_table(shown.set_index(["method", "config"]),
                       f"{model}: head-to-head on {table['n_tokens'].iloc[0]} held-out tokens (per token, "
                       "block linears; comparator = the spiking row's layer on quantized activations)")


def print_spike(result, run_id: str, energy: str, path, console: Console) -> None:
    """The `spike` study: per-layer spiking and savings, the whole-model quality line, the sweep if any."""
    table = Table("layer", "sparsity", "s=0", "T", "SOPs M", "SOP/MAC", "save", "save+mem", "Q/S+mem", "wins",
                  "Δppl", title=f"{run_id}: spiking per layer ({energy} energy)",
                  caption="sparsity: empty spike slots; s=0: silent channels; T: mean steps per token; save: energy "
                          "saved vs dense, compute only / with memory traffic; Q/S+mem: quantized comparator ÷ "
                          "spiking energy with memory (> 1: spiking wins); Δppl: that layer converted alone")
    for r in result.layers.itertuples():
        table.add_row("all" if r.layer == -1 else str(r.layer), f"{r.spike_sparsity:.1%}", f"{r.zero_frac:.1%}",
                      f"{r.steps:.2f}", f"{r.sops / 1e6:.2f}", f"{r.sops / r.macs:.2f}", f"{r.saving_compute:.1%}",
                      f"{r.saving_total:.1%}", f"{r.quantized_over_spiking:.4f}",
                      "total" if r.wins_on_total else "compute" if r.wins_on_compute else "no",
                      "" if r.delta_ppl != r.delta_ppl else f"{r.delta_ppl:+.3f}")
    console.print(table)
    q = result.tables["quality"].set_index(["scope", "metric"])["value"]
    t = result.timings
    console.print(f"whole model: ppl {q['dense', 'ppl']:.3f} → {q['model', 'ppl']:.3f} "
                  f"(Δ {q['model', 'delta_ppl']:+.3f}), "
                  f"KL {q['model', 'kl']:.3g} nats/token; conversion {t['convert_s']:.3f} s, "
                  f"evaluation {t['dense_eval_s']:.2f} s dense vs {t['spike_eval_s']:.2f} s spiking")
    if "sweep" in result.tables:
        sw = result.tables["sweep"].pivot_table(index="setting", columns="metric", values="value")
        param = result.tables["sweep"]["param"].iloc[0]
        sweep_table = Table(param, "spike sparsity", "s = 0", "steps", "Δppl", "KL", title="sweep")
        for setting, r in sw.iterrows():
            sweep_table.add_row(f"{setting:g}", f"{r.spike_sparsity:.1%}", f"{r.zero_frac:.1%}", f"{r.steps:.2f}",
                                f"{r.delta_ppl:+.3f}", f"{r.kl:.3g}")
        console.print(sweep_table)
    console.print(f"tables {', '.join(result.tables)} → {path}")


def print_runs(df: pd.DataFrame, root, console: Console) -> None:
    """The run store's list: id, kind, status, creation time and rows per run."""
    table = Table("run_id", "kind", "status", "created", "rows", title=f"runs in {root}")
    counts = df.filter(regex="^n_").fillna(0).sum(axis=1).astype(int)
    for row, n in zip(df.itertuples(index=False), counts):
        table.add_row(row.run_id, str(row.kind), str(row.status), str(row.created)[:19], str(n))
    console.print(table, soft_wrap=True)


def kernel_tables(table: pd.DataFrame) -> list[Table]:
    """``bench kernels``: speed-up vs the best dense path, and fraction of the ideal 1/(1−s), per shape × kernel."""
    out = []
    for value, title in (("speedup_vs_best_dense", "speed-up vs the best dense path (torch or ours, fp32)"),
                         ("frac_of_ideal", "fraction of the ideal 1/(1-s), against the dense path of the same "
                                           "format")):
        wide = table.pivot_table(index=["shape", "kernel"], columns="sparsity", values=value, sort=False)
        out.append(frame_table(wide.astype(object).where(wide.notna(), ""), f"{title}; medians of interleaved "
                                                                             "repeats"))
    return out


def decode_table(model: str, table: pd.DataFrame, what: str) -> Table:
    """Decode speed and quality per configuration (speed-up vs the faster dense lean loop)."""
    cols = [c for c in ("threads", "ms_per_token", "tokens_per_s", "speedup", "ppl", "rel_delta_ppl", "kl", "loop")
            if c in table]
    return frame_table(table.set_index("config")[cols], f"{model}: batch-1 decode, lean loop, {what}")


def plan_tables(model: str, result, decode: pd.DataFrame | None = None) -> list[Table]:
    """``sparsescope plan``: choices per weight site, the planners side by side, the plan's decode check."""
    chosen = result.table[result.table["selected"]]
    counts = chosen.groupby(["site", "choice"]).size().rename("linears").to_frame()
    n = result.plan.notes
    out = [frame_table(counts, f"{model}: chosen per weight site; LM head {result.plan.lm_head}; measured "
                               f"{n['measured_rel_delta_ppl']:+.2%} ppl ({n['dense_ppl']:.3f} → "
                               f"{n['measured_ppl']:.3f}), budget {n['budget_rel_ppl']:.1%}"),
           frame_table(result.comparison.set_index("planner"), "planners at the same budget (time saved per token: "
                                                                 f"predicted from this machine's timings, priced by "
                                                                 f"{n.get('pricing', 'kernels')})")]
    if decode is not None:
        out.append(decode_table(model, decode, "dense vs planned"))
    return out
