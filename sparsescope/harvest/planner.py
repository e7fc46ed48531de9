"""The harvest planner: per linear, which kernel turns this model's sparsity into the most decode time saved.

Choices per block linear: dense (the faster of torch and our dense GEMV for its shape), activation-sparse at s
(TEAL thresholds, ``sparse`` lever), int8 (per-channel), int8 + sparse at s; the tied LM head may go int8 (it is
not input-sparse). Each choice is priced twice, both measured here:

- **time saved** per token: ``kernels.timing`` times every (shape, choice) on this machine, side by side, and a
  choice saves ``t(best dense) − t(choice)``;
- **quality**: the Fisher-weighted output error of the linear under the choice, ½·E_n Σ_o g_no²·Δy_no², from one
  forward/backward pass over calibration tokens (g = ∂NLL/∂y, Δy = the change of the linear's output: TEAL
  thresholding of the captured inputs, int8 rounding of the weight). Summed over linears it estimates the
  whole-model increase in mean NLL (a second-order estimate, assuming additivity).

The plan maximises Σ time saved subject to α·Σ estimate ≤ log(1 + budget) (a multiple-choice knapsack, solved by
a Lagrange multiplier), then **measures** the plan's real Δppl on held-out text, rescales α by measured/estimated
and re-solves, for a few rounds. It returns the verified plan that saves the most time with a measured Δppl within
the budget (all-dense if none is). TEAL's own allocation — the same sparsity target for every block, shared out
greedily within the block to the linear whose next step adds the least error — is planned with the same
estimates and timings and the largest target within budget (measured), so the two are compared on equal terms.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from sparsescope.errors import UserError
from sparsescope.eval import Evaluator
from sparsescope.harvest.compare import compute_constants, linear_shapes
from sparsescope.harvest.decode import DecodeConfig, dense_configs, head, measure
from sparsescope.intervene import Plan, Rule, apply
from sparsescope.kernels.sparse import quantize_int8
from sparsescope.kernels.timing import TORCH_DENSE, time_cases
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import linear_weight, parse_site
from sparsescope.record.calibration import calibrate
from sparsescope.cost import LinearCost, energy
from sparsescope.levers.teal import teal_threshold, threshold_input

HEAD = "lm_head"  # the table's site name for the (tied) LM head, layer -1
PRICINGS = ("loop", "kernels")
LOOP_REPEATS = 3  # interleaved passes over the choices when pricing in the loop (medians over all their tokens)
COLD_BYTES = 48 << 20  # weight copies cycled while timing: more than this CPU's 32 MiB L3


@dataclass
class PlannerConfig:
    """What the planner may choose and how much it measures."""

    budget: float = 0.05  # allowed relative perplexity increase (0.05 = +5 %), measured on held-out text
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)  # activation sparsities offered per linear
    int8: bool = True  # also offer int8 and int8 + sparse (and an int8 LM head)
    calib_tokens: int = 1024  # calibration tokens for TEAL thresholds
    fisher_tokens: int = 256  # tokens of the forward/backward pass that prices quality
    eval_tokens: int = 1024  # held-out tokens per measured evaluation
    seq_len: int = 256  # tokens per evaluated chunk
    rounds: int = 4  # measured re-solves of our plan (and of TEAL's target search)
    repeats: int = 9  # timing repeats per (shape, choice)
    compare_teal: bool = True  # also plan TEAL's greedy allocation and ours without int8, for comparison
    pricing: str = "loop"  # loop: time every choice inside the fused decode loop; kernels: each kernel alone
    loop_tokens: int = 16  # decoded tokens per choice and repeat when pricing in the loop
    clock: str = "wall"  # loop pricing clock: wall, or cpu (this thread's CPU time; one thread on a busy machine)

    def __post_init__(self) -> None:
        if not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget)) or self.budget < 0:
            raise UserError(f"budget {self.budget!r} must be ≥ 0 (a relative perplexity increase: 0.05 = 5 %)")
        if not self.sparsities or not all(0 < s < 1 for s in self.sparsities):
            raise UserError(f"sparsities must lie in (0, 1), got {list(self.sparsities)}; pass e.g. 0.3,0.5,0.7")
        if self.rounds < 1 or self.repeats < 1 or self.loop_tokens < 1:
            raise UserError("rounds, repeats and loop_tokens must be ≥ 1")
        if self.pricing not in PRICINGS or self.clock not in ("wall", "cpu"):
            raise UserError(f"pricing {self.pricing!r} / clock {self.clock!r}: choose pricing from "
                            f"{', '.join(PRICINGS)} and clock wall or cpu")


def parse_budget(value: str | float) -> float:
    """``"5%"`` → 0.05, ``"0.05"`` → 0.05; refuses negatives and non-numbers."""
    text = str(value).strip()
    try:
        budget = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"bad --budget {value!r}; write a relative perplexity increase like 5% or 0.05") from None
    if not budget >= 0:
        raise UserError(f"--budget {value!r} is negative; a budget is an allowed perplexity increase ≥ 0, e.g. 5%")
    return budget


def n_steps(lm: LoadedModel, cfg: PlannerConfig) -> int:
    """Progress ticks ``plan`` makes at most: estimates, the timing steps, one per measured round."""
    shapes = {*linear_shapes(lm).values(), tuple(lm.model.get_output_embeddings().weight.shape[::-1])}
    timing = LOOP_REPEATS * len(choices(cfg)) if cfg.pricing == "loop" else len(shapes)
    return 1 + timing + cfg.rounds * (3 if cfg.compare_teal else 1)


def choices(cfg: PlannerConfig, is_head: bool = False) -> dict[str, tuple[str, float]]:
    """``{choice: (weight format, activation sparsity)}`` offered to one linear (the head: dense or int8)."""
    out = {"dense": ("fp32", 0.0)}
    if not is_head:
        out |= {f"sparse {s:g}": ("fp32", s) for s in cfg.sparsities}
    if cfg.int8:
        out["int8"] = ("int8", 0.0)
        if not is_head:
            out |= {f"int8+sparse {s:g}": ("int8", s) for s in cfg.sparsities}
    return out


# ---- measurements -------------------------------------------------------------------------------------------

def kernel_times(shapes: Sequence[tuple[int, int]], cfg: PlannerConfig, progress=None) -> dict:
    """``{(in, out): {case: seconds}}`` for every distinct shape, cases as ``kernels.timing``.

    The planner takes the fastest of the interleaved repeats: it needs what a kernel costs, and on a shared
    machine the slower repeats measure the other processes (reported benchmarks keep medians). Weights are
    timed cold (``COLD_BYTES`` of copies, more than the last-level cache), as decode reads them.
    """
    fmts = ("fp32", "int8") if cfg.int8 else ("fp32",)
    cases = [TORCH_DENSE] + [("ours", f, s) for f in fmts for s in (0.0, *cfg.sparsities)]
    out = {}
    for shape in dict.fromkeys(shapes):
        out[shape] = time_cases(*shape, cases, repeats=cfg.repeats, stat=min, cold_bytes=COLD_BYTES)
        if progress:
            progress(f"timed {shape[0]}x{shape[1]}")
    return out


def loop_times(lm: LoadedModel, calibration: dict, cfg: PlannerConfig, prompt: list[int], progress=None
               ) -> dict[str, dict[str, float]]:
    """``{linear name: {choice: seconds per token}}`` timed inside the fused decode loop (``"lm_head"`` too).

    Each choice is applied to every block linear at once (and to the head where the head offers it) and decoded
    for ``loop_tokens`` tokens with the loop's per-linear profile on; the choices take turns over
    ``LOOP_REPEATS`` passes, and each (linear, choice) keeps the median over all its tokens. So a choice is
    priced with the cache state, thread hand-offs and real activations of decode, not as a kernel timed alone —
    whose times do not add up to the loop's. ``dense`` is our fp32 GEMV, what a dense linear runs in this loop.
    """
    from sparsescope.harvest.decode import SLOTS, LeanDecoder

    tick = progress or (lambda label: None)
    slot = {}
    for name in linear_shapes(lm):
        layer, ws = parse_site(name)
        block = lm.model.model.layers[layer]
        mods = (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.self_attn.o_proj,
                block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj)
        slot[name] = f"{layer}.{SLOTS[next(i for i, m in enumerate(mods) if m is lm.sites.linear(layer, ws))]}"
    head_choices = choices(cfg, is_head=True)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in [*slot, HEAD]}
    for r in range(LOOP_REPEATS):
        for choice, (fmt, s) in choices(cfg).items():
            plan = Plan([]) if choice == "dense" else Plan([Rule("sparse", {"sparsity": s, "weights": fmt})])
            with apply(lm, plan, calibration), head(lm, fmt if choice in head_choices else "fp32"):
                decoder = LeanDecoder(lm, len(prompt) + cfg.loop_tokens, fused=True)
                decoder.profile = cfg.clock
                decoder.prefill(prompt)
                decoder.take_profile()
                token = prompt[-1]
                for pos in range(len(prompt) - 1, len(prompt) - 1 + cfg.loop_tokens):
                    token = int(decoder.step(token, pos).argmax())
                    prof = decoder.take_profile()
                    for name, key in slot.items():
                        samples[name].setdefault(choice, []).append(prof[key])
                    if choice in head_choices:
                        samples[HEAD].setdefault(choice, []).append(prof["head"])
            tick(f"loop-timed {choice} (pass {r + 1})")
    return {name: {c: statistics.median(v) for c, v in by.items()} for name, by in samples.items()}


def _capture(lm: LoadedModel, names: dict[str, torch.nn.Module], ids: torch.Tensor):
    """One forward/backward of the NLL over ``ids``: inputs and output gradients of each named module."""
    xs, gs, handles = {}, {}, []
    flags = [p.requires_grad for p in lm.model.parameters()]

    def hook(name):
        def fn(module, args, output):
            xs[name] = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            output.register_hook(lambda g: gs.__setitem__(name, g.detach().reshape(-1, g.shape[-1]).float()))
        return fn

    def needs_grad(module, args, output):
        return output.requires_grad_(True)

    try:
        for p in lm.model.parameters():
            p.requires_grad_(False)
        handles.append(lm.model.get_input_embeddings().register_forward_hook(needs_grad))
        handles += [m.register_forward_hook(hook(n)) for n, m in names.items()]
        with torch.enable_grad():
            logits = lm.model(input_ids=ids, use_cache=False).logits
            torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum").backward()
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(lm.model.parameters(), flags):
            p.requires_grad_(f)
    return xs, gs


def quality_estimates(lm: LoadedModel, text: str, calibration: dict, cfg: PlannerConfig) -> dict:
    """``{name: {choice: estimated Δ mean NLL}}`` (see the module docstring) for every linear and the head."""
    ids = torch.tensor(lm.tokenizer(text)["input_ids"][: min(cfg.fisher_tokens, lm.context)])[None]
    if ids.shape[1] < 16:
        raise UserError("the calibration text is too short for the planner (under 16 tokens); pass a longer one")
    modules = {n: lm.sites.linear(*parse_site(n)) for n in linear_shapes(lm)}
    head_module = lm.model.get_output_embeddings()
    modules[HEAD] = head_module
    xs, gs = _capture(lm, modules, ids)
    n = xs[HEAD].shape[0]
    out = {}
    for name, module in modules.items():
        x, g2 = xs[name], gs[name].pow(2)
        w = (head_module.weight if name == HEAD else linear_weight(module)).detach().float()
        y = x @ w.T
        w8 = None
        est = {}
        for choice, (fmt, s) in choices(cfg, name == HEAD).items():
            if choice == "dense":
                est[choice] = 0.0
                continue
            if fmt == "int8" and w8 is None:
                codes, scale = quantize_int8(w)
                w8 = codes.float() * scale[:, None]
            xh = threshold_input(x, teal_threshold(calibration[name]["abs_sample"], s)) if s else x
            dy = y - xh @ (w8 if fmt == "int8" else w).T
            est[choice] = float(0.5 * (g2 * dy.pow(2)).sum(dtype=torch.float64) / n)
        out[name] = est
    return out


def _energy_uJ(n_in: int, n_out: int, fmt: str, s: float) -> float:
    """Modelled energy per token (µJ) of one linear under a choice (``sparsescope.cost``, weights from DRAM)."""
    wb = 8 if fmt == "int8" else 32
    cost = LinearCost("linear", n_in, n_out, weight_bits=wb, act_bits=32, input_density=1 - s)
    return energy(cost, "sparse" if s else "dense", compute_constants(wb, 32, False, False)[1])["total_pJ"] / 1e6


def candidates(lm: LoadedModel, cfg: PlannerConfig, times: dict, est: dict) -> pd.DataFrame:
    """One row per (linear, choice): time saved vs the best dense path, bytes and energy saved, Δnll estimate."""
    shapes = linear_shapes(lm) | {HEAD: tuple(lm.model.get_output_embeddings().weight.shape[::-1])}
    rows = []
    for name, (n_in, n_out) in shapes.items():
        in_loop = name in times  # loop_times: by linear and choice; kernel_times: by shape and case
        t = times[name] if in_loop else times[(n_in, n_out)]
        ours_dense = t["dense"] if in_loop else t[("ours", "fp32", 0.0)]
        best = ours_dense if in_loop else min(t[TORCH_DENSE], ours_dense)
        layer, site = (-1, HEAD) if name == HEAD else parse_site(name)
        dense_bytes = n_in * n_out * 4
        for choice, (fmt, s) in choices(cfg, name == HEAD).items():
            # a dense block linear runs our fp32 GEMV in the fused loop unasked; the head must be packed for it
            kernel = choice != "dense" or (name == HEAD if in_loop else ours_dense < t[TORCH_DENSE])
            seconds = t[choice] if in_loop else t[("ours", fmt, s)] if choice != "dense" else best
            params = {"sparsity": s, "weights": fmt} if kernel else {}
            rows.append({"layer": layer, "site": site, "name": name, "choice": choice, "params": json.dumps(params),
                         "in_features": n_in, "out_features": n_out, "seconds": seconds,
                         "time_saved_s": best - seconds,
                         "bytes_saved": dense_bytes - round((1 - s) * n_in) * n_out * (1 if fmt == "int8" else 4),
                         "energy_saved_uJ": _energy_uJ(n_in, n_out, "fp32", 0.0) - _energy_uJ(n_in, n_out, fmt, s),
                         "delta_nll_est": est[name][choice], "selected": False})
    return pd.DataFrame(rows)


# ---- solving ------------------------------------------------------------------------------------------------

def solve(table: pd.DataFrame, budget_nll: float, alpha: float, allowed: Callable[[str], bool] = lambda c: True
          ) -> pd.Series:
    """Row mask: one choice per linear maximising Σ time saved with α·Σ estimate ≤ ``budget_nll`` (Lagrangian).

    For a multiplier λ every linear takes its best ``time_saved − λ·α·estimate``; the smallest λ whose total
    fits is found by bisection in log space. Dense (saving 0 at estimate 0) always fits, so a zero budget is
    all-dense.
    """
    ok = table["choice"].map(allowed) | (table["choice"] == "dense")
    t = np.where(ok, table["time_saved_s"].to_numpy(), -np.inf)
    c = alpha * table["delta_nll_est"].to_numpy()
    groups = table["name"].to_numpy()

    def pick(lam: float) -> np.ndarray:
        score = pd.Series(t - lam * c)
        best = score.groupby(groups, sort=False).idxmax()
        mask = np.zeros(len(table), bool)
        mask[best.to_numpy()] = True
        return mask

    if budget_nll <= 0:
        return pd.Series(table["choice"].eq("dense").to_numpy(), index=table.index)
    lo, hi = -12.0, 12.0  # log10 λ in seconds per nat; λ = 10^12 is all-dense for any real timing
    if c[pick(10 ** lo)].sum() <= budget_nll:
        return pd.Series(pick(10 ** lo), index=table.index)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if c[pick(10 ** mid)].sum() <= budget_nll else (mid, hi)
    return pd.Series(pick(10 ** hi), index=table.index)


def teal_greedy(table: pd.DataFrame, target: float, levels: Sequence[float]) -> pd.Series:
    """TEAL's allocation at one sparsity target: in every block, raise (by grid ``levels``) the sparsity of the
    linear whose step adds the least estimated error until the block's parameter-weighted sparsity reaches
    ``target``. fp32 only; the LM head stays dense. Returns the row mask."""
    grid = [0.0, *sorted(levels)]
    label = {0.0: "dense"} | {s: f"sparse {s:g}" for s in levels}
    rows = table.set_index(["name", "choice"])
    chosen = {}
    for layer, block in table[table["layer"] >= 0].groupby("layer"):
        names = list(dict.fromkeys(block["name"]))
        params = {n: rows.loc[(n, "dense"), "in_features"] * rows.loc[(n, "dense"), "out_features"] for n in names}
        level = dict.fromkeys(names, 0)
        total = sum(params.values())
        while sum(grid[level[n]] * params[n] for n in names) / total < target - 1e-9:
            steps = [(rows.loc[(n, label[grid[level[n] + 1]]), "delta_nll_est"]
                      - rows.loc[(n, label[grid[level[n]]]), "delta_nll_est"], n)
                     for n in names if level[n] + 1 < len(grid)]
            if not steps:
                break
            level[min(steps)[1]] += 1
        chosen |= {n: label[grid[level[n]]] for n in names}
    want = table["name"].map(chosen).fillna("dense")
    return table["choice"].eq(want)


# ---- plans --------------------------------------------------------------------------------------------------

@dataclass
class HarvestPlan:
    """An ``intervene`` plan plus what the lean decode loop needs: the LM head format and the model's signature."""

    plan: Plan
    lm_head: str = "torch"  # torch | fp32 | int8
    model: dict = field(default_factory=dict)  # name, n_layers, shapes {linear: [in, out]}: refused elsewhere
    notes: dict = field(default_factory=dict)  # budget, measured Δppl, predicted time saved...

    def to_yaml(self, path: str | Path) -> None:
        data = self.plan.to_dict() | {"lm_head": self.lm_head, "model": self.model, "notes": self.notes}
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False, width=120, default_flow_style=None))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "HarvestPlan":
        plan = Plan.from_yaml(path)
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return cls(plan, data.get("lm_head", "torch"), data.get("model") or {}, data.get("notes") or {})

    def check(self, lm: LoadedModel) -> None:
        """Refuse a plan made for another model (layer count or linear shapes differ)."""
        sig = signature(lm)
        if not self.model:
            return
        if self.model.get("n_layers") != sig["n_layers"]:
            raise UserError(f"this plan is for a model with {self.model.get('n_layers')} layers "
                            f"({self.model.get('name')}) but {lm.name} has {sig['n_layers']}; plan this model with "
                            "`sparsescope plan`")
        bad = [n for n, s in self.model.get("shapes", {}).items() if sig["shapes"].get(n) != list(s)]
        if bad:
            raise UserError(f"this plan is for {self.model.get('name')}, whose linear shapes differ from {lm.name}'s "
                            f"(e.g. {bad[0]}: {self.model['shapes'][bad[0]]} vs {sig['shapes'].get(bad[0])}); plan "
                            "this model with `sparsescope plan`")

    @contextlib.contextmanager
    def applied(self, lm: LoadedModel, calibration: dict):
        """Apply the plan and the head format; restore both (bit-exactly) on exit."""
        self.check(lm)
        with apply(lm, self.plan, calibration), head(lm, self.lm_head):
            yield


