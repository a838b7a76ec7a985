"""anomalyseg: real-time anomaly segmentation in road scenes.

Data flows one way: frames on disk -> ``data`` -> ``models`` -> per-pixel class maps ->
``scores`` -> ``metrics`` -> ``results`` store -> ``plots`` / report.
"""

__version__ = "0.1.0"
