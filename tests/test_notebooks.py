"""Every notebook runs under papermill on the `tiny` preset, through `anomalyseg run-all` with its
default two notebooks at once: the same code path as a user's run, only the parameters differ."""

from __future__ import annotations

import json

import pytest

from anomalyseg.pipeline import NOTEBOOKS, notebooks_dir, run_all
from anomalyseg.report.tables import STATISTICS_HEADERS
from anomalyseg.results import read_results

pytestmark = pytest.mark.slow

# The chain runs in order; while a step is being written, test the unbroken prefix.
PRESENT = []
for _n in NOTEBOOKS:
    if not (notebooks_dir() / f"{_n}.ipynb").exists():
        break
    PRESENT.append(_n)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    run_dir = run_all(
        preset="tiny",
        data_root=root / "data",
        output_dir=root / "out",
        runs_dir=root / "runs",
        stop_after=PRESENT[-1],
        progress=False,
        jobs=2,  # run-all's default: notebooks whose inputs are ready run side by side
    )
    return root, run_dir


def _outputs(nb_path):
    nb = json.loads(nb_path.read_text())
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def test_every_notebook_executes(pipeline_run):
    _, run_dir = pipeline_run
    for name in PRESENT:
        outs = _outputs(run_dir / f"{name}.ipynb")
        assert not [o for o in outs if o.get("output_type") == "error"], name


def test_data_prep_reports_everything_ok(pipeline_run):
    _, run_dir = pipeline_run
    text = json.dumps(_outputs(run_dir / "00_data_prep.ipynb"))
    assert "all data sets found and readable" in text
    for key in ("components_per_frame", "anomaly_share"):  # the anomaly statistics
        assert STATISTICS_HEADERS[key][0] in text, key


def test_source_notebooks_are_clean():
    for name in NOTEBOOKS:
        path = notebooks_dir() / f"{name}.ipynb"
        if not path.exists():
            continue
        nb = json.loads(path.read_text())
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), name
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), (
            f"{name} carries outputs"
        )


def test_oe_notebook_runs_seed_000s_recipe_with_the_energy_target(pipeline_run):
    """Notebook 04 with seed 000's other options: its recipe (whole network, masked-attention
    annealing scaled to the tiny run) and the energy target with thresholds inside its range."""
    if "04_outlier_exposure" not in PRESENT:
        pytest.skip("notebook 04 is not written yet")
    root, _ = pipeline_run
    run_dir = run_all(
        preset="tiny",
        data_root=root / "data",
        output_dir=root / "out",
        runs_dir=root / "runs_seed000",
        start_at="04",
        stop_after="04",
        progress=False,
        extra_parameters=dict(
            oe_recipe="seed000",
            coco_split="train",
            outlier_loss_target="energy",
            inlier_upper_threshold=-3.2,
            outlier_lower_threshold=-2.95,
        ),
    )
    outs = _outputs(run_dir / "04_outlier_exposure.ipynb")
    assert not [o for o in outs if o.get("output_type") == "error"]
    text = json.dumps(outs)
    assert "the energy score lies in [-inf, -2.944]" in text
    assert "trainable='all'" in text and "attn_mask_annealing_enabled=True" in text


def test_every_parameter_line_parses():
    """papermill reads each `name = value  # comment` line of a parameters cell; a line it cannot
    parse (e.g. an '=' inside the comment) drops that parameter from what it reports."""
    import papermill as pm

    for name in NOTEBOOKS:
        path = notebooks_dir() / f"{name}.ipynb"
        if not path.exists():
            continue
        nb = json.loads(path.read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        assigned = {
            line.split("=", 1)[0].strip()
            for line in "".join(cell["source"]).splitlines()
            if "=" in line.split("#", 1)[0] and not line.startswith((" ", "#"))
        }
        assert set(pm.inspect_notebook(str(path))) == assigned, name


def test_report_shows_intervals_and_component_metrics(pipeline_run):
    _, run_dir = pipeline_run
    if "06_comparison_report" not in PRESENT:
        pytest.skip("notebook 06 not written yet")
    text = json.dumps(_outputs(run_dir / "06_comparison_report.ipynb"))
    assert "95% bootstrap intervals" in text and "(best)" in text
    assert (
        "SMIYC RA-21 sIoU gt" in text and "SMIYC RO-21 mean F1" in text
    )  # component metrics on both tracks
    assert "Recall (%) at the pooled 95%-TPR threshold" in text


def test_cli_gives_notebook_01s_numbers_for_its_checkpoint(pipeline_run, tmp_path):
    """``anomalyseg eval`` on the checkpoint notebook 01 evaluated, at its input size and with its
    protocol (course), reproduces the notebook's stored AuPRC / FPR95 / mIoU exactly; notebook 01's
    convention comparison stored rows under every other protocol too."""
    if "01_erfnet_baseline" not in PRESENT:
        pytest.skip("notebook 01 not written yet")
    from anomalyseg import cli

    root, _ = pipeline_run
    df = read_results(root / "out" / "results" / "results.csv")
    nb = df[
        (df.model == "erfnet")
        & (df.protocol == "course")
        & df.score.isin(["msp", "max_logit", "miou"])
        & (df.temperature == 1.0)
    ].drop_duplicates(["dataset", "score"], keep="first")
    assert set(df[df.model == "erfnet"].protocol) >= {
        "course",
        "smiyc",
        "blocks2x2",
        "full_resolution",
        "per_image",
        "legacy",
    }
    checkpoint = nb.checkpoint.iloc[0]
    h, w = nb[nb.score != "miou"].eval_size.iloc[0].split("x")
    data = root / "data" / "tiny"
    out = tmp_path / "cli.csv"
    cli.main(
        [
            "eval",
            "--model",
            "erfnet",
            "--checkpoint",
            checkpoint,
            "--benchmarks-root",
            str(data / "Validation_Dataset"),
            "--cityscapes-root",
            str(data / "cityscapes"),
            "--input-size",
            h,
            w,
            "--scores",
            "msp",
            "max_logit",
            "--results",
            str(out),
            "--workers",
            "0",
        ]
    )
    got = read_results(out)
    assert (got.protocol == "course").all() and len(got) == len(nb)
    for _, want in nb.iterrows():
        row = got[(got.dataset == want.dataset) & (got.score == want.score)].iloc[0]
        for metric in ("auprc", "fpr_at_95_tpr", "miou"):
            assert row[metric] == want[metric] or (
                row[metric] != row[metric] and want[metric] != want[metric]
            ), (want.dataset, want.score, metric)
