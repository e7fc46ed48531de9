"""The built-in levers of `sparsescope.intervene`: ``prune``, ``quant``, ``act_quant`` and ``teal`` (``spike`` lives in
`sparsescope.spiking.convert`). Each module registers its levers on import; `import sparsescope` imports this package.
A new lever is a module with ``@register_lever("name")`` on its factory plus one import line here.
"""

from sparsescope.levers import prune, quant, teal  # noqa: F401  (registers the levers)
