"""The explorer app: every page under Streamlit's AppTest on a store of real tiny-model runs and on an empty store;
the harvest pricing and budgeted choice against independent references; `sparsescope app` bad input."""

import base64
import itertools
import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from sparsescope.cli import app
from sparsescope.show import harvest, runs as show_runs
from sparsescope.store import RunStore

EXPLORER = str(Path(__file__).resolve().parents[1] / "apps" / "explorer.py")
PAGES = {"pages/harvest.py": "Harvest: where latent sparsity pays", "pages/overview.py": "Overview",
         "pages/id_ood.py": "ID vs OOD", "pages/spiking.py": "Spiking & head-to-head", "pages/neurons.py": "Neurons",
         "pages/sae.py": "SAE features", "pages/circuits.py": "Circuits"}


def open_page(runs, page, monkeypatch) -> AppTest:
    monkeypatch.setenv("SPARSESCOPE_RUNS", str(runs))
    at = AppTest.from_file(EXPLORER, default_timeout=120)
    at.run()
    if page != "pages/harvest.py":
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [PAGES[page]]
    return at


def text(at: AppTest) -> str:
    parts = [e.value for tree in (at, at.sidebar) for kind in ("markdown", "caption", "info", "warning")
             for e in getattr(tree, kind)]
    return "\n".join(str(p) for p in parts)


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page with this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


@pytest.mark.parametrize("page, charts", [("pages/harvest.py", 1), ("pages/overview.py", 2), ("pages/id_ood.py", 3),
                                          ("pages/spiking.py", 3), ("pages/neurons.py", 3), ("pages/sae.py", 3),
                                          ("pages/circuits.py", 3)])
def test_every_page_renders_the_stored_runs(explorer_store, page, charts, monkeypatch):
    runs, ids = explorer_store
    at = open_page(runs, page, monkeypatch)
    pickers = {"overview_runs": [ids["scan"]], "idood_runs": [ids["scan"]], "neuron_run": ids["scan"]}
    for key, value in pickers.items():
        if key in [w.key for w in at.get("multiselect") + at.get("selectbox")]:
            (at.multiselect(key=key) if isinstance(value, list) else at.selectbox(key=key)).set_value(value).run()
            assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) >= charts
    assert text(at).count("What this shows") >= len(at.get("plotly_chart"))  # a line under every chart
    missing = [i.value for i in at.info if i.value.startswith("No ")]
    assert not missing  # the store has every kind of run this page reads


def test_incomplete_runs_are_listed_and_never_read(explorer_store, monkeypatch):
    runs, ids = explorer_store
    at = open_page(runs, "pages/harvest.py", monkeypatch)  # the sidebar lists them on every page
    listed = text(at)
    assert ids["corrupt"] in listed and "activations.parquet is unreadable" in listed
    assert ids["half"] in listed and "process is gone" in listed
    at = open_page(runs, "pages/overview.py", monkeypatch)
    catalog = frame_with(at, "status").set_index("run_id")
    assert catalog.loc[ids["corrupt"], "status"] == "incomplete" and catalog.loc[ids["scan"], "status"] == "complete"
    options = at.multiselect(key="overview_runs").options
    assert not any(ids["corrupt"] in o or ids["half"] in o for o in options)


def test_runs_of_two_models_get_a_notice(explorer_store, monkeypatch):
    runs, ids = explorer_store
    at = open_page(runs, "pages/overview.py", monkeypatch)
    at.multiselect(key="overview_runs").set_value([ids["scan"], ids["scan_other"]]).run()
    assert not at.exception
    assert any("different models" in w.value for w in at.warning)
    assert len(at.get("plotly_chart")) >= 2  # side by side, one heatmap per run


def test_budget_slider_recomputes_the_plan(explorer_store, monkeypatch):
    runs, _ = explorer_store
    at = open_page(runs, "pages/harvest.py", monkeypatch)
    chosen = []
    for pct in (0.0, 20.0):
        at.slider[0].set_value(pct).run()
        assert not at.exception
        chosen.append(len(frame_with(at, "uJ_saved")))
    assert chosen[0] <= chosen[1]
    assert chosen[1] > 0
    labels = {b.label for b in at.get("download_button")}
    assert labels >= {"Download plan YAML", "Download the planner's own plan.yaml"}
    per_linear = frame_with(at, "widths")  # the planner's recommendation is marked per linear
    assert set(per_linear["planner_choice"].dropna()) == {"sparse 0.5"}


