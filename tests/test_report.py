"""Report: the ID/OOD summary recomputed by hand, figures hold the expected traces, the HTML page is self-contained."""

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from sparsescope.errors import UserError
from sparsescope.harvest.summary import summary_table
from sparsescope.show.report import figures, write_html
from sparsescope.show.terminal import print_summary
from sparsescope.store import RunStore

LAYERS = 4
SITES = ["hook_resid_pre", "attn.hook_z", "mlp.hook_post", "hook_resid_post"]
SUITES = [("prose", "id", 0), ("code", "id", 0), ("hex", "ood", 0), ("noise", "ood", 0),
          ("shuffle-0", "shuffle@0", 0), ("shuffle-25", "shuffle@25", 25), ("shuffle-100", "shuffle@100", 100)]
METRICS = [("hoyer", np.nan), ("near_zero_frac", 0.01), ("near_zero_frac", 0.1)]


def activations(seed=0, suites=SUITES) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [dict(run_id="r1", model="tiny", suite=suite, split=split, level=level, layer=layer, site=site,
                 metric=metric, threshold=t, value=rng.random(), n_tokens=int(rng.integers(1, 500)))
            for suite, split, level in suites for layer in range(LAYERS) for site in SITES for metric, t in METRICS]
    df = pd.DataFrame(rows)
    df.loc[3, "value"] = np.nan  # a metric undefined on a split carries no weight
    return df


