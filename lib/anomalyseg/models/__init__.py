"""Models: ERFNet, EoMT (through transformers) and the pixel-wise anomaly head."""

from .base import Segmenter, resize_map

__all__ = ["Segmenter", "resize_map"]
