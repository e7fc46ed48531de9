"""How close does attribution get to exact activation patching, and at what fraction of its time? One process, IOI on
the embedded SmolLM2 (270 query heads + 30 MLPs = 300 nodes, counterfactual patching).

Ground truth: exact patching of EVERY node on the train prompts. Against it, per method: Spearman ρ over all nodes
and over the 30 with the largest exact effect, sign agreement on nodes with |exact| ≥ 10 % of the largest, seconds
and the ratio to exact's seconds; and the held-out CPR / CMD (MIB faithfulness on the test prompts) of each method's
ranking beside exact's own ranking and the random baseline. Methods: EAP; EAP-IG over inputs with 5 and 20 steps;
IG over activations (every node's patch coefficient moved 0 → 1 together, midpoint rule, 5 steps); the two-stage
``eap_ig_exact`` (EAP-IG 5 steps, then exact patching of its top 10 % = 30 nodes).

Run: PYTHONPATH=. python benchmarks/circuits_ig.py [--n 16]   (about 4 min on an idle 2-core machine)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from sparsescope.circuits import attribution, scores
from sparsescope.circuits.attribution import frozen
from sparsescope.circuits.patch import Patcher
from sparsescope.circuits.tasks import make_task
from sparsescope.models import load_model


def activation_ig(p: Patcher, prepared, steps: int) -> torch.Tensor:
    """IG over activations: all nodes' coefficients at α (a + α·δ), α at the midpoints of ``steps`` intervals."""
    total, n = torch.zeros(p.n_nodes), 0
    with frozen(p.lm.model):
        for b, refs in prepared:
            d = p.directions(refs, p.capture(b.clean, b.mask))
            for k in range(steps):
                coef = torch.full((p.n_nodes,), (k + 0.5) / steps, requires_grad=True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(p.forward(b, direction=d, coef=coef).sum(), coef)
                total += g / steps
            n += len(b.last)
    return total / n


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="IOI prompt pairs per split")
    ap.add_argument("--refine", type=int, default=30, help="nodes eap_ig_exact patches exactly")
    args = ap.parse_args()
    print(f"load before: {load()}")
    lm = load_model("smollm2-135m")
    p = Patcher(lm, "heads")
    train = p.prepare(make_task("ioi", lm.tokenizer, args.n, "train", 0))
    test = p.prepare(make_task("ioi", lm.tokenizer, args.n, "test", 0))
    methods = {"eap": lambda: attribution.attribute(p, train, 1),
               "eap_ig (inputs, 5 steps)": lambda: attribution.attribute(p, train, 5),
               "eap_ig (inputs, 20 steps)": lambda: attribution.attribute(p, train, 20),
               "ig over activations (5 steps)": lambda: activation_ig(p, train, 5),
               f"eap_ig_exact (5 steps, top {args.refine})": lambda: attribution.refined(p, train, 5, args.refine),
               "exact (every node)": lambda: attribution.exact(p, train)}
    ranking, seconds = {}, {}
    for name, fn in methods.items():
        start = time.perf_counter()
        ranking[name] = fn()
        seconds[name] = time.perf_counter() - start
        print(f"  {name}: {seconds[name]:.1f} s (load {load()})", flush=True)
    truth = ranking["exact (every node)"].numpy()
    t_exact = seconds["exact (every node)"]
    e = scores.ends(p, test)
    rand = scores.random_curves(p, test, e, seeds=3)
    random_cpr, random_cmd = np.mean([scores.cpr_cmd(g) for _, g in rand.groupby("seed")], axis=0)
    top = np.argsort(-np.abs(truth))[:30]
    big = np.abs(truth) >= 0.1 * np.abs(truth).max()
    print(f"\n{p.n_nodes} nodes, {args.n} train / {args.n} test prompt pairs; exact patching {t_exact:.0f} s")
    print(f"{'method':36s} {'rho':>6s} {'rho_top30':>9s} {'sign':>5s} {'seconds':>8s} {'/exact':>7s} "
          f"{'CPR':>6s} {'CMD':>6s}")
    for name in methods:
        est = ranking[name].numpy()
        cpr, cmd = scores.cpr_cmd(scores.faithfulness_curve(p, test, ranking[name], e))
        print(f"{name:36s} {spearmanr(est, truth).statistic:6.3f} {spearmanr(est[top], truth[top]).statistic:9.3f} "
              f"{np.mean(np.sign(est[big]) == np.sign(truth[big])):5.2f} {seconds[name]:8.1f} "
              f"{seconds[name] / t_exact:7.3f} {cpr:6.3f} {cmd:6.3f}")
    print(f"{'random (3 rankings)':36s} {'':6s} {'':9s} {'':5s} {'':8s} {'':7s} {random_cpr:6.3f} {random_cmd:6.3f}")
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