def signature(lm: LoadedModel) -> dict:
    return {"name": lm.name, "n_layers": lm.n_layers,
            "shapes": {n: list(s) for n, s in linear_shapes(lm).items()}}


def to_plan(lm: LoadedModel, table: pd.DataFrame, mask: pd.Series, name: str) -> HarvestPlan:
    """The chosen rows as rules, one per (site, choice) with its layers, in layer order; the head separately."""
    chosen = table[mask]
    rules = []
    for (site, params), g in chosen[chosen["site"] != HEAD].groupby(["site", "params"], sort=False):
        p = json.loads(params)
        if p:
            rules.append(Rule("sparse", p, layers=sorted(int(v) for v in g["layer"]), sites=[site]))
    head_row = chosen[chosen["site"] == HEAD]
    head_fmt = "torch"
    if len(head_row):
        p = json.loads(head_row["params"].iloc[0])
        head_fmt = p.get("weights", "torch") if p else "torch"
    return HarvestPlan(Plan(rules, name=name), head_fmt, signature(lm))


@dataclass
class PlanResult:
    """The chosen plan, its candidate table (``selected`` marks the choices) and the comparison rows."""

    plan: HarvestPlan
    table: pd.DataFrame  # the ``plan`` table: one row per (linear, choice)
    comparison: pd.DataFrame  # one row per planner: ours, ours without int8, TEAL's greedy allocation
    rounds: pd.DataFrame  # every measured proposal of every planner
    dense_ppl: float


