"""run-all's scheduling: a notebook starts once every notebook it NEEDS has finished, at most
`jobs` at once; a failure lets the running notebooks finish, starts nothing new and names the
resume point; Ctrl-C leaves no kernel behind. papermill's execute_notebook is replaced by a
recorder that sleeps (no kernels), except in the Ctrl-C test, which interrupts real kernels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from anomalyseg import pipeline
from anomalyseg.pipeline import NEEDS, NOTEBOOKS, NotebookFailed, run_all


class Recorder:
    """Stands in for ``pm.execute_notebook``: sleeps ``seconds[number]`` (default ``default_s``),
    raises a cell error for the numbers in ``fail``, and logs ("start" | "end", name) in the
    order they happened."""

    def __init__(self, seconds=None, fail=(), default_s=0.2):
        self.seconds, self.fail, self.default_s = seconds or {}, set(fail), default_s
        self.events, self.running, self.most = [], 0, 0
        self._lock = threading.Lock()

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        name = Path(input_path).stem
        with self._lock:
            self.events.append(("start", name))
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds.get(name[:2], self.default_s))
        with self._lock:
            self.events.append(("end", name))
            self.running -= 1
        if name[:2] in self.fail:
            raise pm.PapermillExecutionError(4, 5, "x", "ValueError", f"boom in {name}", [])

    def at(self, kind: str, name: str) -> int:
        return self.events.index((kind, name))

    def started(self) -> list[str]:
        return [n for kind, n in self.events if kind == "start"]


def _run(tmp_path, recorder, monkeypatch, **kwargs):
    monkeypatch.setattr(pm, "execute_notebook", recorder)
    return run_all(
        preset="tiny",
        data_root=tmp_path / "data",
        output_dir=tmp_path / "out",
        runs_dir=tmp_path / "runs",
        progress=False,
        **kwargs,
    )


def test_every_need_comes_earlier_in_the_numbered_order():
    """So that the numbered order is a valid one (what --jobs 1 runs) and --from N can take the
    notebooks before N as done."""
    assert list(NEEDS) == list(NOTEBOOKS)
    for name, needs in NEEDS.items():
        assert all(NOTEBOOKS.index(n) < NOTEBOOKS.index(name) for n in needs), name
    assert set(NEEDS["06_comparison_report"]) == set(NOTEBOOKS[:6])  # the report reads it all


@pytest.mark.parametrize("jobs", [1, 2])
def test_notebooks_start_after_what_they_need_at_most_jobs_at_once(tmp_path, monkeypatch, jobs):
    rec = Recorder()
    run_dir = _run(tmp_path, rec, monkeypatch, jobs=jobs)
    assert run_dir.parent == (tmp_path / "runs").resolve()
    assert sorted(rec.started()) == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        for need in NEEDS[name]:
            assert rec.at("end", need) < rec.at("start", name), (need, name)
    assert rec.most == jobs
    if jobs == 1:  # strictly one after the other, in numbered order
        assert rec.events == [(k, n) for n in NOTEBOOKS for k in ("start", "end")]
    else:  # 01 and 02 both wait on 00 only: they run side by side
        assert rec.at("start", "02_eomt_eval") < rec.at("end", "01_erfnet_baseline")


def test_never_more_than_jobs_notebooks_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "NEEDS", {n: () for n in NOTEBOOKS})
    rec = Recorder()
    _run(tmp_path, rec, monkeypatch, jobs=3)
    assert rec.most == 3 and sorted(rec.started()) == list(NOTEBOOKS)


def test_a_failure_lets_the_running_notebook_finish_and_starts_nothing_new(tmp_path, monkeypatch):
    rec = Recorder(seconds={"01": 1.0, "02": 0.1}, fail={"02"})
    with pytest.raises(NotebookFailed) as info:
        _run(tmp_path, rec, monkeypatch, jobs=2)
    # 01 and 02 start together: their threads may log them in either order
    assert sorted(rec.started()) == ["00_data_prep", "01_erfnet_baseline", "02_eomt_eval"]
    assert rec.at("end", "02_eomt_eval") < rec.at("end", "01_erfnet_baseline")  # 01 ran on
    text = str(info.value)
    assert "02_eomt_eval failed in cell 5: ValueError: boom in 02_eomt_eval" in text
    assert "01_erfnet_baseline" not in text  # it finished: its work is kept
    folders = f"--data-root {tmp_path / 'data'} --output-dir {tmp_path / 'out'}"
    assert f"`anomalyseg run-all --preset tiny {folders} --runs-dir {tmp_path / 'runs'} " in text
    assert text.endswith("--from 02` (the earliest notebook that did not finish).")


def test_the_resume_point_is_the_earliest_notebook_that_did_not_finish(tmp_path, monkeypatch):
    """04 (which needs 02 only) fails while 01 still runs; 01 finishes, 03 (which needed 01) never
    started: the run resumes at 03, not at 04."""
    rec = Recorder(seconds={"01": 1.5, "02": 0.05, "04": 0.05}, fail={"04"})
    with pytest.raises(NotebookFailed) as info:
        _run(tmp_path, rec, monkeypatch, jobs=2)
    assert "03_temperature_scaling" not in rec.started()
    assert ("end", "01_erfnet_baseline") in rec.events
    text = str(info.value)
    assert "04_outlier_exposure failed in cell 5" in text and "--from 03`" in text


def test_every_failed_notebook_is_named(tmp_path, monkeypatch):
    rec = Recorder(fail={"01", "02"})
    with pytest.raises(NotebookFailed) as info:
        _run(tmp_path, rec, monkeypatch, jobs=2, stop_after="05")
    text = str(info.value)
    assert "Notebook 01_erfnet_baseline failed in cell 5: ValueError: boom in 01" in text
    assert "notebook 02_eomt_eval failed in cell 5: ValueError: boom in 02" in text
    assert str((tmp_path / "runs").resolve()) in text  # where the tracebacks are
    assert "--from 01 --to 05`" in text
    assert sorted(rec.started()) == ["00_data_prep", "01_erfnet_baseline", "02_eomt_eval"]


def test_from_and_to_with_two_jobs(tmp_path, monkeypatch):
    """--from 01 --to 04: 00 counts as done; 01 runs alone (it generates the data set if it is
    missing, and 02 would too); 02 then, 03 and 04 together, nothing after 04."""
    rec = Recorder()
    _run(tmp_path, rec, monkeypatch, jobs=2, start_at="01", stop_after="04")
    assert sorted(rec.started()) == [
        "01_erfnet_baseline",
        "02_eomt_eval",
        "03_temperature_scaling",
        "04_outlier_exposure",
    ]
    assert rec.at("end", "01_erfnet_baseline") < rec.at("start", "02_eomt_eval")
    assert rec.at("start", "04_outlier_exposure") < rec.at("end", "03_temperature_scaling")


def test_kernels_share_the_cores_out_unless_the_user_set_their_threads(tmp_path, monkeypatch):
    """Each kernel inherits run-all's environment at its start: with two at once, each gets half
    the cores as torch threads (OMP_NUM_THREADS); one at a time, or a user's own setting, stays."""
    seen = []

    class EnvRecorder(Recorder):
        def __call__(self, input_path, output_path, parameters=None, **kwargs):
            seen.append(
                (os.environ.get("OMP_NUM_THREADS"), os.environ.get("ANOMALYSEG_CONSOLE_PROGRESS"))
            )

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _run(tmp_path, EnvRecorder(), monkeypatch, jobs=2, stop_after="01")
    assert seen == [(str(max(1, cores // 2)), "1")] * 2
    assert "OMP_NUM_THREADS" not in os.environ  # put back as it was
    seen.clear()
    _run(tmp_path, EnvRecorder(), monkeypatch, jobs=1, stop_after="01")
    assert seen == [(None, "1")] * 2
    seen.clear()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    _run(tmp_path, EnvRecorder(), monkeypatch, jobs=2, stop_after="01")
    assert seen == [("3", "1")] * 2


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_count(tmp_path, monkeypatch, jobs):
    with pytest.raises(ValueError, match="jobs is the number of notebooks run at once"):
        _run(tmp_path, Recorder(), monkeypatch, jobs=jobs)
    assert not (tmp_path / "runs").exists()


_SLEEPER = """\
import signal
import sys
from pathlib import Path

from anomalyseg import pipeline

# Ctrl-C as a terminal's foreground command gets it: a script's background job (CI started with
# `&`) ignores SIGINT, and Python then keeps ignoring it in every process started below.
signal.signal(signal.SIGINT, signal.default_int_handler)

root = Path(sys.argv[1])
pipeline.notebooks_dir = lambda: root / "notebooks"
pipeline.run_all(
    preset="tiny", output_dir=root / "out", runs_dir=root / "runs", run_id="r",
    stop_after="02", jobs=2, progress=True,
)
"""


@pytest.mark.slow
def test_ctrl_c_stops_the_running_kernels(tmp_path):
    """Ctrl-C on a terminal reaches run-all's process group, not the kernels (a session of their
    own): run-all interrupts their cells, the executed copies show where, and no kernel lives on."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "presets.yaml").write_text("tiny: {}\n")
    for name in NOTEBOOKS[:3]:  # 00 ends at once; 01 and 02 then sleep side by side
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        params = nbformat.v4.new_code_cell('preset = ""\noutput_dir = ""')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params]
        if name != NOTEBOOKS[0]:
            nb.cells.append(
                nbformat.v4.new_code_cell(
                    "import os, pathlib, time\n"
                    f"pathlib.Path(output_dir, '{name}.pid').write_text(str(os.getpid()))\n"
                    "time.sleep(300)"
                )
            )
        nbformat.write(nb, nbs / f"{name}.ipynb")
    (tmp_path / "out").mkdir()
    script = tmp_path / "sleepers.py"
    script.write_text(_SLEEPER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    pids = [tmp_path / "out" / f"{n}.pid" for n in NOTEBOOKS[1:3]]
    try:
        deadline = time.time() + 120
        while not all(p.is_file() and p.read_text() for p in pids) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        assert all(p.is_file() for p in pids), "the two kernels did not start within 120 s"
        kernels = [int(p.read_text()) for p in pids]
        interrupted = time.time()
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        try:
            out, _ = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            left = proc.communicate()[0]
            pytest.fail(f"run-all still ran 150 s after Ctrl-C; its output:\n{left}")
    finally:  # a failed test leaves nothing running either
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in pids:
            if p.is_file() and p.read_text() and _alive(int(p.read_text())):
                os.kill(int(p.read_text()), signal.SIGKILL)
    # run-all gives its kernels _STOP_S after SIGINT and again after SIGKILL; the rest is process
    # exit, which a loaded CI machine (2 cores, another test file beside) stretches.
    assert proc.returncode != 0 and time.time() - interrupted < 4 * pipeline._STOP_S, out
    assert "[run-all] interrupted: stopping 01_erfnet_baseline, 02_eomt_eval" in out
    # the run's own folders, so that the command resumes this run and not the checkout's
    resume = (
        f"resume with `anomalyseg run-all --preset tiny --output-dir {tmp_path / 'out'} "
        f"--runs-dir {tmp_path / 'runs'} --from 01 --to 02`"
    )
    assert resume in out
    for pid in kernels:
        assert not _alive(pid), f"kernel {pid} lives on"
    for name in NOTEBOOKS[1:3]:
        cells = json.loads((tmp_path / "runs" / "r" / f"{name}.ipynb").read_text())["cells"]
        errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert [e["ename"] for e in errors] == ["KeyboardInterrupt"], name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())


def test_progress_lines_of_two_notebooks_stay_whole(capsys):
    """Two notebooks' kernels stream into two _ProgressEcho at once: each console line is one
    notebook's line, whole."""
    echoes = [pipeline._ProgressEcho(tag) for tag in ("03", "04")]

    def stream(echo, text):
        for i in range(300):
            for piece in textwrap.wrap(
                f"[progress] {text} {i}: " + "x" * 40, 7, drop_whitespace=False
            ):
                echo.write(piece)
            echo.write("\n")

    threads = [
        threading.Thread(target=stream, args=(e, t)) for e, t in zip(echoes, ("loop a", "loop b"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 600
    for line in lines:
        tag, text = line.split(" ", 2)[1:]
        assert (tag, text.split(" ")[1]) in (("03", "a"), ("04", "b")), line
        assert text.endswith("x" * 40), line
