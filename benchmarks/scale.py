"""Scaling figures on the embedded SmolLM2, side by side in one process (medians of interleaved repeats):

1. hook backend vs nnsight backend (local trace): seconds per pass over the same batches, and equality of the tables;
2. bytes a trace saves (reduced statistics) vs the raw activations of the same sites, per token;
3. padded tokens with prompts sorted by length (and a token budget) vs prompt order (whole prompts: matched windows
   give every prompt of a suite the same length, so they never pad);
4. bfloat16 vs float32 weights: largest change of any split-level metric.

Run: PYTHONPATH=. python benchmarks/scale.py [--repeats 3] [--suites prose,code] [--window 32] [--sites ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsescope.models import load_model
from sparsescope.probes import load_suites
from sparsescope.record import RecordConfig, Recorder
from sparsescope.record.traced import _wrapper, execution_order, reduced_bytes_per_token, trace_batch


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--suites", default="prose,code")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sites", default=None, help="e.g. mlp.hook_post (default: every site)")
    ap.add_argument("--window", type=int, default=32, help="matched window (0 = whole prompts)")
    args = ap.parse_args()
    lm = load_model("smollm2-135m")
    suites = load_suites(args.suites.split(","), tokenizer=lm.tokenizer)
    base = dict(max_tokens=args.max_tokens, batch_size=8, sites=args.sites.split(",") if args.sites else None,
                window=args.window)
    hooks, traced = Recorder(lm, RecordConfig(**base)), Recorder(lm, RecordConfig(**base, backend="nnsight"))
    n_tokens = hooks.planned_tokens(suites)
    print(f"SmolLM2-135M, {len(hooks.targets)} sites, {len(hooks.metrics)} metrics, window {args.window}, "
          f"{n_tokens} tokens of {args.suites}, torch threads {torch.get_num_threads()}, uptime load {load()}")

    # 1. backends, interleaved
    times = {"hooks": [], "nnsight": []}
    a, b = hooks.run(suites), traced.run(suites)  # warm-up, and the tables compared below
    for _ in range(args.repeats):
        times["hooks"].append(timed(lambda: hooks.run(suites)))
        times["nnsight"].append(timed(lambda: traced.run(suites)))
    same = all(getattr(a, t).equals(getattr(b, t)) for t in ("activations", "prompts", "neurons"))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"[1] hooks {med['hooks']:.2f} s ({n_tokens / med['hooks']:.0f} tok/s), nnsight local "
          f"{med['nnsight']:.2f} s ({n_tokens / med['nnsight']:.0f} tok/s): nnsight/hooks = "
          f"{med['nnsight'] / med['hooks']:.2f}× (medians of {args.repeats}); tables identical: {same}")

    # 2. bytes saved by one trace vs raw activations of the same sites (one batch of 8 prompts)
    ids = traced.tokenize([p.text for p in suites[0].prompts])
    start, kept = traced.window_plan(suites[0], ids)
    ids = [ids[k][: start + args.window] if args.window else ids[k] for k in kept]
    rows, input_ids, valid = next(iter(traced.batches(ids)))
    wrapper = _wrapper(lm)
    envoys = {id(e._module): e for e in wrapper.modules()}
    places = [(k, envoys[id(lm.sites.hook(*k)[0])], *lm.sites.hook(*k)[1:])
              for k in execution_order(lm, traced.targets)]
    saved = trace_batch(wrapper, places, input_ids, valid, start, traced.spec, traced.pattern_spec, True, True, True,
                        False)
    reduced = sum(t.nbytes for part in saved.values() for t in (part.values() if isinstance(part, dict) else part)
                  if t is not None)
    raw = {}
    handles = []
    for key in traced.targets:
        module, io, extract = lm.sites.hook(*key)
        def size(m, a, o=None, key=key, io=io, extract=extract):
            t = extract(a[0] if io == "input" else o)
            raw[key] = t.numel() * 4 * int(valid.sum()) / valid.numel()  # float32, padding left out
        handles.append(module.register_forward_pre_hook(size) if io == "input" else module.register_forward_hook(size))
    lm.forward(input_ids, valid.long())
    for h in handles:
        h.remove()
    tok = int(valid.sum())
    print(f"[2] one batch ({len(rows)} prompts, {tok} tokens, {len(traced.targets)} sites): the trace saved "
          f"{reduced / tok:,.0f} B/token; raw float32 activations of those sites {sum(raw.values()) / tok:,.0f} "
          f"B/token (ratio {sum(raw.values()) / reduced:.0f}×)")
    if args.sites:
        print(f"    (sites: {args.sites})")
    for name, layers, width, mlp in (("SmolLM2-135M", 30, 576, 1536), ("Llama-3.1-8B", 32, 4096, 14336),
                                     ("Llama-3.1-70B", 80, 8192, 28672)):
        for tokens, rows_per_trace in ((33, 8), (33, 64), (256, 8), (256, 32)):
            f = reduced_bytes_per_token(len(traced.static), len(traced.delta_t), [mlp] * layers, tokens, rows_per_trace)
            print(f"    {name}: mlp.hook_post of every layer, {rows_per_trace} prompts × {tokens} tokens per trace: "
                  f"reduced {f['reduced']:,.0f} B/token vs raw bf16 {f['raw_bfloat16']:,.0f} B/token "
                  f"({f['raw_bfloat16'] / f['reduced']:.0f}×)")

    # 3. padding (whole prompts)
    whole = [rec_ids for rec_ids in (Recorder(lm, RecordConfig(**base | {"window": 0})).tokenize(
        [p.text for p in s.prompts]) for s in suites)]
    n_whole = sum(len(i) for sid in whole for i in sid)
    for cfg in (dict(sort_by_length=False), dict(), dict(token_budget=1024)):
        rec = Recorder(lm, RecordConfig(**base | {"window": 0}, **cfg))
        padded = sum(len(g) * max(len(sid[i]) for i in g) for sid in whole for g in rec.groups(sid))
        print(f"[3] whole prompts, {cfg or 'sorted by length'}: {padded} padded tokens for {n_whole} tokens "
              f"({1 - n_whole / padded:.1%} padding)")

    # 4. bf16 vs fp32
    bf = load_model("smollm2-135m", dtype="bfloat16")
    c = Recorder(bf, RecordConfig(**base)).run(suites)
    d = (a.activations.value - c.activations.value).abs()
    worst = a.activations.assign(diff=d).sort_values("diff").iloc[-1]
    print(f"[4] bf16 vs fp32 weights, {len(d)} split-level values: median |Δ| {d.median():.4f}, "
          f"99th pct {d.quantile(0.99):.4f}, max {d.max():.4f} ({worst.metric}@{worst.threshold} "
          f"blocks.{worst.layer}.{worst.site}, fp32 {worst.value:.4f})")


if __name__ == "__main__":
    main()
