"""Console progress under `anomalyseg run-all`: throttled lines from loops and trainings, forwarded
from headless kernels to the console while the cell runs, and no kernel transport warning."""

from __future__ import annotations

import io

import lightning as L
import nbformat
import pytest
import torch

from anomalyseg import progress
from anomalyseg.pipeline import _KERNEL_ARGS, _kernel_environment, _ProgressEcho
from anomalyseg.training.callbacks import ConsoleProgress, console_callbacks


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_progress_line_throttles_and_always_reports_the_last_step(clock, capsys):
    line = progress.ProgressLine("training X", 100, every_s=10, force=True)
    for step in range(1, 101):
        clock.t += 1.0  # one second per step
        line.update(step, f"loss {1 / step:.2f}")
    out = capsys.readouterr().out.splitlines()
    # one report per 10 s of steps (10, 20, ..., 90) and the last step, never twice the same step
    assert [int(s.split(": ")[1].split("/")[0]) for s in out] == [
        10,
        20,
        30,
        40,
        50,
        60,
        70,
        80,
        90,
        100,
    ]
    assert out[0] == "[progress] training X: 10/100 (10%), loss 0.10, 1.00 s/step, ETA 1 min 30 s"
    assert (
        out[-1] == "[progress] training X: 100/100 (100%), loss 0.01, 1.00 s/step, took 1 min 40 s"
    )
    line.update(100)
    assert capsys.readouterr().out == ""


def test_progress_is_silent_outside_run_all(monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    line = progress.ProgressLine("x", 3, every_s=0)
    for i in range(1, 4):
        line.update(i)
    for _ in progress.tqdm(range(3), desc="y", disable=False):
        pass
    assert "[progress]" not in capsys.readouterr().out
    assert console_callbacks() == []


def test_tqdm_reports_its_final_count_under_run_all(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "1")
    for _ in progress.tqdm(
        range(7), desc="eomt on RoadAnomaly21", unit="frame", file=io.StringIO()
    ):
        pass
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith(progress.MARK)]
    assert lines and lines[-1].startswith("[progress] eomt on RoadAnomaly21: 7/7 (100%), ")
    assert "frame" in lines[-1]


def test_progress_echo_forwards_only_progress_lines_across_partial_writes():
    out = io.StringIO()
    echo = _ProgressEcho("01", out)
    for chunk in [
        "mIoU 27.45\n[prog",
        "ress] training ErfnetModule: 3/7 (43%)\n",
        "\rbar 50%\r[progress] done: 1/1\n",
        "tail",
    ]:
        echo.write(chunk)
    assert (
        out.getvalue() == "[run-all] 01 training ErfnetModule: 3/7 (43%)\n[run-all] 01 done: 1/1\n"
    )


class _Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.w - batch[0]) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.ones(8)), batch_size=2
        )


def test_console_progress_reports_training_steps_and_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "1")
    assert [type(c) for c in console_callbacks()] == [ConsoleProgress]
    trainer = L.Trainer(
        max_steps=6,
        max_epochs=-1,
        callbacks=[ConsoleProgress(every_s=3600)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Toy())
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith(progress.MARK)]
    # the hour-long throttle leaves only the last step, with the loss of that step: (w - 1)^2 after
    # 5 SGD steps of lr 0.1 from w = 0 is 0.8^10
    assert len(lines) == 1 and lines[0].startswith("[progress] training _Toy: 6/6 (100%), loss ")
    assert float(lines[0].split("loss ")[1].split(",")[0]) == pytest.approx(0.8**10, abs=1e-4)


@pytest.mark.slow
def test_kernel_progress_reaches_the_console_while_the_cell_runs(tmp_path, capfd):
    """The real path: a kernel started by papermill inherits the switch, its lines come back through
    `_ProgressEcho`, and the kernel's TCP warning stays off the console."""
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from anomalyseg.progress import ProgressLine\n"
            "line = ProgressLine('toy loop', 3, every_s=0)\n"
            "for i in range(1, 4):\n    line.update(i)\n"
            "print('not a progress line')"
        )
    ]
    nbformat.write(nb, tmp_path / "t.ipynb")
    out = io.StringIO()
    with _kernel_environment({progress.ENV: "1"}):  # what run-all sets for its kernels
        pm.execute_notebook(
            str(tmp_path / "t.ipynb"),
            str(tmp_path / "o.ipynb"),
            kernel_name="python3",
            progress_bar=False,
            stdout_file=_ProgressEcho("07", out),
            extra_arguments=_KERNEL_ARGS,
        )
    assert [s.split(",")[0] for s in out.getvalue().splitlines()] == [
        "[run-all] 07 toy loop: 1/3 (33%)",
        "[run-all] 07 toy loop: 2/3 (67%)",
        "[run-all] 07 toy loop: 3/3 (100%)",
    ]
    assert "without encryption" not in capfd.readouterr().err
