"""Report statistics over prompts: effect summary, layer groups, ladder trends, detector; the CLI's --ladders."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from _tables import prompts_table
from sparsescope.cli import app
from sparsescope.harvest.summary import accuracy_effects, effect_summary, layer_groups, statistics, trend_summary
from sparsescope.stats import holm
from test_cli import one_line_error

runner = CliRunner()
LEVELS = (0, 10, 25, 50, 100)


def table(n_ood: int = 20, seed: int = 0) -> pd.DataFrame:
    """ID, two OOD families shifted by +2 on feature 0 (layer 0, attn.hook_z, near_zero_frac@0.1), one ladder
    rising with level on every feature, and the logits baseline rows (nll higher for OOD)."""
    def value(rng, split, level, f, i):
        return rng.normal(2.0 * (split == "ood" and f == 0) + 0.02 * level, 1.0)

    groups = [("prose", "id", 0, 30), ("hex", "ood", 0, n_ood), ("noise", "ood", 0, n_ood)]
    groups += [("ladder:shuffle", f"shuffle@{lv}", lv, 10) for lv in LEVELS]
    df = prompts_table(groups, value, seed=seed)
    prompts = df[df["layer"] == 0].drop_duplicates(["suite", "split", "prompt_id"])
    prompts = prompts[prompts["split"].isin(["id", "ood"])]
    rng = np.random.default_rng(seed)
    logits = [prompts.assign(layer=-1, site="logits", metric=m, threshold=np.nan,
                             value=rng.normal(prompts["split"].eq("ood") * shift + base, 0.5))
              for m, base, shift in (("nll", 3.0, 1.0), ("max_prob", 0.5, -0.1))]
    return pd.concat([df, *logits], ignore_index=True)


def test_effect_summary_counts_holm_significant_layers_and_finds_the_planted_effect():
    stats = statistics(table(), n_boot=200)
    eff = stats["effects"]
    assert set(eff["metric"]) == {"near_zero_frac"}  # zero_frac is not one of the report's metrics
    assert set(eff["family"]) == {"all", "hex", "noise"}  # pooled, then each OOD suite against ID
    summary = effect_summary(eff)
    for r in summary.itertuples(index=False):
        block = eff[eff["family"] == r.family].reset_index(drop=True)  # Holm within each family's block
        rows = block[block["site"] == r.site]
        assert r.n_significant == (holm(block["p"])[rows.index] < 0.05).sum()
    z = summary.set_index(["family", "site"]).loc[("all", "attn.hook_z")]
    assert z["n_significant"] >= 1 and z["top_layer"] == 0 and z["g"] > 1 and z["ood_minus_id_lo"] > 0
    assert z["n_up"] == z["n_significant"] and z["n_down"] == 0


def test_layer_groups_average_each_third_of_the_layers_per_prompt():
    df = table()
    g = layer_groups(df[df["site"] != "logits"])
    one = df[(df["prompt_id"] == "prose-3") & (df["site"] == "mlp.hook_post") & (df["metric"] == "near_zero_frac")]
    by_hand = one.set_index("layer")["value"]  # 3 layers → early, middle, late = layers 0, 1, 2
    got = g[(g["prompt_id"] == "prose-3") & (g["site"] == "mlp.hook_post") & (g["metric"] == "near_zero_frac")]
    np.testing.assert_allclose(got.set_index("layer")["value"].sort_index(), by_hand.sort_index())


def test_trends_find_the_rising_ladder_and_the_detector_beats_chance():
    stats = statistics(table(), n_boot=200)
    s = trend_summary(stats["trends"])
    assert (s["n_increasing"] == s["n_layers"]).all() and set(s["ladder"]) == {"shuffle"}
    assert s["rho_early"].str.startswith("+").all()
    means = stats["ladder_means"]
    assert set(means["group"]) == {"early", "middle", "late"} and (means["lo"] <= means["hi"]).all()
    det = stats["detector"]
    assert set(det["family"]) == {"hex", "noise"} and set(det["method"]) == {"sparsity_profile", "nll_per_token",
                                                                             "max_softmax", "baselines_lr"}
    assert (det.loc[det["method"] == "sparsity_profile", "auroc"] > 0.6).all()


def test_one_prompt_ood_gives_undefined_cis_with_a_warning():
    df = table(n_ood=1)
    df = df[df["suite"] != "noise"]
    with pytest.warns(UserWarning, match="fewer than 2 prompts"):
        stats = statistics(df, n_boot=100)
    assert stats["effects"][["ood_minus_id_lo", "ood_minus_id_hi", "g_lo", "g_hi"]].isna().all().all()
    assert "detector" not in stats  # one OOD family: nothing to hold out


def test_scan_with_a_ladder_records_its_levels_and_reports_its_trend(model_dir, tmp_path):
    res = runner.invoke(app, ["scan", "--model", str(model_dir), "--suites", "prose", "--ladders", "shuffle",
                              "--sites", "mlp.hook_post", "--metrics", "hoyer,near_zero_frac@0.1",
                              "--max-tokens", "16", "--window", "8", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    acts = pd.read_parquet(run_dir / "activations.parquet")
    assert set(acts["split"]) == {"id", *(f"shuffle@{lv}" for lv in LEVELS)}
    prompts = pd.read_parquet(run_dir / "prompts.parquet")
    ladder_ids = prompts.loc[prompts["split"] == "shuffle@25", "prompt_id"]
    assert ladder_ids.str.endswith("@25").all()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["ladders"]["shuffle"]["levels"] == list(LEVELS)
    trends = pd.read_parquet(run_dir / "trends.parquet")
    assert set(trends["ladder"]) == {"shuffle"} and trends["rho"].notna().all()
    assert "Trend along corruption ladders" in (run_dir / "report.html").read_text()
    assert "Ladder trends" in res.output


def test_unknown_ladder_is_a_one_line_error(model_dir, tmp_path):
    res = runner.invoke(app, ["scan", "--model", str(model_dir), "--ladders", "bogus", "--runs-dir", str(tmp_path)])
    one_line_error(res, "unknown ladder 'bogus'")


def test_encoder_runs_without_logits_rows_get_the_detector_with_the_token_count_baseline_only():
    df = table().assign(prompt_tokens=32)
    with pytest.warns(UserWarning, match="no LM head"):
        stats = statistics(df[df["site"] != "logits"], n_boot=100)
    assert set(stats["detector"]["method"]) == {"sparsity_profile", "token_count"}


def test_accuracy_effects_compare_wrong_with_right_answers_within_each_level():
    """Point estimates against a plain pandas difference of means; a level with too few wrong answers is skipped."""
    def value(rng, split, level, f, i):  # wrong answers (i % 3 == 0) at level 1 are sparser by 0.5 everywhere
        return rng.normal() + (0.5 if split == "addition@1" and i % 3 == 0 else 0.0)

    prompts = prompts_table([("difficulty:addition", "addition@1", 1, 12),
                             ("difficulty:addition", "addition@2", 2, 12)], value, seed=4)
    ids = prompts.drop_duplicates(["split", "prompt_id"])[["split", "prompt_id"]]
    answers = ids.assign(correct=[not (s == "addition@1" and int(p.split("-")[-1].split("@")[0]) % 3 == 0)
                                  and not (s == "addition@2" and p.endswith("-0@2"))
                                  for s, p in zip(ids["split"], ids["prompt_id"])])
    out = accuracy_effects(prompts, answers, n_boot=200)
    assert set(out["level"]) == {1} and (out["n_right"] == 8).all() and (out["n_wrong"] == 4).all()
    raw = prompts[(prompts["split"] == "addition@1") & (prompts["metric"] == "near_zero_frac")]
    raw = raw.merge(answers, on=["split", "prompt_id"])
    for r in out[out["metric"] == "near_zero_frac"].itertuples():
        cell = raw[(raw["layer"] == r.layer) & (raw["site"] == r.site)]
        expected = cell.loc[~cell["correct"], "value"].mean() - cell.loc[cell["correct"], "value"].mean()
        assert r.wrong_minus_right == pytest.approx(expected) and r.wrong_minus_right_lo < expected
        assert r.group == ("early", "middle", "late")[r.layer]
    assert set(out["metric"]) == {"near_zero_frac"}  # zero_frac is not an effect metric
