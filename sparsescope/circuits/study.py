"""The ``circuits`` experiment: task performance, discovery with every method, held-out scores, modularity.

Discovery ranks nodes on the ``train`` prompts; the chosen circuit size is the smallest MIB size whose faithfulness
on ``train`` reaches :data:`~sparsescope.circuits.scores.TARGET` (found by bisection); every reported score (curve, CPR, CMD, necessity,
sufficiency, random baseline) is measured on the disjoint ``test`` prompts. Tables follow the run-store contract
(``tasks``, ``effects``, ``faithfulness``, ``scores``, ``circuit``, ``overlap``) plus ``validation`` and ``firing``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from sparsescope.circuits import attribution, scores
from sparsescope.circuits.edges import EdgePatcher
from sparsescope.circuits.features import FeaturePatcher
from sparsescope.circuits.mask import MaskConfig, learn_mask
from sparsescope.circuits.patch import Patcher, shape_of
from sparsescope.circuits.tasks import TASKS, Pair, Performance, TaskData, check_task, make_task, performance
from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel

METHODS = ("eap", "eap_ig", "eap_ig_exact", "mask", "exact")
Progress = Callable[[int], None]


@dataclass
class DiscoverConfig:
    """What a discovery run does."""

    methods: tuple[str, ...] = ("eap", "eap_ig", "mask")  # ranking methods; "exact" patches every node (slow)
    level: str = "heads"  # heads (query heads + MLPs), neurons (heads + MLP neurons), layers, edges, or features
    sae: str | None = None  # SAE checkpoint folder whose features are the nodes (level "features")
    ablation: str = "counterfactual"  # counterfactual (corrupted prompt), mean (over the reference) or zero
    reference: str = "train"  # mean ablation's reference set: the clean prompts of this split
    n: int = 24  # prompt pairs per split (train finds, test scores)
    seed: int = 0  # template seed: the same seed gives the same prompts
    steps: int = 5  # integrated-gradient steps of eap_ig
    random_seeds: int = 5  # random circuits per size for the baseline
    refine: float = 0.1  # eap_ig_exact: exact-patch this fraction of nodes, the top of the EAP-IG ranking
    validate: int = 0  # exact-patch this many nodes (top and random by eap_ig) to rank-correlate; 0 = off (with
    # method "exact" every node is compared, at no extra cost)
    batch_size: int = 32  # prompts per forward
    sizes: tuple[float, ...] = scores.SIZES_PCT  # circuit sizes, percent of nodes
    mask: MaskConfig = field(default_factory=MaskConfig)  # learned-mask training


def check_methods(methods) -> None:
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r}; choose from: {', '.join(METHODS)}")


def make_patcher(lm: LoadedModel, level: str, ablation: str = "counterfactual", reference: TaskData | None = None,
                 batch_size: int = 32, sae: str | None = None) -> Patcher | EdgePatcher:
    """The patcher of a level: :class:`EdgePatcher` for ``edges``, :class:`FeaturePatcher` for ``features`` (the
    SAE checkpoint folder ``sae``), a node :class:`Patcher` otherwise."""
    if level == "edges":
        return EdgePatcher(lm, ablation, reference, batch_size)
    if level == "features" or sae is not None:
        if sae is None or level != "features":
            raise UserError("SAE-feature nodes need both --level features and --sae <sae run or checkpoint folder>")
        return FeaturePatcher(lm, sae, ablation, reference, batch_size)
    return Patcher(lm, level, ablation, reference, batch_size)


def split_data(lm: LoadedModel, task: str, cfg: DiscoverConfig) -> tuple[TaskData, TaskData]:
    return (make_task(task, lm.tokenizer, cfg.n, "train", cfg.seed), make_task(task, lm.tokenizer, cfg.n, "test",
                                                                                cfg.seed))


def measure(lm: LoadedModel, task: str, n: int = 24, seed: int = 0, batch_size: int = 32) -> Performance:
    """Accuracy and mean metric of the model on both splits of a task (2n prompts)."""
    train = make_task(task, lm.tokenizer, n, "train", seed)
    both = TaskData(task, "all", train.pairs + make_task(task, lm.tokenizer, n, "test", seed).pairs)
    patcher = Patcher(lm, "heads", "zero", batch_size=batch_size)
    prepared = [(b, {}) for b in both.batches(batch_size)]
    return performance(patcher.per_prompt(prepared), patcher.per_prompt(prepared, corrupt=True), both)


def tasks_table(lm: LoadedModel, tasks: list[str], n: int = 24, seed: int = 0,
                progress: Progress | None = None) -> pd.DataFrame:
    rows = []
    for task in tasks:
        check_task(task)
        rows.append(asdict(measure(lm, task, n, seed)))
        if progress:
            progress(1)
    return pd.DataFrame(rows).assign(model=lm.name)


def work(cfg: DiscoverConfig, n_nodes: int) -> int:
    """Patched forwards (or gradient passes) one task's discovery takes, for progress bars."""
    batches = -(-cfg.n // cfg.batch_size)
    per_method = {"exact": n_nodes, "eap": batches, "eap_ig": batches * cfg.steps, "mask": cfg.mask.steps,
                  "eap_ig_exact": batches * cfg.steps + refine_count(cfg, n_nodes)}
    bisection = 4 + max(1, n_nodes).bit_length()  # Curve.smallest and then smallest_k, on train, at most
    curves = len(cfg.sizes) * (len(cfg.methods) + cfg.random_seeds) + bisection * len(cfg.methods)
    return sum(per_method[m] for m in cfg.methods) + curves + (0 if "exact" in cfg.methods else cfg.validate)


def refine_count(cfg: DiscoverConfig, n_nodes: int) -> int:
    """Nodes eap_ig_exact patches exactly: ``cfg.refine`` of them (at least one)."""
    if not 0 < cfg.refine <= 1:
        raise UserError(f"--refine is a fraction of nodes in (0, 1], got {cfg.refine}")
    return max(1, round(cfg.refine * n_nodes))


def _node_frame(patcher: Patcher, values: torch.Tensor, **cols) -> pd.DataFrame:
    return patcher.nodes.assign(**cols, effect=values.numpy())


def discover(lm: LoadedModel, task: str, cfg: DiscoverConfig, progress: Progress | None = None,
             variant: str = "dense", perf: Performance | None = None) -> dict[str, pd.DataFrame]:
    """Rank nodes with every method, pick circuits, score them on held-out prompts; returns the run's tables.

    Refuses (UserError) a task the model performs at chance; ``perf`` passes an already measured performance."""
    check_methods(cfg.methods)
    train, test = split_data(lm, task, cfg)
    perf = perf or measure(lm, task, cfg.n, cfg.seed, cfg.batch_size)
    perf.check()
    reference = train if cfg.reference == "train" else test
    patcher = make_patcher(lm, cfg.level, cfg.ablation, reference if cfg.ablation == "mean" else None, cfg.batch_size,
                           cfg.sae)
    p_train, p_test = patcher.prepare(train), patcher.prepare(test)
    e_train, e_test = scores.ends(patcher, p_train), scores.ends(patcher, p_test)
    if abs(e_train.full - e_train.empty) < 1e-6 or abs(e_test.full - e_test.empty) < 1e-6:
        raise UserError(f"task {task!r}: the full model and the empty circuit give the same metric, so faithfulness "
                        "is undefined; use another ablation (--ablation) or task")
    tag = dict(task=task, variant=variant, level=cfg.level, ablation=cfg.ablation)
    effects, curves, score_rows, circuits, validation = [], [], [], [], []
    rand = scores.random_curves(patcher, p_test, e_test, cfg.random_seeds, cfg.sizes, progress)
    rand_areas = [scores.cpr_cmd(g) for _, g in rand.groupby("seed")]
    random_cpr, random_cmd = (float(np.mean([a[i] for a in rand_areas])) for i in (0, 1))
    curves.append(rand.assign(method="random", split="test", **tag))
    for method in cfg.methods:
        start = time.perf_counter()
        if method == "mask":
            ranking = learn_mask(patcher, p_train, e_train, cfg.mask, progress)
            shown = torch.sigmoid(ranking)
        else:
            ranking = attribution.effects(patcher, p_train, method, cfg.steps, progress,
                                          refine_count(cfg, patcher.n_nodes))
            shown = ranking
        seconds = time.perf_counter() - start
        effects.append(_node_frame(patcher, shown, method=method, seconds=seconds, **tag))
        fit = scores.Curve(patcher, p_train, ranking, e_train, progress)
        k = fit.smallest(cfg.sizes)
        k_fine = fit.smallest_k(cfg.sizes)
        held = scores.faithfulness_curve(patcher, p_test, ranking, e_test, cfg.sizes, progress)
        curves.append(held.assign(method=method, split="test", seed=-1, **tag))
        keep = scores.top_k(ranking, k)
        cpr, cmd = scores.cpr_cmd(held)
        score_rows.append(dict(method=method, cpr=cpr, cmd=cmd, random_cpr=random_cpr, random_cmd=random_cmd,
                               sufficiency=e_test.f(patcher.metric(p_test, keep)),
                               necessity=scores.necessity(patcher, p_test, keep, e_test),
                               n_components=k, circuit_frac=k / patcher.n_nodes, n_nodes=patcher.n_nodes,
                               n_at_target=k_fine, target=scores.TARGET,
                               seconds=seconds, m_full=e_test.full, m_empty=e_test.empty,
                               **_without_error(patcher, p_test, keep, e_test), **tag))
        chosen = keep.bool().numpy()
        effects[-1]["in_circuit"] = chosen
        circuits.append(patcher.nodes[chosen].assign(method=method, score=shown.numpy()[chosen], **tag))
    if cfg.validate or ("exact" in cfg.methods and {"eap", "eap_ig"} & set(cfg.methods)):
        validation.append(_validate(patcher, p_train, effects, cfg, progress, tag))
    tables = {"effects": pd.concat(effects, ignore_index=True), "faithfulness": pd.concat(curves, ignore_index=True),
              "scores": pd.DataFrame(score_rows), "circuit": pd.concat(circuits, ignore_index=True),
              "tasks": pd.DataFrame([asdict(perf)]).assign(model=lm.name, variant=variant)}
    if cfg.level == "edges":  # edge rankings and circuits live in one table (the circuit is its in_circuit rows)
        tables["edges"] = tables.pop("effects").rename(columns={"effect": "score"})
        del tables["circuit"]
    if validation:
        tables["validation"] = pd.concat(validation, ignore_index=True)
    return tables


def _without_error(patcher: Patcher, prepared, keep: torch.Tensor, e: scores.Ends) -> dict:
    """For SAE-feature circuits, what the features carry without the SAE's error term (itself a dense vector):
    held-out f of the circuit with the error node patched, and of every feature with the error node patched (the
    ceiling of any feature-only circuit). Empty for other levels."""
    if not isinstance(patcher, FeaturePatcher):
        return {}
    err = patcher.error_node
    circuit, every = keep.clone(), torch.ones(patcher.n_nodes)
    circuit[err] = every[err] = 0
    return dict(sufficiency_without_error=e.f(patcher.metric(prepared, circuit)),
                all_features_without_error=e.f(patcher.metric(prepared, every)), error_in_circuit=bool(keep[err]))


def _validate(patcher: Patcher, prepared, effects: list[pd.DataFrame], cfg: DiscoverConfig, progress,
              tag: dict) -> pd.DataFrame:
    """Exact patching on ``cfg.validate`` nodes (half the top of the first attribution ranking, half random), or on
    every node when ``exact`` is a method; Spearman ρ of every attribution method against it on those nodes (and on
    the 30 with the largest exact effect), with both timings."""
    by = {f["method"].iloc[0]: f for f in effects}
    first = next((m for m in ("eap_ig", "eap") if m in by), None)
    if first is None:
        raise UserError("--validate compares attribution with exact patching; include eap or eap_ig in --methods")
    if "exact" in by:  # every node was exact-patched already: validate on all of them
        nodes = list(range(patcher.n_nodes))
        truth = by["exact"]["effect"].to_numpy()
        t_exact = float(by["exact"]["seconds"].iloc[0])
    else:
        n = min(cfg.validate, patcher.n_nodes)
        order = np.argsort(-np.abs(by[first]["effect"].to_numpy()), kind="stable")
        rest = np.random.default_rng(cfg.seed).permutation(order[n // 2:])
        nodes = sorted(set(order[: n // 2].tolist()) | set(rest[: n - n // 2].tolist()))
        start = time.perf_counter()
        truth = attribution.exact(patcher, prepared, progress, nodes).numpy()[nodes]
        t_exact = (time.perf_counter() - start) * patcher.n_nodes / len(nodes)  # projected to every node
    top = np.argsort(-np.abs(truth), kind="stable")[:30]  # the nodes that decide small circuits
    rows = []
    for method in ("eap", "eap_ig"):  # not eap_ig_exact: its top nodes are exact effects, trivially equal here
        if method in by:
            est = by[method]["effect"].to_numpy()[nodes]
            rows.append(dict(method=method, spearman=float(spearmanr(est, truth).statistic),
                             spearman_top30=float(spearmanr(est[top], truth[top]).statistic),
                             sign_agreement=float(np.mean(np.sign(est) == np.sign(truth))), n_validated=len(nodes),
                             seconds=float(by[method]["seconds"].iloc[0]), exact_seconds_all_nodes=t_exact, **tag))
    return pd.DataFrame(rows)


# -- modularity ----------------------------------------------------------------------------------------------------
def overlap(circuit: pd.DataFrame) -> pd.DataFrame:
    """Jaccard of every pair of tasks' circuits (same method and variant), per layer and overall (layer −1)."""
    rows = []
    for (method, variant), g in circuit.groupby(["method", "variant"]):
        sets = {t: set(map(tuple, c[["layer", "kind", "index"]].to_numpy().tolist())) for t, c in g.groupby("task")}
        names = sorted(sets)
        layers = sorted(set(g["layer"]))
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for layer in [-1] + layers:
                    sa = {x for x in sets[a] if layer == -1 or x[0] == layer}
                    sb = {x for x in sets[b] if layer == -1 or x[0] == layer}
                    union = sa | sb
                    rows.append(dict(task_a=a, task_b=b, method=method, variant=variant, layer=layer,
                                     jaccard=len(sa & sb) / len(union) if union else np.nan,
                                     n_a=len(sa), n_b=len(sb)))
    return pd.DataFrame(rows)


def firing(lm: LoadedModel, circuit: pd.DataFrame, task_pairs: dict[str, list[Pair]]) -> pd.DataFrame:
    """Firing frequency (recorder neuron stats over the task's clean prompts) of circuit neurons vs the rest."""
    from sklearn.metrics import roc_auc_score

    from sparsescope.probes import Prompt, Suite
    from sparsescope.record import RecordConfig, Recorder

    rows = []
    for (task, method, variant), c in circuit[circuit["kind"] == "neuron"].groupby(["task", "method", "variant"]):
        prompts = [Prompt(f"{task}{i}", p.text, task, "circuits") for i, p in enumerate(task_pairs[task])]
        suite = Suite(task, "circuits", prompts, source="sparsescope.circuits", license="generated")
        run = Recorder(lm, RecordConfig(sites=["mlp.hook_post"], logits=False, window=0)).run([suite])  # every token
        freq = run.neurons[run.neurons["metric"] == "fire_freq"][["layer", "index", "value"]]
        chosen = set(zip(c["layer"], c["index"]))
        member = np.array([(int(r.layer), int(r.index)) in chosen for r in freq.itertuples()])
        values = freq["value"].to_numpy()
        for group, sel in (("circuit", member), ("rest", ~member)):
            rows.append(dict(task=task, method=method, variant=variant, group=group, n=int(sel.sum()),
                             mean_fire_freq=float(values[sel].mean()) if sel.any() else np.nan,
                             median_fire_freq=float(np.median(values[sel])) if sel.any() else np.nan,
                             auroc=float(roc_auc_score(member, values)) if 0 < member.sum() < len(member) else np.nan))
    return pd.DataFrame(rows, columns=["task", "method", "variant", "group", "n", "mean_fire_freq", "median_fire_freq",
                                       "auroc"])


# -- circuit files -------------------------------------------------------------------------------------------------
def save_circuit(path: str | Path, lm: LoadedModel, circuit: pd.DataFrame, level: str,
                 sae: FeaturePatcher | None = None) -> None:
    """A circuit (nodes, or ``up, down`` edges) as JSON with the model's name and widths — and for SAE features the
    SAE's folder, site and width —, so it is never applied to another model (or SAE) by mistake."""
    if level == "edges":
        nodes = circuit[["up", "down"]].to_dict("records")
    else:
        nodes = circuit[["layer", "kind", "index"]].astype({"layer": int, "index": int}).to_dict("records")
    data = {"model": lm.name, "shape": shape_of(lm), "level": level, "nodes": nodes}
    if sae is not None:
        data["sae"] = {"path": sae.sae_path, "site": sae.site, "d_sae": sae.shape["d_sae"]}
    Path(path).write_text(json.dumps(data, indent=1))


def load_circuit(path: str | Path, lm: LoadedModel) -> tuple[pd.DataFrame, str]:
    """Read a circuit file; refuses one saved for a model of other widths."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        nodes, level, shape = pd.DataFrame(data["nodes"]), data["level"], data["shape"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{p} is not a circuit file ({type(e).__name__}); write one with `sparsescope circuits "
                        "discover --save`") from None
    if shape != shape_of(lm):
        raise UserError(f"circuit {p} was found on {data.get('model')!r} {shape}, but this model is {lm.name!r} "
                        f"{shape_of(lm)}; rediscover the circuit on this model")
    nodes.attrs["sae"] = data.get("sae")  # features: the SAE the circuit was found with
    return nodes, level


def check_sae(nodes: pd.DataFrame, patcher: Patcher) -> None:
    """Refuse a feature circuit applied with another SAE (site or width differ) than the one it was found with."""
    found = nodes.attrs.get("sae")
    if isinstance(patcher, FeaturePatcher) and found and (found["site"], found["d_sae"]) != (
            patcher.site, patcher.shape["d_sae"]):
        raise UserError(f"the circuit's features belong to a {found['d_sae']}-feature SAE at {found['site']}, not "
                        f"to {patcher.sae_path} ({patcher.shape['d_sae']} at {patcher.site}); pass --sae "
                        f"{found['path']}")


def score_circuit(lm: LoadedModel, task: str, nodes: pd.DataFrame, level: str, cfg: DiscoverConfig) -> dict:
    """Faithfulness, necessity and sufficiency of a given circuit on the task's held-out prompts (a feature circuit
    with ``cfg.sae``, else with the SAE its file names)."""
    _, test = split_data(lm, task, cfg)
    sae = cfg.sae or (nodes.attrs.get("sae") or {}).get("path") if level == "features" else None
    patcher = make_patcher(lm, level, cfg.ablation, test if cfg.ablation == "mean" else None, cfg.batch_size, sae)
    check_sae(nodes, patcher)
    prepared = patcher.prepare(test)
    e = scores.ends(patcher, prepared)
    keep = patcher.mask_from(nodes)
    return dict(task=task, level=level, ablation=cfg.ablation, n_components=int(keep.sum()),
                circuit_frac=float(keep.mean()), faithfulness=e.f(patcher.metric(prepared, keep)),
                necessity=scores.necessity(patcher, prepared, keep, e), m_full=e.full, m_empty=e.empty)


def component_name(layer: int, kind: str, index: int) -> str:
    """The CLI spelling of a node (inverse of :func:`~sparsescope.circuits.patch.parse_components`)."""
    suffix = {"head": f"H{index}", "neuron": f"N{index}", "mlp": ".mlp", "layer": "", "feature": f"F{index}",
              "sae_error": ".err"}[kind]
    return f"L{layer}{suffix}"


def level_of(nodes: pd.DataFrame) -> str:
    """The node level a set of components lives at (heads and MLPs; heads and neurons; whole layers; features)."""
    kinds = set(nodes["kind"])
    if kinds & {"feature", "sae_error"}:
        if not kinds <= {"feature", "sae_error"}:
            raise UserError("components mix SAE features with model components; ablate features (L6F12, L6.err) alone")
        return "features"
    if kinds <= {"layer"}:
        return "layers"
    if "layer" in kinds or ("mlp" in kinds and "neuron" in kinds):
        raise UserError("components mix levels; ablate heads with MLPs, heads with neurons, or whole layers")
    return "neurons" if "neuron" in kinds else "heads"


def ablate(lm: LoadedModel, task: str, nodes: pd.DataFrame, cfg: DiscoverConfig) -> dict:
    """Metric and accuracy on the held-out prompts with ``nodes`` ablated (everything else untouched)."""
    level = level_of(nodes)
    train, test = split_data(lm, task, cfg)
    patcher = make_patcher(lm, level, cfg.ablation, (train if cfg.reference == "train" else test)
                           if cfg.ablation == "mean" else None, cfg.batch_size, cfg.sae)
    prepared = patcher.prepare(test)
    keep = 1 - patcher.mask_from(nodes)
    full, ablated = patcher.per_prompt(prepared), patcher.per_prompt(prepared, keep)
    return dict(task=task, level=level, ablation=cfg.ablation, n_ablated=len(nodes), n_prompts=len(full),
                metric_full=float(full.mean()), metric_ablated=float(ablated.mean()),
                delta=float((ablated - full).mean()), accuracy_full=float((full > 0).float().mean()),
                accuracy_ablated=float((ablated > 0).float().mean()))


def run_discovery(lm: LoadedModel, tasks: list[str], cfg: DiscoverConfig, progress: Progress | None = None,
                  variant: str = "dense") -> dict[str, pd.DataFrame]:
    """:func:`discover` for every task (refusing any task at chance before spending time on the others)."""
    for task in tasks:
        check_task(task)
    perfs = [measure(lm, task, cfg.n, cfg.seed, cfg.batch_size) for task in tasks]
    for perf in perfs:
        perf.check()
    parts = [discover(lm, task, cfg, progress, variant, perf) for task, perf in zip(tasks, perfs)]
    return {name: pd.concat([p[name] for p in parts if name in p], ignore_index=True)
            for name in dict.fromkeys(n for p in parts for n in p)}


def knee_sparsity(store, method: str) -> float:
    """The whole-model essential sparsity of ``method`` from the newest complete ``weights`` run with knees."""
    for run in reversed(store.runs()):
        if run.kind == "weights" and run.status == "complete" and "knees" in run.manifest.get("tables", []):
            k = run.read("knees")
            row = k[(k["method"] == method) & (k["layer"] == -1)]
            if len(row):
                return float(row["essential_sparsity"].iloc[0])
    raise UserError(f"no weights run with a {method} essential-sparsity knee in {store.root}; run `sparsescope weights "
                    f"--sensitivity --methods {method}` first or pass --sparsity")


def pruned_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Each pruned variant's circuits beside the dense model's, per task and method: circuit size at the target
    faithfulness (``n_at_target``, and its ratio to dense) and held-out CPR/CMD (and their change)."""
    cols = ["task", "method", "variant", "n_nodes", "n_at_target", "cpr", "cmd", "random_cpr", "sufficiency"]
    heads = table[table["level"] != "neurons"][cols]
    dense = heads[heads["variant"] == "dense"].set_index(["task", "method"])
    rows = []
    for r in heads[heads["variant"] != "dense"].itertuples():
        if (r.task, r.method) in dense.index:
            d = dense.loc[(r.task, r.method)]
            rows.append(dict(task=r.task, method=r.method, variant=r.variant, n_nodes=r.n_nodes,
                             n_at_target_dense=int(d["n_at_target"]), n_at_target=r.n_at_target,
                             size_ratio=r.n_at_target / d["n_at_target"], cpr_dense=d["cpr"], cpr=r.cpr,
                             cpr_change=r.cpr - d["cpr"], cmd_dense=d["cmd"], cmd=r.cmd, random_cpr=r.random_cpr))
    return pd.DataFrame(rows)


def compare_pruned(lm: LoadedModel, tasks: list[str], cfg: DiscoverConfig, prunes: dict[str, float],
                   progress: Progress | None = None, neurons: bool = True, n_clusters: int = 8
                   ) -> dict[str, pd.DataFrame]:
    """Circuits of the dense model and of the model pruned by each ``{method: sparsity}`` of ``prunes`` (magnitude
    or wanda, every linear), their overlap across tasks, dense vs pruned circuit size and CPR (``pruned``), and —
    with ``neurons`` — the firing frequency of neuron-level circuits and their co-activation clusters."""
    from dataclasses import replace

    from sparsescope.circuits.clusters import coactivation
    from sparsescope.intervene import Plan, Rule, apply
    from sparsescope.probes import load_text
    from sparsescope.record.calibration import calibrate

    for prune in prunes:
        if prune not in ("magnitude", "wanda"):
            raise UserError(f"unknown prune method {prune!r}; choose magnitude or wanda")
    parts = [run_discovery(lm, tasks, cfg, progress, "dense")]
    calib = calibrate(lm, load_text("calibration")) if "wanda" in prunes else None
    for prune, sparsity in prunes.items():
        with apply(lm, Plan([Rule("prune", {"method": prune, "sparsity": sparsity})], f"{prune}@{sparsity:g}"), calib):
            parts.append(run_discovery(lm, tasks, cfg, progress, f"{prune}@{sparsity:.3f}"))
    tables = {name: pd.concat([p[name] for p in parts if name in p], ignore_index=True)
              for name in dict.fromkeys(n for p in parts for n in p)}
    tables["overlap"] = overlap(tables["circuit"])
    if prunes:
        tables["pruned"] = pruned_summary(tables["scores"])
    if neurons:
        ncfg = replace(cfg, level="neurons", methods=tuple(m for m in cfg.methods if m != "exact"), validate=0)
        found = run_discovery(lm, tasks, ncfg, progress, "dense")
        splits = {t: split_data(lm, t, cfg) for t in tasks}
        tables["firing"] = firing(lm, found["circuit"], {t: splits[t][0].pairs + splits[t][1].pairs for t in tasks})
        tables["clusters"], tables["cluster_scores"] = coactivation(
            lm, found["circuit"], [d for t in tasks for d in splits[t]], n_clusters, cfg.seed)
        for name in ("scores", "faithfulness", "circuit"):
            tables[name] = pd.concat([tables[name], found[name]], ignore_index=True)
    return tables
