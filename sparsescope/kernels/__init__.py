"""Bundled native kernels: the recorder's fused statistics and the harvest's sparse GEMVs.

Every kernel has a pure-torch fallback with identical results; ``build.load`` compiles a C++ extension once
(cached under ``$SPARSESCOPE_CACHE/kernels``) and returns ``None`` with a one-line notice when it cannot.
"""
