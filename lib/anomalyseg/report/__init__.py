"""Presentation: every table, figure, display name and the explorer, in one sub-package that only
the notebooks and the CLI import. It reads the results store (``anomalyseg.results``: rows, stored
curves and score maps, training logs), labels and the protocols' descriptions, and never runs a
model: reusing stored rows or evaluating is the evaluation's policy, not the report's.

- ``names``: what a model, score, metric or benchmark is called, and the order they are shown in.
- ``selection``: which rows of the store a table or figure shows (latest per model, dataset and
score,
  under one protocol and temperature; temperature sweeps; runs with stored maps).
- ``tables``: DataFrames and their markdown / LaTeX renderings (``markdown`` renders any table;
  ``comparison_markdown`` / ``comparison_latex`` the comparison table).
- ``figures``: matplotlib figures of frames, of the store's rows and of training logs; ``save_all``.
- ``explorer``: the ipywidgets explorer of the stored score maps.

Why this shape: the modules split by what a reader looks for (a name, a selection of rows, a
table, a figure), not by notebook, so a table that two notebooks show lives once, and figures
never import tables (``save_all``, which writes both, is the one exception). The selection of rows
is its own module because tables and figures share it; it is called ``selection``, not ``rows``,
since notebooks name their rows ``rows``. Nothing is re-exported here: a caller names the module
(``from anomalyseg.report import tables``; ``tables.comparison_table(df)``), so each function has
one import path.
"""
