"""The model's accuracy on difficulty-ladder prompts: greedy continuation compared with `Prompt.answer`.

Sparsity along a difficulty ladder is only interpretable next to how well the model actually does at each level,
so a scan of `difficulty:<task>` suites also stores, per prompt, whether the greedy output starts with the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel

ANSWERS = "answers"  # the run table (and part key) of `answer_accuracy`


@torch.inference_mode()
def greedy(lm: LoadedModel, text: str, n_new: int) -> str:
    """The model's greedy continuation of `text`, `n_new` tokens, decoded (no KV cache: prompts are short)."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    for _ in range(n_new):
        nxt = lm.forward(ids)[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1).cpu()], 1)  # logits may live on a GPU
    return lm.tokenizer.decode(ids[0, -n_new:].tolist())


def answer_accuracy(lm: LoadedModel, suites: Sequence, progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """One row per task prompt: suite, split, level, prompt_id, answer, output, correct.

    correct: the greedy continuation (answer's token count + 1 tokens) starts with the answer, leading spaces
    ignored. Suites without answers are skipped; a model without an LM head cannot answer and is refused.
    """
    tasks = [s for s in suites if any(p.answer for p in s.prompts)]
    if tasks and not lm.causal:
        raise UserError(f"{lm.name} has no LM head, so it cannot answer difficulty prompts; "
                        "drop the difficulty: suites")
    rows = []
    for suite in tasks:
        for p in suite.prompts:
            n_new = len(lm.tokenizer(p.answer, add_special_tokens=False)["input_ids"]) + 1
            output = greedy(lm, p.text, n_new)
            rows.append(dict(suite=suite.name, split=suite.split, level=int(suite.level), prompt_id=p.id,
                             answer=p.answer, output=output, correct=output.strip().startswith(p.answer.strip())))
            if progress:
                progress(1)
    return pd.DataFrame(rows, columns=["suite", "split", "level", "prompt_id", "answer", "output", "correct"])

