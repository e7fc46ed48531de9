"""Run store: tidy tables round-trip, crashes resume, damaged runs are never read as complete, DuckDB across runs."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sparsescope.errors import UserError
from sparsescope.store import RunStore, atomic_write_parquet, query
from sparsescope.store import run as run_module

LAYERS, SITES = 3, ["mlp.hook_post", "hook_resid_post"]


def tidy(key: str, run_id: str = "r") -> dict[str, pd.DataFrame]:
    """Activations and neurons rows for one suite `key`, deterministic in `key` (so reruns give equal tables)."""
    rng = np.random.default_rng(sum(map(ord, key)))
    rows = [(layer, site, metric, t) for layer in range(LAYERS) for site in SITES
            for metric, t in [("hoyer", np.nan), ("near_zero_frac", 0.01), ("near_zero_frac", 0.1)]]
    layer, site, metric, threshold = map(list, zip(*rows))
    n = len(rows)
    activations = pd.DataFrame({
        "run_id": run_id, "model": "tiny", "suite": key, "split": "ood" if key.startswith("ood") else "id",
        "level": 0, "layer": layer, "site": site, "metric": metric, "threshold": threshold,
        "value": rng.random(n), "n_tokens": rng.integers(10, 100, n),
    })
    width = 4
    neurons = pd.DataFrame({
        "run_id": run_id, "suite": key, "split": "id", "layer": np.repeat(np.arange(LAYERS), width),
        "site": "mlp.hook_post", "index": np.tile(np.arange(width), LAYERS), "metric": "fire_freq",
        "value": rng.random(LAYERS * width),
    })
    return {"activations": activations, "neurons": neurons}


def complete_run(store, keys=("id-prose", "ood-hex"), **manifest):
    run = store.create({"kind": "scan", "model": "tiny"} | manifest)
    for key in keys:
        run.write_part(key, tidy(key, run.run_id))
    run.finalize()
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_round_trip_keeps_dtypes_and_nan_thresholds(tmp_path):
    store = RunStore(tmp_path)
    run = complete_run(store, keys=["id-prose"])
    again = store.open(run.run_id)
    assert again.status == "complete" and again.problem() is None
    for name, expected in tidy("id-prose", run.run_id).items():
        got = again.read(name)
        pd.testing.assert_frame_equal(got, expected)
    thresholds = again.read("activations")["threshold"]
    assert thresholds.isna().sum() == LAYERS * len(SITES)


def test_manifest_fields(tmp_path):
    run = RunStore(tmp_path).create({"kind": "scan", "model": "HuggingFaceTB/SmolLM2-135M", "suites": ["a"],
                                     "config": {"seq_len": 64}, "weights_note": "dequantised from Q4_1 GGUF"})
    on_disk = json.loads((run.path / "manifest.json").read_text())
    assert run.run_id.endswith("-smollm2-135m-scan") and on_disk["run_id"] == run.run_id
    for field in ["kind", "model", "model_revision", "suites", "config", "package_version", "status", "created",
                  "updated", "parts_done"]:
        assert field in on_disk
    assert on_disk["status"] == "running" and on_disk["weights_note"] == "dequantised from Q4_1 GGUF"


def test_run_ids_are_unique_and_sorted(tmp_path):
    store = RunStore(tmp_path)
    runs = [store.create({"kind": "scan", "model": "tiny"}) for _ in range(3)]  # same second, most likely
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == 3
    assert [r.run_id for r in store.runs()] == ids == sorted(ids)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    store = RunStore(tmp_path)
    keys = ["id-prose", "id-code", "ood-hex"]
    reference = complete_run(store, keys=keys)

    run = store.create({"kind": "scan", "model": "tiny"})
    for key in keys[:2]:
        run.write_part(key, tidy(key, reference.run_id))
    # The kill: the third part's temp file is left behind and the manifest still says "running" for a dead process.
    (run.path / "parts" / ".ood-hex.activations.parquet.abc123.tmp").write_bytes(b"PAR1 half a file")
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["pid"] = dead_pid()
    (run.path / "manifest.json").write_text(json.dumps(manifest))

    again = store.open(run.run_id)
    assert again.status == "incomplete"
    assert again.done_parts() == {"id-prose", "id-code"}
    with pytest.raises(UserError, match=f"--resume {run.run_id}"):
        again.read("activations")
    partial = again.read("activations", allow_incomplete=True)
    assert len(partial) == 2 * len(tidy("x")["activations"])

    again.write_part("ood-hex", tidy("ood-hex", reference.run_id))
    assert store.open(run.run_id).status == "running"  # resumed by this (live) process
    again.finalize()
    for name in ["activations", "neurons"]:
        pd.testing.assert_frame_equal(store.open(run.run_id).read(name), reference.read(name))
    assert not list(again.path.rglob("*.tmp"))


def test_crash_between_part_files_loses_only_that_part(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run = store.create({"kind": "scan", "model": "tiny"})
    run.write_part("id-prose", tidy("id-prose"))

    calls = []

    def dies_on_second_table(path, df):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return atomic_write_parquet(path, df)

    monkeypatch.setattr(run_module, "atomic_write_parquet", dies_on_second_table)
    with pytest.raises(KeyboardInterrupt):
        run.write_part("id-code", tidy("id-code"))
    monkeypatch.undo()

    again = store.open(run.run_id)
    assert again.done_parts() == {"id-prose"}
    pd.testing.assert_frame_equal(again.read_parts("activations"), tidy("id-prose")["activations"])


def test_part_files_without_manifest_entry_are_not_done(tmp_path):
    run = RunStore(tmp_path).create({"kind": "scan", "model": "tiny"})
    run.write_part("id-prose", tidy("id-prose"))
    for name, df in tidy("id-code").items():  # files written, manifest update never happened
        atomic_write_parquet(run._part_path("id-code", name), df)
    assert RunStore(tmp_path).open(run.run_id).done_parts() == {"id-prose"}


def test_rewriting_a_part_replaces_it(tmp_path):
    run = RunStore(tmp_path).create({"kind": "scan", "model": "tiny"})
    run.write_part("id-prose", tidy("id-prose"))
    run.write_part("id-prose", tidy("id-code"))
    run.finalize()
    pd.testing.assert_frame_equal(run.read("activations"), tidy("id-code")["activations"])


def _remove_manifest(run):
    (run.path / "manifest.json").unlink()


def _corrupt_manifest(run):
    (run.path / "manifest.json").write_text('{"run_id": "x", "status": "compl')


def _remove_table(run):
    (run.path / "activations.parquet").unlink()


def _truncate_table(run):
    file = run.path / "activations.parquet"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_remove_manifest, _corrupt_manifest, _remove_table, _truncate_table])
def test_damaged_run_is_incomplete_never_read(tmp_path, damage):
    store = RunStore(tmp_path)
    good = complete_run(store)
    bad = complete_run(store)
    damage(bad)

    again = store.open(bad.run_id)
    assert again.status == "incomplete" and again.problem()
    # with its manifest gone nothing says which parts are done: the hint is to record it again, not to resume
    hint = "record it again" if damage in (_remove_manifest, _corrupt_manifest) else f"--resume {bad.run_id}"
    with pytest.raises(UserError, match=rf"run {bad.run_id} \(status incomplete\).*{hint}"):
        again.read("activations")
    listed = store.list().set_index("run_id")["status"]
    assert listed[bad.run_id] == "incomplete" and listed[good.run_id] == "complete"
    assert store.latest(status="complete").run_id == good.run_id
    ids = query("SELECT DISTINCT run_id FROM activations", tmp_path)["run_id"]
    assert list(ids) == [good.run_id]


def test_running_and_failed_runs_are_refused(tmp_path):
    store = RunStore(tmp_path)
    run = store.create({"kind": "spike", "model": "tiny"})
    run.write_part("id-prose", tidy("id-prose"))
    assert store.open(run.run_id).status == "running"  # this test process is alive
    with pytest.raises(UserError, match="left running"):
        run.read("activations")
    run.mark_incomplete("KeyboardInterrupt")
    with pytest.raises(UserError, match=rf"left incomplete \(KeyboardInterrupt\).*sparsescope spike --resume"):
        store.open(run.run_id).read("activations")


def test_query_across_two_runs_skips_incomplete(tmp_path):
    store = RunStore(tmp_path)
    first, second = complete_run(store), complete_run(store, keys=["id-prose"])
    third = store.create({"kind": "scan", "model": "tiny"})
    third.write_part("id-prose", tidy("id-prose", "third"))
    counts = query("SELECT run_id, count(*) AS n FROM activations GROUP BY run_id ORDER BY run_id", tmp_path)
    per_part = len(tidy("x")["activations"])
    assert counts.to_dict("list") == {"run_id": [first.run_id, second.run_id], "n": [2 * per_part, per_part]}
    joined = query("SELECT count(*) AS n FROM neurons JOIN activations USING (run_id, suite)", tmp_path)
    assert joined["n"][0] > 0
    with pytest.raises(UserError, match="tables you can query: activations, neurons"):
        query("SELECT * FROM prompts", tmp_path)


def test_query_sees_extra_tables_and_needs_complete_runs(tmp_path):
    with pytest.raises(UserError, match="no complete runs"):
        query("SELECT 1", tmp_path)
    run = complete_run(RunStore(tmp_path))
    run.write_table("summary", pd.DataFrame({"layer": [0, 1], "diff": [0.5, -0.25]}))
    assert query("SELECT sum(diff) AS s FROM summary", tmp_path)["s"][0] == 0.25
    assert run.write_file("report.html", "<html></html>").read_text() == "<html></html>"


def test_open_by_prefix_and_helpful_errors(tmp_path):
    store = RunStore(tmp_path)
    a = store.create({"kind": "scan", "model": "tiny"}, run_id="alpha-scan")
    store.create({"kind": "scan", "model": "tiny"}, run_id="beta-scan-1")
    store.create({"kind": "scan", "model": "tiny"}, run_id="beta-scan-2")
    assert store.open("alp").path == a.path
    with pytest.raises(UserError, match="matches 2 runs"):
        store.open("beta")
    with pytest.raises(UserError, match="did you mean alpha-scan"):
        store.open("alpha-scna")
    with pytest.raises(UserError, match="already exists"):
        store.create({"kind": "scan"}, run_id="alpha-scan")
    with pytest.raises(UserError, match="plain folder name"):
        store.create({"kind": "scan"}, run_id="../escape")
    store.remove("alpha")
    assert [r.run_id for r in store.runs()] == ["beta-scan-1", "beta-scan-2"]


def test_latest_filters_kind_and_status(tmp_path):
    store = RunStore(tmp_path)
    assert store.latest() is None
    scan = complete_run(store)
    spike = store.create({"kind": "spike", "model": "tiny"})
    assert store.latest().run_id == spike.run_id
    assert store.latest(kind="scan").run_id == scan.run_id
    assert store.latest(status="running").run_id == spike.run_id
    assert store.latest(kind="spike", status="complete") is None


def test_list_counts_rows(tmp_path):
    store = RunStore(tmp_path)
    assert list(store.list().columns) == ["run_id", "kind", "model", "status", "created", "path"]
    run = complete_run(store)
    running = store.create({"kind": "scan", "model": "tiny"})
    running.write_part("id-prose", tidy("id-prose"))
    listed = store.list().set_index("run_id")
    per_part = tidy("x")
    assert listed.loc[run.run_id, "n_activations"] == 2 * len(per_part["activations"])
    assert listed.loc[running.run_id, "n_neurons"] == len(per_part["neurons"])


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSESCOPE_RUNS", str(tmp_path / "elsewhere"))
    assert RunStore().root == tmp_path / "elsewhere"
    monkeypatch.delenv("SPARSESCOPE_RUNS")
    assert str(RunStore().root) == "runs"


def test_unwritable_runs_dir_fails_at_create(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not writable.*--runs-dir.*SPARSESCOPE_RUNS"):
        RunStore(blocker / "runs").create({"kind": "scan", "model": "tiny"})


def test_read_only_runs_dir_fails_at_create(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions do not bind this user (root); covered by the path-under-a-file test")
        with pytest.raises(UserError, match="not writable"):
            RunStore(locked).create({"kind": "scan", "model": "tiny"})
    finally:
        locked.chmod(stat.S_IRWXU)


def test_atomic_writes_keep_the_usual_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        path = RunStore(tmp_path).create({"kind": "scan", "model": "tiny"}).write_file("report.html", "<html>")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