def _measure(lm, hp: HarvestPlan, evaluator: Evaluator, calibration) -> dict:
    with hp.applied(lm, calibration):
        r = evaluator.evaluate()
    return r | {"rel_delta_ppl": r["delta_ppl"] / evaluator.dense_ppl}


def _search(lm, table, budget: float, evaluator, calibration, rounds: int, name: str,
            propose: Callable[[tuple | None], tuple[pd.Series, float]], tick) -> tuple[pd.Series, dict, list[dict]]:
    """Measure ``rounds`` proposals and keep the one saving the most time whose measured Δppl fits the budget.

    ``propose(last)`` returns (row mask, knob); ``last`` is (knob, measurement, Δnll estimate) of the round before.
    """
    best_mask = table["choice"].eq("dense")
    best = {"rel_delta_ppl": 0.0, "delta_ppl": 0.0, "kl": 0.0, "ppl": evaluator.dense_ppl}
    tried, last, seen = [], None, {}
    for r in range(rounds):
        mask, knob = propose(last)
        key = tuple(np.flatnonzero(mask.to_numpy()))
        if key not in seen:
            seen[key] = _measure(lm, to_plan(lm, table, mask, name), evaluator, calibration)
            tick(f"{name} round {r}: Δppl {seen[key]['rel_delta_ppl']:+.2%}")
        m = seen[key]
        saved = float(table.loc[mask, "time_saved_s"].sum())
        est = float(table.loc[mask, "delta_nll_est"].sum())
        tried.append({"planner": name, "round": r, "knob": knob, "time_saved_s": saved, "delta_nll_est": est} | m)
        if m["rel_delta_ppl"] <= budget and saved > float(table.loc[best_mask, "time_saved_s"].sum()):
            best_mask, best = mask, m
        last = (knob, m, est)
    return best_mask, best, tried


