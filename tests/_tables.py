"""Synthetic `prompts` tables for the statistics and OOD-detector tests (FEATURES in the tables' sort order)."""

import numpy as np
import pandas as pd

COLUMNS = ["run_id", "model", "suite", "split", "level", "prompt_id"]
COLUMNS += ["layer", "site", "metric", "threshold", "value", "n_tokens"]
FEATURES = [
    (layer, site, metric, t)
    for layer in range(3)
    for site in ("attn.hook_z", "mlp.hook_post")
    for metric, t in (("near_zero_frac", 0.1), ("zero_frac", np.nan))
]


def prompts_table(groups: list[tuple[str, str, int, int]], value, seed: int = 0) -> pd.DataFrame:
    """One row per prompt × feature; groups: (suite, split, level, n_prompts).

    value(rng, split, level, feature_index, prompt_index) -> float draws each value.

    Ladder prompts (split with `@`) get ids `<suite>-<source>@<level>`, others `<suite>-<i>`.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for suite, split, level, n in groups:
        for i in range(n):
            pid = f"{suite}-{i}@{level}" if "@" in split else f"{suite}-{i}"
            n_tokens = int(rng.integers(4, 64))
            for f, (layer, site, metric, t) in enumerate(FEATURES):
                v = value(rng, split, level, f, i)
                rows.append(("run", "tiny", suite, split, level, pid, layer, site, metric, t, v, n_tokens))
    return pd.DataFrame(rows, columns=COLUMNS)
