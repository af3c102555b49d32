"""labkit: research primitives that work on real models and data, and one reproducible notebook per paper."""

from labkit.profile import seed_everything

__all__ = ["seed_everything"]
__version__ = "0.1.0"