def neurons(seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    width = 16
    frames = [pd.DataFrame(dict(run_id="r1", suite=suite, split=split, layer=layer, site=site, index=np.arange(width),
                                metric=metric, value=rng.random(width) ** 3))
              for suite, split, _ in SUITES for layer in range(LAYERS) for site in ["mlp.hook_post", "hook_resid_post"]
              for metric in ["fire_freq", "mean_abs"]]
    return pd.concat(frames, ignore_index=True)


def hand_summary(df, metric, threshold):
    """ID and OOD token-weighted means per (site, layer), by np.average over the raw rows."""
    rows = df[(df.metric == metric) & (df.threshold.isna() if np.isnan(threshold) else df.threshold == threshold)]
    rows = rows[rows.split.isin(["id", "ood"]) & rows.value.notna()]
    means = rows.groupby(["site", "layer", "split"]).apply(
        lambda g: np.average(g.value, weights=g.n_tokens), include_groups=False).unstack("split")
    return means["ood"] - means["id"]


@pytest.mark.parametrize("metric, threshold", [("hoyer", np.nan), ("near_zero_frac@0.1", 0.1)])
def test_summary_difference_equals_hand_groupby(metric, threshold):
    df = activations()
    summary = summary_table(df, metric, sites=None)
    expected = hand_summary(df, metric.partition("@")[0], threshold)
    got = summary.set_index(["site", "layer"])["ood_minus_id"]
    assert len(got) == len(SITES) * LAYERS
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    np.testing.assert_allclose(summary["ood_minus_id"], summary["ood"] - summary["id"])


def test_summary_default_sites_in_order_and_missing_ones_skipped():
    df = activations()
    assert list(dict.fromkeys(summary_table(df)["site"])) == ["mlp.hook_post", "hook_resid_post", "attn.hook_z"]
    without_z = df[df.site != "attn.hook_z"]
    assert list(dict.fromkeys(summary_table(without_z)["site"])) == ["mlp.hook_post", "hook_resid_post"]
    with pytest.raises(UserError, match="none of the sites"):
        summary_table(df, sites=["hook_mlp_out"])


def test_metric_choice_errors_name_the_fix():
    df = activations()
    with pytest.raises(UserError, match="metric 'teal' is not in this run.*hoyer"):
        summary_table(df, "teal")
    with pytest.raises(UserError, match="near_zero_frac@0.01, near_zero_frac@0.1"):
        summary_table(df, "near_zero_frac")
    assert summary_table(df, "near_zero_frac", threshold=0.01)["ood_minus_id"].notna().all()
    with pytest.raises(UserError, match="not a number"):
        summary_table(df, "near_zero_frac@high")
    with pytest.raises(UserError, match="no 'id' or 'ood' split"):
        summary_table(activations(suites=SUITES[4:]))


def test_print_summary_one_row_per_layer():
    console = Console(record=True, width=250)
    summary = summary_table(activations())
    print_summary(summary, console, title="hoyer")
    text = console.export_text()
    first = summary.iloc[0]
    assert f"{first['id']:.3f}" in text and f"{first['ood_minus_id']:+.3f}" in text
    assert all(site in text for site in ["mlp.post", "resid_post", "attn.z"])
    assert len(text.splitlines()) == LAYERS + 4  # title, two header lines, rule


def test_figures_hold_the_expected_traces():
    df, nr = activations(), neurons()
    figs = figures({"activations": df, "neurons": nr})
    assert set(figs) == {"heatmap", "difference", "harvest", "ladder", "fire_freq"}

    heat = figs["heatmap"]
    assert [t.name for t in heat.data] == ["id", "ood", "shuffle@0", "shuffle@25", "shuffle@100"]
    assert [t.visible for t in heat.data] == [True] + [False] * 4
    ood = heat.data[1]
    cell = df[(df.metric == "hoyer") & (df.split == "ood") & (df.layer == 2) & (df.site == "mlp.hook_post")]
    assert ood.z[list(ood.y).index("mlp.hook_post")][2] == pytest.approx(np.average(cell.value, weights=cell.n_tokens))

    diff = figs["difference"]
    summary = summary_table(df, sites=None).set_index(["site", "layer"])["ood_minus_id"]
    assert [t.name for t in diff.data] == SITES
    for trace in diff.data:
        np.testing.assert_allclose(trace.y, summary[trace.name].to_numpy())

    assert len(figs["harvest"].data) == 2 * len(SITES)  # ID and OOD line per site panel
    ladder_levels = sorted({x for t in figs["ladder"].data for x in t.x})
    assert ladder_levels == [0, 25, 100] and len(figs["ladder"].data) == len(SITES)

    hist = figs["fire_freq"]
    assert [t.name for t in hist.data] == ["id", "ood"] and hist.layout.yaxis.type == "log"
    ids = nr[(nr.metric == "fire_freq") & (nr.split == "id") & (nr.site == "mlp.hook_post")]["value"]
    shares = pd.cut(ids, np.linspace(0, 1, 51), include_lowest=True).value_counts(normalize=True, sort=False)
    np.testing.assert_allclose(hist.data[0].y, shares.to_numpy())
    assert sum(hist.data[0].y) == pytest.approx(1.0)


def test_figures_without_ood_ladder_or_neurons():
    only_id = activations(suites=SUITES[:2])
    assert set(figures({"activations": only_id})) == {"heatmap", "harvest"}
    only_ladder = activations(suites=SUITES[4:])
    assert set(figures({"activations": only_ladder})) == {"heatmap", "ladder"}


def test_html_report_is_self_contained(tmp_path):
    store = RunStore(tmp_path)
    run = store.create({"kind": "scan", "model": "smollm2-135m", "weights_note": "dequantised from Q4_1 GGUF",
                        "config": {"seq_len": 128, "metrics": ["hoyer"]}, "suites": ["prose", "hex"]})
    tables = {"activations": activations(), "neurons": neurons()}
    run.finalize(tables)
    path = write_html(store.open(run.run_id))
    assert path == run.path / "report.html"
    page = path.read_text(encoding="utf-8")
    for fig in figures(tables).values():
        assert fig.layout.title.text in page
    assert "smollm2-135m" in page and "dequantised from Q4_1 GGUF" in page and "seq_len" in page
    assert '<script src="http' not in page
    assert page.count("plotly.js v") == 1  # the library is inlined once, not per figure
    assert not list(run.path.glob("*.tmp"))

    elsewhere = write_html(run, tables, path=tmp_path / "r.html", metric="near_zero_frac@0.1")
    assert "near_zero_frac@0.1 by layer and site" in elsewhere.read_text(encoding="utf-8")


def test_html_report_of_a_ladder_only_run(tmp_path):
    run = RunStore(tmp_path).create({"kind": "scan", "model": "tiny"})
    page = write_html(run, {"activations": activations(suites=SUITES[4:])}).read_text(encoding="utf-8")
    assert "hoyer against corruption level" in page and "ID vs OOD" not in page