def _ours(table: pd.DataFrame, budget_nll: float, allowed: Callable[[str], bool]):
    """Proposals of our planner: α = 1 first, then α = measured Δnll / Σ estimates of the last plan."""
    def propose(last):
        alpha = 1.0 if last is None else max(math.log1p(last[1]["rel_delta_ppl"]), 1e-6) / max(last[2], 1e-12)
        return solve(table, budget_nll, alpha, allowed), alpha
    return propose


def _teal(table: pd.DataFrame, budget: float, levels: Sequence[float]):
    """Proposals of TEAL's allocation: the max level as block sparsity target, then bisection below it."""
    bounds = [0.0, max(levels)]

    def propose(last):
        if last is None:
            target = bounds[1]  # the largest target first; bisect below it when it does not fit
        else:
            bounds[0 if last[1]["rel_delta_ppl"] <= budget else 1] = last[0]
            target = sum(bounds) / 2
        return teal_greedy(table, target, levels), target
    return propose


def plan(lm: LoadedModel, heldout: str | Sequence[str], calibration_text: str, cfg: PlannerConfig = PlannerConfig(),
         progress: Callable[[str], None] | None = None, times: dict | None = None) -> PlanResult:
    """Measure, solve, verify (module docstring). ``progress(label)`` is called after each step.

    ``times`` (as ``kernel_times`` returns) replaces the timing step, e.g. with timings measured earlier.
    """
    tick = progress or (lambda label: None)
    linear_shapes(lm)  # refuses encoder-only / hooked models early through sites
    if not lm.causal or lm.model.get_output_embeddings() is None:
        raise UserError(f"{lm.name} is not a causal LM with an LM head; the planner measures perplexity")
    evaluator = Evaluator(lm, heldout, seq_len=cfg.seq_len, max_tokens=cfg.eval_tokens)
    evaluator.reference()
    calibration = calibrate(lm, calibration_text, max_tokens=cfg.calib_tokens)
    text = calibration_text if isinstance(calibration_text, str) else "\n\n".join(calibration_text)
    est = quality_estimates(lm, text, calibration, cfg)
    tick("quality estimates")
    head_shape = tuple(lm.model.get_output_embeddings().weight.shape[::-1])
    pricing = "given" if times else cfg.pricing
    if pricing == "loop":
        why = fused_unavailable(lm)
        if why:
            pricing = f"kernels (the fused loop cannot run: {why})"
    if pricing == "loop":
        prompt = lm.tokenizer(text)["input_ids"][:8]
        times = loop_times(lm, calibration, cfg, prompt, tick)
    elif pricing != "given":
        times = kernel_times([*linear_shapes(lm).values(), head_shape], cfg, tick)
    table = candidates(lm, cfg, times, est)
    budget_nll = math.log1p(cfg.budget)

    results = {}
    if cfg.budget == 0:
        results["ours"] = (table["choice"].eq("dense"), _measure(lm, to_plan(lm, table, table["choice"].eq("dense"),
                                                                            "dense"), evaluator, calibration), [])
    else:
        search = functools.partial(_search, lm, table, cfg.budget, evaluator, calibration, cfg.rounds, tick=tick)
        results["ours"] = search("ours", _ours(table, budget_nll, lambda c: True))
        if cfg.compare_teal:
            results["ours, sparse only"] = search("ours, sparse only",
                                                  _ours(table, budget_nll, lambda c: c.startswith("sparse")))
            results["TEAL greedy"] = search("TEAL greedy", _teal(table, cfg.budget, cfg.sparsities))
    mask, measured, _ = results["ours"]
    table = table.assign(selected=mask.to_numpy(), delta_ppl_est=evaluator.dense_ppl
                         * np.expm1(table["delta_nll_est"].to_numpy()))
    hp = to_plan(lm, table, mask, f"harvest budget {cfg.budget:g}")
    hp.notes = {"budget_rel_ppl": cfg.budget, "dense_ppl": evaluator.dense_ppl,
                "measured_ppl": measured["ppl"], "measured_rel_delta_ppl": measured["rel_delta_ppl"],
                "predicted_time_saved_ms": 1e3 * float(table.loc[mask, "time_saved_s"].sum()),
                "eval_tokens": evaluator.n_tokens, "pricing": pricing,
                "config": json.loads(json.dumps(asdict(cfg)))}
    rows = []
    for who, (m, meas, tried) in results.items():
        rows.append({"planner": who, "time_saved_ms": 1e3 * float(table.loc[m, "time_saved_s"].sum()),
                     "bytes_saved_mb": float(table.loc[m, "bytes_saved"].sum()) / 1e6,
                     "rel_delta_ppl": meas["rel_delta_ppl"], "kl": meas["kl"], "evaluations": max(len(tried), 1)})
    rounds = pd.DataFrame([t for _, _, tried in results.values() for t in tried])
    return PlanResult(hp, table, pd.DataFrame(rows), rounds, evaluator.dense_ppl)


