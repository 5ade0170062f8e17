"""ertacache: calibrated feature caching (ERTACache) for diffusion transformers."""

__version__ = "0.1.0"
