"""anim-clip: a fast, feature-cached implementation of Animal-CLIP (IJCV 2025)."""

__version__ = "0.1.0"
