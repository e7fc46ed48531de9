"""One mechanism for every change to a model's linears (design §10): a plan of levers, ``apply``, ``restore``.

Spiking conversion, TEAL thresholding, fake quantization, pruning and N:M masks are all the same act: wrap some
linears (chosen by layer and weight site) so that their input and/or weight is transformed, and later put the
originals back bit-exactly. Each lever contributes only its transform (registered by name in ``LEVERS``); the cost
model reads the same levers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import layer_list, linear_weight, site_list, site_name


class InterventionError(UserError):
    """A plan that cannot be applied (or restored) as asked."""


@dataclass
class LinearContext:
    """What a lever factory knows about the linear it will change."""

    name: str
    layer: int
    site: str
    module: nn.Module
    in_features: int
    out_features: int
    calibration: Mapping[str, torch.Tensor] | None = None


class Lever:
    """Changes one linear: override ``transform_input`` and/or ``transform_weight`` (``w`` is ``[out, in]``)."""

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def transform_weight(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def linear(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """Compute the (already input-transformed) linear; kernel levers override this to replace the matmul."""
        return module(x)

    @property
    def changes_input(self) -> bool:
        return type(self).transform_input is not Lever.transform_input

    @property
    def replaces_linear(self) -> bool:
        return type(self).linear is not Lever.linear

    @property
    def changes_weight(self) -> bool:
        return type(self).transform_weight is not Lever.transform_weight


# The registry: name → factory. Lever modules fill it when imported (`@register_lever`); this module imports none of
# them. `import sparsescope` imports the built-in ones (sparsescope.levers, sparsescope.spiking), so any plan can
# name them.
LEVERS: dict[str, Callable[..., Lever]] = {}


def register_lever(name: str):
    """Register a lever factory ``f(ctx: LinearContext, **params) -> Lever`` under ``name``."""

    def deco(factory):
        LEVERS[name] = factory
        return factory

    return deco


@dataclass
class Rule:
    """Apply lever ``lever`` with ``params`` to the chosen layers (None = all) and weight sites (None = all)."""

    lever: str
    params: dict = field(default_factory=dict)
    layers: list[int] | None = None
    sites: list[str] | None = None

    def __post_init__(self) -> None:  # a plan file is user input: check its types, accept "0,5" and "mlp.W_in"
        if not isinstance(self.lever, str):
            raise UserError(f"a plan rule's lever must be a name such as 'spike', got {self.lever!r}")
        if self.params is None:
            self.params = {}
        if not isinstance(self.params, Mapping):
            raise UserError(f"rule {self.lever!r}: params must be a mapping such as {{k: 3}}, got {self.params!r}")
        self.layers = layer_list(self.layers, f"rule {self.lever!r} layers")
        self.sites = site_list(self.sites, f"rule {self.lever!r} sites")


@dataclass
class Plan:
    """An ordered list of rules; rules that hit the same linear compose in order."""

    rules: list[Rule] = field(default_factory=list)
    name: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "rules": [asdict(r) for r in self.rules]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        rules = d.get("rules", []) if isinstance(d, Mapping) else None
        if not isinstance(rules, list) or not all(isinstance(r, Mapping) for r in rules):
            raise UserError(f"a plan is a mapping with a 'rules' list of mappings (lever, params, layers, sites), "
                            f"got {d!r:.60}; see docs for an example plan")
        try:
            return cls([Rule(**r) for r in rules], str(d.get("name", "")))
        except TypeError as e:
            raise UserError(f"bad plan rule: {e}; each rule has lever, params, layers, sites") from None

    @classmethod
    def coerce(cls, plan: "Plan | Mapping | str | Path") -> "Plan":
        """A Plan from what a caller may hold: a Plan, its dict (``to_dict``) or the path of its YAML file."""
        if isinstance(plan, Plan):
            return plan
        if isinstance(plan, (str, Path)):
            return cls.from_yaml(plan)
        return cls.from_dict(plan)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Plan":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"plan file {p} not found; pass a YAML file with a 'rules' list")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"plan file {p} is not valid UTF-8 YAML ({type(e).__name__}); fix the file") from None
        return cls.from_dict(data)


class Wrapped(nn.Module):
    """Stands in for a linear: transforms the input through its levers, then calls the original module
    (or the last lever that replaces the matmul itself, e.g. a sparse kernel)."""

    def __init__(self, original: nn.Module, levers: list[Lever]):
        super().__init__()
        self.original = original
        self.levers = levers
        self.input_levers = [lv for lv in levers if lv.changes_input]
        self.kernel = next((lv for lv in reversed(levers) if lv.replaces_linear), None)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        for lever in self.input_levers:
            x = lever.transform_input(x)
        if self.kernel is not None:
            return self.kernel.linear(x, self.original)
        return self.original(x, *args, **kwargs)


@dataclass
class Applied:
    """A plan in effect: its levers per linear name; a context manager that restores on exit."""

    lm: LoadedModel
    plan: Plan
    levers: dict[str, list[Lever]]
    _saved: list[tuple[nn.Module, str, nn.Module, torch.Tensor | None]]

    def restore(self) -> None:
        restore(self.lm)

    def __enter__(self) -> "Applied":
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self.lm, "_applied", None) is self:
            self.restore()


def _resolve(lm: LoadedModel, plan: Plan) -> dict[tuple[int, str], list[Rule]]:
    """Map each targeted linear (layer, canonical weight site) to its rules; validates everything first."""
    if lm.kind != "hf":
        raise InterventionError("interventions need a plain Hugging Face model; load it with load_model(path or "
                                "(model, tokenizer)) instead of a HookedTransformer")
    sites = lm.sites
    canonical = {}  # fused q/k/v share one module: key them by the first weight site naming it
    for layer, wsite in sites.linear_names():
        module_path = sites.arch.linears[wsite]
        canonical[(layer, module_path)] = wsite
    chosen: dict[tuple[int, str], list[Rule]] = {}
    for rule in plan.rules:
        if rule.lever not in LEVERS:
            raise InterventionError(f"unknown lever {rule.lever!r}; available: {', '.join(sorted(LEVERS))}")
        layers = rule.layers if rule.layers is not None else list(range(sites.n_layers))
        wsites = rule.sites if rule.sites is not None else list(sites.weight_sites)
        for layer in layers:
            sites.check_layer(layer)
        for ws in wsites:
            if ws not in sites.weight_sites:
                raise InterventionError(f"plan names weight site {ws!r}, which this model lacks; "
                                        f"choose from: {', '.join(sites.weight_sites)}")
            shared = [w for w in sites.arch.fused if sites.arch.linears[w] == sites.arch.linears[ws]]
            if ws in sites.arch.fused and not set(shared) <= set(wsites):  # a lever changes the whole module
                raise InterventionError(
                    f"{ws} is one slice of the fused linear {sites.arch.linears[ws]!r} it shares with "
                    f"{', '.join(w for w in shared if w != ws)}; a lever changes the whole linear, so name all of "
                    f"{', '.join(shared)} in the rule (or none of them)")
        for layer in layers:
            for ws in wsites:
                key = (layer, canonical[(layer, sites.arch.linears[ws])])
                if rule not in chosen.setdefault(key, []):
                    chosen[key].append(rule)
    return chosen


def check_model(lm: object, who: str = "apply/restore") -> None:
    """Refuse a bare model: the plan in effect is tracked on the LoadedModel, so it must be the same object."""
    if not isinstance(lm, LoadedModel):
        raise UserError(f"{who} take the LoadedModel from sparsescope.load_model(...), got a {type(lm).__name__}; "
                        "wrap it with load_model((model, tokenizer)) once and reuse that")


def apply(lm: LoadedModel, plan: Plan | Mapping | str | Path,
          calibration: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> Applied:
    """Apply ``plan`` (a Plan, its dict or a YAML path) to ``lm`` in place; ``calibration[name]`` feeds per-linear
    statistics to lever factories.

    Nothing is changed unless every rule resolves and every lever builds; a model with a plan in effect
    must be restored first.
    """
    check_model(lm)
    plan = Plan.coerce(plan)
    if getattr(lm, "_applied", None) is not None:
        raise InterventionError("this model already has a plan applied; call restore() (or leave its with-block) first")
    chosen = _resolve(lm, plan)
    built: list[tuple[int, str, nn.Module, list[Lever]]] = []
    for (layer, wsite), rules in chosen.items():
        module = lm.sites.linear(layer, wsite)
        w = linear_weight(module)
        name = site_name(layer, wsite)
        ctx = LinearContext(name, layer, wsite, module, w.shape[1], w.shape[0], (calibration or {}).get(name))
        levers = []
        for rule in rules:
            try:
                levers.append(LEVERS[rule.lever](ctx, **rule.params))
            except TypeError as e:
                raise InterventionError(f"lever {rule.lever!r} got bad parameters {rule.params}: {e}") from None
        built.append((layer, wsite, module, levers))
    saved, levers_by_name = [], {}
    for layer, wsite, module, levers in built:
        weight_levers = [lv for lv in levers if lv.changes_weight]
        original_weight = None
        if weight_levers:
            original_weight = module.weight.data
            w = linear_weight(module).detach()
            for lv in weight_levers:
                w = lv.transform_weight(w)
            module.weight.data = (w.t() if type(module).__name__ == "Conv1D" else w).contiguous()
        parent_path, _, child = f"{lm.sites.arch.blocks}.{layer}.{lm.sites.arch.linears[wsite]}".rpartition(".")
        parent = lm.model.get_submodule(parent_path)
        if any(lv.changes_input or lv.replaces_linear for lv in levers):
            setattr(parent, child, Wrapped(module, levers))
        saved.append((parent, child, module, original_weight))
        levers_by_name[site_name(layer, wsite)] = levers
    applied = Applied(lm, plan, levers_by_name, saved)
    lm._applied = applied  # type: ignore[attr-defined]
    return applied


def restore(lm: LoadedModel) -> None:
    """Put back every original module and weight tensor (the same objects: bit-exact)."""
    check_model(lm)
    applied = getattr(lm, "_applied", None)
    if applied is None:
        raise InterventionError("no plan is applied to this model; nothing to restore")
    for parent, child, module, original_weight in applied._saved:
        setattr(parent, child, module)
        if original_weight is not None:
            module.weight.data = original_weight
    lm._applied = None  # type: ignore[attr-defined]
