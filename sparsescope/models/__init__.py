"""Models: load any supported spec offline and map TransformerLens site names onto it."""

from sparsescope.models.loading import DEFAULT_MODEL, LoadedModel, available_models, load_model
from sparsescope.models.sites import ACTIVATION_SITES, WEIGHT_SITES, Arch, Hook, SiteMap, parse_site, site_name

__all__ = ["DEFAULT_MODEL", "LoadedModel", "available_models", "load_model", "ACTIVATION_SITES", "WEIGHT_SITES",
           "Arch", "Hook", "SiteMap", "parse_site", "site_name"]
