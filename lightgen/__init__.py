"""LightGen: a compact masked-autoregressive text-to-image model (arXiv 2503.08619)."""
from lightgen.errors import InputError

__all__ = ["InputError"]
