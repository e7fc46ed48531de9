"""Print the ID vs OOD tables of docs/id_vs_ood.md as Markdown, computed from stored scan runs.

    PYTHONPATH=. .venv/bin/python benchmarks/id_vs_ood.py RUN [--unmatched RUN] [--runs-dir DIR] [--n-boot 1000]

RUN is a matched-window scan (the default `sparsescope scan`); with --unmatched RUN2 (a `scan --unmatched` run of
the same model) it prints only the Holm-significant layer counts of both side by side (same statistics code, same
suites and sites).
Every number the docs quote is printed here; nothing is copied by hand.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from sparsescope.ood import versus_baseline
from sparsescope.harvest.summary import DIFF, GROUPS, accuracy_effects, effect_summary, statistics
from sparsescope.stats import bootstrap_ci, effect_table, n_significant
from sparsescope.store import RunStore

COUNT_METRICS = (("hoyer", math.nan), ("near_zero_frac", 0.1))


def _name(metric: str, threshold: float) -> str:
    return metric if pd.isna(threshold) else f"{metric}@{threshold:g}"


def _ci(x: float, lo: float, hi: float, fmt: str = "+.3f") -> str:
    return "–" if pd.isna(x) else f"{x:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |\n| " + " | ".join("---" for _ in df.columns) + " |\n"
    return head + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False))


def layers_of(effects: pd.DataFrame, sign: int) -> str:
    sig = effects[(effects["p_holm"] < 0.05) & (np.sign(effects[DIFF]) == sign)]
    return f"L{sig['layer'].min()}–{sig['layer'].max()}" if len(sig) else "–"


def effect_counts(effects: pd.DataFrame) -> pd.DataFrame:
    """Pooled effects per site × metric: significant / up / down (layer span) and the layer with the largest |g|."""
    out = []
    for r in effect_summary(effects).itertuples(index=False):
        if r.family != "all":
            continue
        rows = effects[(effects["family"] == "all") & (effects["site"] == r.site) & (effects["metric"] == r.metric)]
        out.append({"site": r.site, "metric": _name(r.metric, r.threshold),
                    "significant": f"{r.n_significant}/{r.n_tests}",
                    "up (OOD sparser)": f"{r.n_up} ({layers_of(rows, 1)})",
                    "down (OOD denser)": f"{r.n_down} ({layers_of(rows, -1)})",
                    "largest |g|: layer, id → ood, ood_minus_id [CI]":
                        f"L{r.top_layer}: {r.mean_a:.3f} → {r.mean_b:.3f}, "
                        + _ci(getattr(r, DIFF), getattr(r, f"{DIFF}_lo"), getattr(r, f"{DIFF}_hi")),
                    "g [CI]": _ci(r.g, r.g_lo, r.g_hi, "+.2f")})
    return pd.DataFrame(out)


def family_counts(effects: pd.DataFrame, site: str = "mlp.hook_post", metric: str = "hoyer") -> pd.DataFrame:
    """Per OOD family vs ID at one site and metric: significant layers up / down and the largest difference."""
    rows = effects[(effects["site"] == site) & (effects["metric"] == metric)]
    out = []
    for family, r in rows.groupby("family", sort=False):
        top = r.loc[r[DIFF].abs().idxmax()]
        out.append({"family": family, "n_ood": int(r["n_b"].max()), "significant": int((r["p_holm"] < 0.05).sum()),
                    "up": int(((r["p_holm"] < 0.05) & (r[DIFF] > 0)).sum()),
                    "down": int(((r["p_holm"] < 0.05) & (r[DIFF] < 0)).sum()),
                    "largest ood_minus_id [CI]": f"L{top['layer']}: " + _ci(top[DIFF], top[f"{DIFF}_lo"],
                                                                            top[f"{DIFF}_hi"])})
    return pd.DataFrame(out)


def detector_table(det: pd.DataFrame) -> pd.DataFrame:
    v = versus_baseline(det)
    verdict = np.where(v["lo"] > 0, "profile better", np.where(v["hi"] < 0, "baseline better", "no difference"))
    return pd.DataFrame({"held-out family": v["family"],
                         "n_ood / n_id": [f"{a} / {b}" for a, b in zip(v.n_ood, v.n_id)],
                         "sparsity profile": [_ci(*x, ".2f") for x in zip(v.profile, v.profile_lo, v.profile_hi)],
                         "best baseline": v["best_baseline"],
                         "its AUROC": [_ci(*x, ".2f") for x in zip(v.baseline, v.baseline_lo, v.baseline_hi)],
                         "profile − best [paired CI]": [_ci(*x, "+.2f")
                                                        for x in zip(v.profile_minus_best, v.lo, v.hi)],
                         "verdict": verdict})


def difficulty_table(stats: dict, answers: pd.DataFrame, n_boot: int, site: str = "mlp.hook_post") -> pd.DataFrame:
    """Per task level: the model's accuracy [CI] and ``site`` hoyer per layer group [CI]."""
    means = stats["ladder_means"]
    means = means[(means["site"] == site) & (means["metric"] == "hoyer")]
    out = []
    for (split, level), g in answers.groupby(["split", "level"], sort=True):
        task = split.partition("@")[0]
        acc = bootstrap_ci(g["correct"].astype(float), n_boot=n_boot)
        row = {"task": task, "level": level, "n": len(g), "accuracy [CI]": _ci(*acc, ".2f")}
        for group in GROUPS:
            m = means[(means["ladder"] == task) & (means["level"] == level) & (means["group"] == group)]
            row[f"hoyer {group}"] = _ci(*m[["mean", "lo", "hi"]].iloc[0], ".3f") if len(m) else "–"
        out.append(row)
    return pd.DataFrame(out)


