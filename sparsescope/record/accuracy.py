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
    """The model's greedy continuation of `text`, `n_new` tokens, decoded (EOS does not stop it).

    A Hugging Face model decodes with its KV cache (one pass over the prompt, then one token per step: a full
    re-run per new token made the 220 ladder prompts take over an hour on a shared CPU); a TransformerLens model
    re-runs the growing sequence."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    new: list[int] = []
    if lm.kind == "hooked":
        for _ in range(n_new):
            new.append(int(lm.forward(ids)[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([new[-1:]])], 1)
    else:
        out = lm.model(input_ids=ids.to(lm.device), use_cache=True)
        for step in range(n_new):
            new.append(int(out.logits[0, -1].argmax()))
            if step + 1 < n_new:
                out = lm.model(input_ids=torch.tensor([new[-1:]], device=lm.device),
                               past_key_values=out.past_key_values, use_cache=True)
    return lm.tokenizer.decode(new)


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

