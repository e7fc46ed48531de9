"""Issue 10: nothing lost, nothing cryptic. Behaviour tests for awkward inputs that are accepted or must be
refused in a specific way; the plain "refused with one line" cases live in tests/data/bad_inputs.yaml."""

import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.probes import Prompt, Suite
from sparsescope.record import RecordConfig, Recorder
from sparsescope.record.metrics import Metric, parse_metrics, token_metrics
from tiny import tiny_model

TEXTS = ["the cat sat on the mat", "a quick brown fox", "zz"]


def suite(name="s", split="id", texts=TEXTS, source="test"):
    return Suite(name, split, [Prompt(f"p{i}", t, name, split) for i, t in enumerate(texts)], source, "test")


# -- 5. fractions stay in [0, 1] --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["near_zero_frac@inf", "near_zero_frac@nan", "teal_sparsity@1.5", "teal_sparsity@1",
                                  "mass_density@2", "delta_frac@inf"])
def test_metric_parameters_outside_their_range_are_refused(spec):
    with pytest.raises(UserError, match="must lie in"):
        parse_metrics(spec)
    name, _, t = spec.partition("@")
    with pytest.raises(UserError, match="must lie in"):  # building a Metric directly is checked the same way
        Metric(name, float(t))


def test_huge_threshold_counts_only_valid_entries_of_ragged_rows():
    """A threshold whose t·RMS overflows to inf counts every valid entry (1.0), never the masked ones."""
    x = torch.rand(3, 6) + 0.1
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2])
    for spec in ("near_zero_frac@1e39", "near_zero_frac@1e39,teal_sparsity@0.5"):  # the no-sort and the sort path
        got = token_metrics(x, parse_metrics(spec), mask)[:, 0]
        assert got.tolist() == [1.0, 1.0, 1.0]


def test_attention_pattern_agrees_with_other_sites_on_a_huge_threshold():
    """Every entry is ≤ 1e39·RMS, so near-zero is exactly 1 at every site; masked (future) keys never count."""
    run = Recorder(tiny_model("llama"), RecordConfig(sites=["attn.hook_pattern", "mlp.hook_post"],
                                                     metrics="near_zero_frac@1e39", neurons=False)).record_suite(suite())
    assert set(run.activations.value) == {1.0}
    assert set(run.prompts[run.prompts.metric == "near_zero_frac"].value) == {1.0}


# -- 6. the Python API takes what a user naturally passes ------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def test_record_takes_a_string_as_one_prompt_and_one_site(lm):
    import sparsescope

    run = sparsescope.record(lm, "The cat sat", sites="mlp.hook_post", layers="1", metrics="hoyer", neurons=False)
    assert run.prompts.prompt_id.unique().tolist() == ["p0"]
    assert set(zip(run.activations.layer, run.activations.site)) == {(1, "mlp.hook_post")}
    one = sparsescope.record(lm, ["The cat sat"], sites=["mlp.hook_post"], layers=[1], metrics=["hoyer"],
                             neurons=False)
    assert one.activations.value.tolist() == run.activations.value.tolist()


def test_same_suite_twice_is_recorded_once_and_different_suites_under_one_name_are_refused(lm):
    rec = Recorder(lm, RecordConfig(sites=["mlp.hook_post"], metrics="hoyer", neurons=False))
    with pytest.warns(UserWarning, match="listed twice"):
        run = rec.run([suite(), suite()])
    assert len(run.prompts) == len(rec.run([suite()]).prompts)
    with pytest.raises(UserError, match="two different suites are named 's'"):
        rec.run([suite(), suite(texts=["other text"], source="other.txt")])
    rec.run([suite(), suite(split="ood", texts=["other text"])])  # a different split is a different part


def test_apply_takes_a_plan_dict_like_convert(lm):
    from sparsescope import intervene

    plan = {"rules": [{"lever": "spike", "params": {"k": 3}, "layers": "0", "sites": "mlp.W_out"}]}
    with intervene.apply(lm, plan) as applied:
        assert list(applied.levers) == ["blocks.0.mlp.W_out"]
    assert lm._applied is None
