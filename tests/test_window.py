"""Length- and position-matched windows: only positions start..start+W-1 count, start after the shared prefix."""

import numpy as np
import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.probes import Prompt, Suite
from sparsescope.record import RecordConfig, Recorder
from sparsescope.record.metrics import Metric
from test_metrics import reference
from test_recorder import captured
from tiny import tiny_model

PREFIX = "SYS: be brief. USER: "
BODIES = ["the cat sat on the mat and then it slept all day long in the sun",
          "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9",
          "tiny"]


def suite(texts, name="s"):
    return Suite(name, "id", [Prompt(f"p{i}", t, name, "id") for i, t in enumerate(texts)], source="t", license="t")


def test_window_counts_matched_positions_after_the_shared_prefix():
    lm = tiny_model("llama", dtype=torch.float64)
    texts = [PREFIX + b for b in BODIES]
    w = 16
    with pytest.warns(UserWarning, match="1 of 3 prompts are shorter"):
        run = Recorder(lm, RecordConfig(window=w, sites=["mlp.hook_post"], layers=[0], metrics="hoyer")) \
            .record_suite(suite(texts))
    start = len(PREFIX)  # one token per character, and the bodies differ from their first character
    p = run.prompts
    assert set(p.prompt_id) == {"p0", "p1"} and (p.window_start == start).all() and (p.window == w).all()
    for i in (0, 1):
        x, ids, logits = captured(lm, texts[i], 0, "mlp.hook_post")  # the whole, untruncated prompt
        logits = logits.double()
        rows = p[p.prompt_id == f"p{i}"]
        assert (rows.prompt_tokens == len(ids)).all()
        hoyer = rows[rows.metric == "hoyer"]
        want = np.mean([reference(v, Metric("hoyer")) for v in x[start: start + w]])  # the full prompt's forward
        assert hoyer.value.item() == pytest.approx(want, rel=1e-9) and hoyer.n_tokens.item() == w
        logp = torch.log_softmax(logits, -1)
        nll = [-logp[t - 1, ids[t]].item() for t in range(start, start + w)]
        maxp = [logp[t - 1].max().exp().item() for t in range(start, start + w)]
        nbytes = len(texts[i][start: start + w].encode())
        got = rows.set_index("metric").value
        assert got["nll"] == pytest.approx(np.mean(nll), rel=1e-6)  # the recorder takes log_softmax in float32
        assert got["max_prob"] == pytest.approx(np.mean(maxp), rel=1e-6)
        assert got["nll_per_byte"] == pytest.approx(np.sum(nll) / nbytes, rel=1e-6)


def test_window_starts_after_position_zero_and_is_unmatched_when_zero():
    lm = tiny_model("gpt2", dtype=torch.float64)
    texts = BODIES[:2]
    win = Recorder(lm, RecordConfig(window=8, sites=["mlp.hook_post"], layers=[0], metrics="hoyer")).record_suite(
        suite(texts))
    full = Recorder(lm, RecordConfig(window=0, sites=["mlp.hook_post"], layers=[0], metrics="hoyer")).record_suite(
        suite(texts))
    assert (win.prompts.window_start == 1).all() and (full.prompts.window_start == 0).all()
    for i, text in enumerate(texts):
        x, ids, _ = captured(lm, text, 0, "mlp.hook_post")
        got = win.prompts[(win.prompts.prompt_id == f"p{i}") & (win.prompts.metric == "hoyer")].value.item()
        assert got == pytest.approx(np.mean([reference(v, Metric("hoyer")) for v in x[1:9]]), rel=1e-9)
        whole = full.prompts[(full.prompts.prompt_id == f"p{i}") & (full.prompts.metric == "hoyer")]
        assert whole.n_tokens.item() == len(ids)
        assert whole.value.item() == pytest.approx(np.mean([reference(v, Metric("hoyer")) for v in x]), rel=1e-9)


def test_window_bad_input():
    lm = tiny_model("llama")
    rec = Recorder(lm, RecordConfig(window=64, sites=["mlp.hook_post"]))
    with pytest.raises(UserError, match="longer than every prompt of suite 'short'.*--window"):
        rec.record_suite(suite(["abc def", "ghi jkl mno"], name="short"))
    with pytest.warns(UserWarning, match="single prompt"):
        run = Recorder(lm, RecordConfig(window=4, sites=["mlp.hook_post"])).record_suite(suite(["hello world"]))
    assert (run.prompts.window_start == 1).all()
    with pytest.raises(UserError, match="window"):
        Recorder(lm, RecordConfig(window=1))
    with pytest.raises(UserError, match="max-tokens"):
        Recorder(lm, RecordConfig(window=32, max_tokens=16)).record_suite(suite(BODIES))