def test_harvest_without_a_planner_run_plans_from_spike_and_compare(explorer_store, tmp_path, monkeypatch):
    import shutil

    runs, ids = explorer_store
    for run in runs.iterdir():  # the same store without the planner's run
        if "-plan" not in run.name:
            shutil.copytree(run, tmp_path / run.name)
    at = open_page(tmp_path, "pages/harvest.py", monkeypatch)
    at.slider[0].set_value(20.0).run()
    picked = frame_with(at, "uJ_saved")
    assert len(picked) and set(picked["choice"]) <= {"spike", "int8"} and picked["layer"].is_unique
    assert ids["compare"] in text(at) and ids["spike"] in text(at)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_every_page_on_an_empty_store_says_how_to_make_a_run(tmp_path, kind, monkeypatch):
    runs = tmp_path / "runs"
    if kind == "empty":
        runs.mkdir()
    for page in PAGES:
        at = open_page(runs, page, monkeypatch)
        assert "sparsescope " in text(at)  # the command that produces the data


def figure(at: AppTest, key: str) -> dict:
    """The plotly figure of the chart with this key, as the browser receives it."""
    return json.loads(next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key)).proto.spec)


def values(array) -> np.ndarray:
    """A trace's array as sent to the browser (plotly ships numeric arrays as base64 typed arrays)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array, dtype=float)


def test_sae_page_shows_the_real_sae_run(explorer_store, monkeypatch):
    runs, ids = explorer_store
    run = RunStore(runs).open(ids["sae"])
    at = open_page(runs, "pages/sae.py", monkeypatch)
    stored = run.read("sae_metrics")
    shown = frame_with(at, "explained_variance")
    assert len(shown) == len(stored)
    np.testing.assert_allclose(np.sort(shown["l0"]), np.sort(stored["l0"]))
    features = frame_with(at, "feature")  # one row per feature of the trained dictionary
    assert sorted(features["feature"]) == list(range(int(stored["d_sae"].iloc[0])))
    contexts = run.read("sae_contexts")
    feature = at.number_input[0].value
    listed = [m.value for m in at.markdown if m.value.startswith("- `")]
    assert len(listed) == min(10, int((contexts["feature"] == feature).sum())) and all("«" in t for t in listed)


def test_circuits_page_shows_one_variant_of_the_real_circuits_run(explorer_store, monkeypatch):
    runs, ids = explorer_store
    effects = RunStore(runs).open(ids["circuits"]).read("effects")
    at = open_page(runs, "pages/circuits.py", monkeypatch)
    variants = next(s for s in at.selectbox if s.label == "Model variant")
    assert set(variants.options) == set(effects["variant"]) and len(variants.options) == 2  # dense and pruned
    for variant in variants.options:
        next(s for s in at.selectbox if s.label == "Model variant").set_value(variant).run()
        assert not at.exception
        task, method, kind = (next(s for s in at.selectbox if s.label == name).value
                              for name in ("Task", "Method", "Component"))
        want = effects[(effects["task"] == task) & (effects["method"] == method) & (effects["kind"] == kind)
                       & (effects["variant"] == variant)]["effect"]
        z = values(figure(at, "effects")["data"][0]["z"])
        np.testing.assert_allclose(np.sort(z[~np.isnan(z)]), np.sort(want))  # this variant's effects, none averaged


def test_id_ood_page_draws_the_stored_roc_curves(explorer_store, monkeypatch):
    from sklearn.metrics import auc

    runs, ids = explorer_store
    run = RunStore(runs).open(ids["scan"])
    detector, roc = run.read("detector"), run.read("roc")
    assert len(detector) and set(map(tuple, roc[["family", "method"]].drop_duplicates().to_numpy())) == set(
        map(tuple, detector[["family", "method"]].to_numpy()))
    for (family, method), pts in roc.groupby(["family", "method"]):  # the stored points give the stored AUROC
        pts = pts.sort_values("point")
        want = detector.set_index(["family", "method"]).at[(family, method), "auroc"]
        assert auc(pts["fpr"], pts["tpr"]) == pytest.approx(want, abs=1e-9)
    at = open_page(runs, "pages/id_ood.py", monkeypatch)
    at.multiselect(key="idood_runs").set_value([ids["scan"]]).run()
    curves = [t for t in figure(at, f"roc_{ids['scan']}")["data"] if t.get("name")]
    assert len(curves) == len(detector)  # the profile and every baseline, per held-out family
    for t in curves:
        family, rest = t["name"].split(" · ")
        method = rest.split(" ")[0]
        pts = roc[(roc["family"] == family) & (roc["method"] == method)].sort_values("point")
        np.testing.assert_allclose(values(t["x"]), pts["fpr"])
        np.testing.assert_allclose(values(t["y"]), pts["tpr"])


# -- the show layer against independent references --------------------------------------------------------------------
def test_linear_shapes_match_the_model(explorer_store, model_dir):
    import transformers

    runs, ids = explorer_store
    shapes = harvest.linear_shapes(show_runs.load(runs, "energy", [ids["spike"]]),
                                   show_runs.load(runs, "spikes", [ids["spike"]]))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    names = {"attn.W_Q": "self_attn.q_proj", "attn.W_K": "self_attn.k_proj", "attn.W_V": "self_attn.v_proj",
             "attn.W_O": "self_attn.o_proj", "mlp.W_gate": "mlp.gate_proj", "mlp.W_in": "mlp.up_proj",
             "mlp.W_out": "mlp.down_proj"}
    assert len(shapes) == 2 * len(names)
    for r in shapes.itertuples():
        w = model.get_submodule(f"model.layers.{r.layer}.{names[r.site]}").weight
        assert (r.width_a, r.width_b) == tuple(sorted(w.shape))


def test_harvest_table_int8_and_activation_savings(explorer_store):
    runs, ids = explorer_store
    load = lambda t, k: show_runs.load(runs, t, [ids[k]])  # noqa: E731
    table = harvest.harvest_table(load("energy", "spike"), load("spikes", "spike"), load("quality", "spike"),
                                  load("activations", "scan"), load("knees", "weights"))
    a, b = (table["widths"].str.split("×", expand=True).astype(int)[i] for i in (0, 1))
    # int8 weights read 3 of every 4 fp32 weight bytes less: (32 − 8)/8 bytes per weight per token, at 162.5 pJ/B.
    np.testing.assert_allclose(table["int8_bytes_saved"], a * b * 3)
    np.testing.assert_allclose(table["int8_uJ_saved"], a * b * 3 * 162.5e-6)
    # input sparsity s skips the weight columns of zero inputs: s·in·out·4 bytes (activations are still read).
    have = table["available"].notna()
    assert have.sum() == len(table)  # the scan recorded every linear's input site
    np.testing.assert_allclose(table.loc[have, "act_bytes_saved"], (table["available"] * a * b * 4)[have])
    assert table["spike_dppl_layer"].notna().all() and table["essential_weight_sparsity"].notna().all()


def brute_force(c: pd.DataFrame, budget: float) -> float:
    best = 0.0
    options = [[None, *idx] for idx in c.groupby("layer").indices.values()]
    for pick in itertools.product(*options):
        rows = c.loc[[i for i in pick if i is not None]]
        if rows["dppl"].clip(lower=0).sum() <= budget + 1e-12:
            best = max(best, rows["uJ_saved"].clip(lower=0).sum())
    return best


@pytest.mark.parametrize("seed", range(6))
def test_choose_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 5
    c = pd.DataFrame({"layer": np.repeat(range(n), 2), "choice": ["spike", "int8"] * n,
                      "uJ_saved": rng.uniform(-0.1, 1, 2 * n), "dppl": rng.choice([0.0, 0.1, 0.2, 0.3, -0.05], 2 * n)})
    for budget in (0.0, 0.1, 0.25, 0.5, 2.0):
        got = harvest.choose(c, budget)
        sel = got[got["selected"]]
        assert sel["layer"].is_unique
        assert sel["dppl"].clip(lower=0).sum() <= budget + 1e-12
        assert sel["uJ_saved"].sum() == pytest.approx(brute_force(c, budget))
    with pytest.raises(ValueError):
        harvest.choose(c, -1)


def test_plan_yaml_round_trips_to_the_intervene_plan():
    from sparsescope.intervene import Plan

    chosen = pd.DataFrame({"layer": [3, 5], "choice": ["spike", "int8"]})
    plan = harvest.plan_for(chosen, {"k": 3, "coding": "bitwise"})
    back = Plan.from_dict(plan.to_dict())
    assert [(r.lever, r.params, r.layers) for r in back.rules] == [("spike", {"k": 3, "coding": "bitwise"}, [3]),
                                                                     ("quant", {"bits": 8}, [5])]
    planner = pd.DataFrame({"layer": [2, 2, -1], "site": ["mlp.W_out", "attn.W_Q", "lm_head"],
                            "choice": ["int8+sparse 0.5", "dense", "int8"],
                            "params": ['{"sparsity": 0.5, "weights": "int8"}', "{}",
                                       '{"sparsity": 0.0, "weights": "int8"}']})
    rules = harvest.plan_for(planner).rules  # `sparsescope plan` rows: sparse-lever rules; dense and the head add none
    assert [(r.lever, r.params, r.layers, r.sites) for r in rules] == [
        ("sparse", {"sparsity": 0.5, "weights": "int8"}, [2], ["mlp.W_out"])]


# -- `sparsescope app` bad input -----------------------------------------------------------------------------------
def test_app_port_in_use_is_one_line_naming_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = CliRunner().invoke(app, ["app", "--runs", str(tmp_path), "--port", str(port)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) <= 2 and "--port" in res.output and str(port) in res.output


@pytest.mark.parametrize("args, needle", [(["--port", "70000"], "--port"),
                                         (["--host", "no.such.host.invalid"], "--host")])
def test_app_bad_options(tmp_path, args, needle):
    res = CliRunner().invoke(app, ["app", "--runs", str(tmp_path), *args])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output


def test_app_runs_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = CliRunner().invoke(app, ["app", "--runs", str(f)])
    assert res.exit_code == 2 and "is a file" in res.output