def fused_unavailable(lm: LoadedModel) -> str:
    """Why the fused decode loop cannot run this model here ('' when it can)."""
    from sparsescope.harvest.decode import LeanDecoder

    try:
        decoder = LeanDecoder(lm, 2)
    except UserError as e:
        return str(e)
    return decoder.why_not_fused


def decode_check(lm: LoadedModel, hp: HarvestPlan, heldout: str | Sequence[str], calibration_text: str,
                 n_new: int = 32, repeats: int = 3, cfg: PlannerConfig = PlannerConfig(), progress=None,
                 cpu_time: bool = False) -> pd.DataFrame:
    """``plan --apply``: the plan's real Δppl and decode speed in the lean loop, beside both dense paths
    (``cpu_time``: timed by the process's CPU time, for one thread on a loaded machine)."""
    hp.check(lm)
    evaluator = Evaluator(lm, heldout, seq_len=cfg.seq_len, max_tokens=cfg.eval_tokens)
    evaluator.reference()
    calibration = calibrate(lm, calibration_text, max_tokens=cfg.calib_tokens)
    text = heldout if isinstance(heldout, str) else "\n\n".join(heldout)
    configs = dense_configs() | {"planned": DecodeConfig(hp.plan, hp.lm_head)}
    return measure(lm, configs, lm.tokenizer(text)["input_ids"][:16], n_new, repeats, evaluator, calibration,
                   progress=progress, clock=time.process_time if cpu_time else time.perf_counter)