def level_table(stats: dict, ladders: list[str], site: str = "mlp.hook_post") -> pd.DataFrame:
    """Per ladder level: ``site`` hoyer per layer group, mean [CI] over the level's prompts."""
    means = stats["ladder_means"]
    means = means[(means["site"] == site) & (means["metric"] == "hoyer") & means["ladder"].isin(ladders)]
    wide = means.assign(cell=[_ci(*x, ".3f") for x in zip(means["mean"], means["lo"], means["hi"])])
    n = wide.groupby(["ladder", "level"])["n_prompts"].max().rename("n")
    wide = wide.pivot(index=["ladder", "level"], columns="group", values="cell")
    return wide[[g for g in GROUPS if g in wide.columns]].add_prefix("hoyer ").join(n).reset_index()


def wrong_right_table(prompts: pd.DataFrame, answers: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Within each level: hoyer of wrongly vs rightly answered prompts, per site and layer group."""
    eff = accuracy_effects(prompts, answers, n_boot=n_boot)
    if eff.empty:
        return eff
    eff = eff[eff["metric"] == "hoyer"]
    out = []
    for (task, level, site), g in eff.groupby(["task", "level", "site"], sort=True):
        row = {"task": task, "level": level, "site": site,
               "n right / wrong": f"{g.n_right.iloc[0]} / {g.n_wrong.iloc[0]}"}
        for r in g.sort_values("layer").itertuples(index=False):
            star = " *" if r.p_holm < 0.05 else ""
            row[f"wrong_minus_right {r.group}"] = _ci(r.wrong_minus_right, r.wrong_minus_right_lo,
                                                      r.wrong_minus_right_hi) + star
        out.append(row)
    return pd.DataFrame(out)


def trend_rows(stats: dict, ladders: tuple[str, ...]) -> pd.DataFrame:
    t = stats["trends"]
    t = t[t["ladder"].isin(ladders) & (t["layer"] < 0) & (t["metric"] == "hoyer")]
    out = []
    for (ladder, site), g in t.groupby(["ladder", "site"], sort=True):
        per_layer = stats["trends"]
        per_layer = per_layer[(per_layer["ladder"] == ladder) & (per_layer["site"] == site)
                              & (per_layer["layer"] >= 0) & (per_layer["metric"] == "hoyer")]
        row = {"ladder": ladder, "site": site,
               "layers ↑ / ↓": f"{(per_layer['direction'] == 'increasing').sum()} / "
                               f"{(per_layer['direction'] == 'decreasing').sum()} of {len(per_layer)}"}
        for r in g.itertuples(index=False):
            row[f"rho {r.group}"] = _ci(r.rho, r.rho_lo, r.rho_hi, "+.2f")
        out.append(row)
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--unmatched", help="a `scan --unmatched` run of the same model to compare effect counts with")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    store = RunStore(args.runs_dir)
    run = store.open(args.run)
    prompts = run.read("prompts", allow_incomplete=True)  # a scan still answering its task prompts: done suites
    window = int(prompts["window"].iloc[0]) if "window" in prompts.columns else 0
    print(f"## {run.manifest.get('model')} — run `{run.run_id}` ({run.status}), "
          + (f"matched {window}-token windows" if window else "UNMATCHED whole prompts"))
    counts = prompts[prompts["site"] != "logits"].drop_duplicates(["suite", "split", "prompt_id"])
    print("\nPrompts per suite:", ", ".join(f"{s} {n}" for s, n in counts.groupby("suite", sort=False).size().items()))
    if args.unmatched:  # only the before/after counts
        before = store.open(args.unmatched).read("prompts", allow_incomplete=True)
        sites, suites = set(before["site"]) - {"logits"}, set(before["suite"])
        keep = lambda p: p[p["site"].isin(sites) & p["suite"].isin(suites) & p["split"].isin(["id", "ood"])]  # noqa
        rows = []
        for label, p in (("unmatched (whole prompts)", keep(before)), (f"matched {window}-token windows",
                                                                        keep(prompts))):
            pairs = np.zeros(len(p), dtype=bool)
            for metric, t in COUNT_METRICS:
                same = p["threshold"].isna().to_numpy() if math.isnan(t) else np.isclose(p["threshold"], t)
                pairs |= (p["metric"] == metric).to_numpy() & same
            n = n_significant(effect_table(p[pairs], n_boot=args.n_boot))
            for r in n.itertuples(index=False):
                rows.append({"view": label, "site": r.site, "metric": _name(r.metric, r.threshold),
                             "significant / up / down": f"{r.n_significant} / {r.n_up} / {r.n_down} of {r.n_tests}"})
        print("\n### Holm-significant layers before and after length control (same suites, sites, statistics)\n")
        table = pd.DataFrame(rows).pivot(index=["site", "metric"], columns="view",
                                         values="significant / up / down").reset_index()
        print(markdown(table))
        return
    stats = statistics(prompts, n_boot=args.n_boot)
    if "effects" in stats:
        print("\n### ID vs OOD effects, all OOD suites pooled (Holm within the pooled block)\n")
        print(markdown(effect_counts(stats["effects"])))
        print("\n### Per OOD family vs ID, mlp.hook_post hoyer (Holm within each family's block)\n")
        print(markdown(family_counts(stats["effects"])))
    if "detector" in stats:
        print("\n### OOD detector, leave one family out: sparsity profile vs the best baseline (AUROC, 95% CI)\n")
        print(markdown(detector_table(stats["detector"])))
        det = stats["detector"]
        wide = det.pivot(index="family", columns="method", values="auroc").round(2)
        print("\nEvery method's AUROC on the held-out family:\n")
        print(markdown(wide.reset_index()))
    if "answers" in run.manifest.get("tables", {}) or "answers" in run.done_parts():
        answers = run.read("answers", allow_incomplete=True)
        for site in ("mlp.hook_post", "hook_resid_post"):
            if site in set(prompts["site"]):
                print(f"\n### Difficulty ladders: accuracy and {site} hoyer per level (means, 95% CI)\n")
                print(markdown(difficulty_table(stats, answers, args.n_boot, site)))
        print("\n### Difficulty ladders: hoyer of wrong vs right answers within each level "
              "(levels with ≥ 3 of each; * = Holm p < 0.05 within the level)\n")
        print(markdown(wrong_right_table(prompts, answers, args.n_boot)))
    if "trends" in stats:
        ladders = tuple(sorted(set(stats["trends"]["ladder"])))
        print("\n### Trends along ladders, hoyer (Spearman rho vs level per layer group, 95% CI)\n")
        print(markdown(trend_rows(stats, ladders)))
        answered = "answers" in run.manifest.get("tables", {}) or "answers" in run.done_parts()
        plain = [name for name in ladders if not answered or name not in ("addition", "list_ops")]
        for site in ("mlp.hook_post", "hook_resid_post") if plain else ():
            if site in set(prompts["site"]):
                print(f"\n### Ladders without accuracy: {site} hoyer per level (means, 95% CI)\n")
                print(markdown(level_table(stats, plain, site)))


if __name__ == "__main__":
    main()
