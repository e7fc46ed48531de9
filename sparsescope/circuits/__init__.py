"""Circuits: bundled tasks, node ablation and patching, attribution (EAP, EAP-IG), learned masks, MIB scores.

Everything patches through the site map's hooks (:meth:`sparsescope.models.sites.SiteMap.attach`), so it works on
every architecture the site map knows, grouped-query attention included (see :mod:`sparsescope.circuits.patch`).
"""

from sparsescope.circuits.attribution import attribute, effects, exact
from sparsescope.circuits.clusters import coactivation
from sparsescope.circuits.edges import EdgePatcher
from sparsescope.circuits.mask import MaskConfig, learn_mask
from sparsescope.circuits.patch import ABLATIONS, LEVELS, Patcher, parse_components
from sparsescope.circuits.scores import SIZES_PCT, cpr_cmd, ends, faithfulness_curve, random_curves
from sparsescope.circuits.study import DiscoverConfig, discover, measure, overlap
from sparsescope.circuits.tasks import TASKS, Pair, TaskData, make_task

__all__ = ["ABLATIONS", "LEVELS", "SIZES_PCT", "TASKS", "DiscoverConfig", "EdgePatcher", "MaskConfig", "Pair",
           "Patcher", "TaskData", "attribute", "coactivation", "cpr_cmd", "discover", "effects", "ends", "exact",
           "faithfulness_curve", "learn_mask", "make_task", "measure", "overlap", "parse_components", "random_curves"]
