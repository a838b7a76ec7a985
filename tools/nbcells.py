"""Write a notebook from a list of (kind, source) cells: ``python tools/nbcells.py spec.py out.ipynb``.

A maintainers' helper: notebooks are the source of truth, this only saves typing their JSON. The
spec file defines ``CELLS = [("md", "..."), ("code", "..."), ("params", "..."), ...]``.
"""

import runpy
import sys

import nbformat

SETUP = '''# Set-up: on Colab or a fresh kernel, install the project when it is missing
# (clone the repository first and open this notebook from its notebooks/ folder).
import importlib.util, subprocess, sys
if importlib.util.find_spec("anomalyseg") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".."], check=True)
%matplotlib inline'''


def build(cells, path):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        elif kind == "setup":
            nb.cells.append(nbformat.v4.new_code_cell(SETUP))
        else:
            c = nbformat.v4.new_code_cell(src)
            if kind == "params":
                c.metadata["tags"] = ["parameters"]
            nb.cells.append(c)
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(runpy.run_path(sys.argv[1])["CELLS"], sys.argv[2])
