"""Temperature scaling: the fitted T against a brute-force NLL grid, ECE and NLL against numpy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax

from anomalyseg.calibration import (
    calibrate,
    calibration_curve,
    fit_temperature,
    sample_pixels,
    temperature_nll,
)
from anomalyseg.evaluate import Frame
from anomalyseg.report.figures import reliability_figure
from anomalyseg.report.tables import calibration_table, stored_calibration_table, temperature_spread

C = 19


class LogitSegmenter:
    """Per-pixel logits stored as the raw output (ERFNet-like: no class temperature)."""

    name, checkpoint, num_channels, supports_class_temperature = "toy_pixel", "toy", C, False

    def class_map(self, raw, size, class_temperature=1.0):
        assert class_temperature == 1.0
        return raw["logits"].clone()


class MaskSegmenter:
    """Mask classification like EoMT:
    ``scale * sum_q softmax(class_logits / T)[:19] * sigmoid(masks)``."""

    name, checkpoint, num_channels, supports_class_temperature = "toy_mask", "toy", C, True

    def __init__(self, scale=6.0):
        self.scale = scale

    def class_map(self, raw, size, class_temperature=1.0):
        p = torch.softmax(raw["class_logits"] / class_temperature, dim=-1)[:, :C]
        return self.scale * torch.einsum("qc,qhw->chw", p, raw["masks"].sigmoid())


def _sample_labels(x, temperature, gen, void_share=0.1):
    """Labels drawn from softmax(x / T) per pixel, a share set to void 255."""
    p = torch.softmax(x / temperature, dim=0).reshape(C, -1).T
    y = torch.multinomial(p, 1, generator=gen).squeeze(1)
    y[torch.rand(y.shape, generator=gen) < void_share] = 255
    return y.reshape(x.shape[1:])


def pixel_frames(n=4, h=24, w=32, true_t=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = []
    for i in range(n):
        x = 3 * torch.randn(C, h, w, generator=gen)
        frames.append(Frame(str(i), {"logits": x}, _sample_labels(x, true_t, gen)))
    return frames


def mask_frames(seg, n=4, h=20, w=24, q=6, true_t=0.6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = []
    for i in range(n):
        raw = {
            "class_logits": 2 * torch.randn(q, C + 1, generator=gen),
            "masks": 3 * torch.randn(q, h, w, generator=gen),
        }
        frames.append(
            Frame(str(i), raw, _sample_labels(seg.class_map(raw, (h, w), true_t), 1.0, gen))
        )
    return frames


def reference_nll(xs, ys):
    """Mean NLL of the true class over non-void pixels, in numpy."""
    total, n = 0.0, 0
    for x, y in zip(xs, ys):
        x, y = np.asarray(x, np.float64).reshape(C, -1), np.asarray(y).reshape(-1)
        keep = y != 255
        logp = np_log_softmax(x[:, keep], axis=0)
        total -= logp[y[keep], np.arange(keep.sum())].sum()
        n += keep.sum()
    return total / n


def test_pixel_temperature_matches_a_brute_force_grid():
    frames = pixel_frames()
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    nlls = [
        reference_nll([f.raw["logits"] / t for f in frames], [f.label for f in frames])
        for t in grid
    ]
    best = grid[int(np.argmin(nlls))]
    fitted = fit_temperature(LogitSegmenter(), frames, "pixel", max_pixels=None)
    step = np.log(grid[1] / grid[0])
    assert abs(math.log(fitted) - math.log(best)) <= step
    assert fitted == pytest.approx(0.5, rel=0.1)  # labels were drawn at T = 0.5
    # and the curve fit_temperature minimises is that NLL
    np.testing.assert_allclose(
        temperature_nll(LogitSegmenter(), frames, [0.3, 1.0, 2.0], max_pixels=None),
        [nlls[int(np.argmin(np.abs(grid - t)))] for t in (0.3, 1.0, 2.0)],
        rtol=2e-3,
    )


def test_class_temperature_matches_a_brute_force_grid():
    seg = MaskSegmenter()
    frames = mask_frames(seg)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 801))
    nlls = np.array(
        [
            reference_nll(
                [seg.class_map(f.raw, None, t) for f in frames], [f.label for f in frames]
            )
            for t in grid
        ]
    )
    fitted = fit_temperature(seg, frames, "class", max_pixels=None)
    fitted_nll = reference_nll(
        [seg.class_map(f.raw, None, fitted) for f in frames], [f.label for f in frames]
    )
    assert fitted_nll <= nlls.min() + 1e-7
    assert abs(math.log(fitted) - math.log(grid[int(np.argmin(nlls))])) <= 2 * np.log(
        grid[1] / grid[0]
    )
    assert fitted == pytest.approx(0.6, rel=0.25)  # labels were drawn at class T = 0.6
    # a class fit on max_frames evenly spaced frames is the fit on exactly those frames
    assert fit_temperature(seg, frames, "class", max_pixels=None, max_frames=2) == pytest.approx(
        fit_temperature(seg, [frames[0], frames[3]], "class", max_pixels=None, max_frames=None)
    )


def test_pixel_sample_is_deterministic_uniform_and_valid():
    frames = pixel_frames(n=3)
    a, b = sample_pixels(frames, 500, seed=1), sample_pixels(frames, 500, seed=1)
    assert all(torch.equal(i, j) for i, j in zip(a, b))
    assert sum(len(i) for i in a) == 500
    for f, idx in zip(frames, a):
        assert (f.label.reshape(-1)[idx] != 255).all() and len(set(idx.tolist())) == len(idx)
    assert not all(torch.equal(i, j) for i, j in zip(a, sample_pixels(frames, 500, seed=2)))
    everything = sample_pixels(frames, None)
    assert [len(i) for i in everything] == [int((f.label != 255).sum()) for f in frames]
    # a subsample of 1000 of ~2000 pixels gives nearly the same temperature
    full = fit_temperature(LogitSegmenter(), frames, max_pixels=None)
    assert fit_temperature(LogitSegmenter(), frames, max_pixels=1000) == pytest.approx(
        full, rel=0.15
    )


def _reference_curve(xs, ys, n_bins=15):
    conf, correct = [], []
    for x, y in zip(xs, ys):
        x, y = np.asarray(x, np.float64).reshape(C, -1), np.asarray(y).reshape(-1)
        keep = y != 255
        p = np.exp(np_log_softmax(x[:, keep], axis=0))
        conf.append(p.max(0)), correct.append(p.argmax(0) == y[keep])
    conf, correct = np.concatenate(conf), np.concatenate(correct)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # (lo, hi] bins
    ece = sum(
        abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum()
        for b in range(n_bins)
        if (bins == b).any()
    ) / len(conf)
    return ece, np.bincount(bins, minlength=n_bins)


@pytest.mark.parametrize("mode", ["pixel", "class"])
def test_calibration_curve_matches_numpy(mode):
    seg = LogitSegmenter() if mode == "pixel" else MaskSegmenter()
    frames = pixel_frames(n=2) if mode == "pixel" else mask_frames(seg, n=2)
    t = 0.7
    xs = (
        [f.raw["logits"] / t for f in frames]
        if mode == "pixel"
        else [seg.class_map(f.raw, None, t) for f in frames]
    )
    ece, count = _reference_curve(xs, [f.label for f in frames])
    curve = calibration_curve(seg, frames, temperature=t, temperature_on=mode)
    assert curve["ece"] == pytest.approx(ece, abs=1e-6)
    assert curve["count"].tolist() == count.tolist()
    assert curve["nll"] == pytest.approx(reference_nll(xs, [f.label for f in frames]), rel=1e-5)
    assert len(curve["edges"]) == 16 and curve["temperature_on"] == mode
    fig = reliability_figure({"T = 1": calibration_curve(seg, frames, 1.0, mode), "T = 0.7": curve})
    assert len(fig.axes) == 4 and f"{100 * curve['ece']:.2f}%" in fig.axes[1].get_title()


def test_a_perfect_model_hits_the_bound_with_a_warning():
    frames = pixel_frames(n=1)
    for f in frames:  # a margin of 1 on the true class everywhere: sharper is always better
        f.raw["logits"] = (
            torch.nn.functional.one_hot(f.label.long().clamp(max=C - 1), C).permute(2, 0, 1).float()
        )
    with pytest.warns(UserWarning, match="bound"):
        assert fit_temperature(LogitSegmenter(), frames, bounds=(0.1, 10)) == pytest.approx(
            0.1, rel=1e-3
        )


def test_bad_input_is_refused_clearly():
    frames = pixel_frames(n=1)
    with pytest.raises(ValueError, match="'pixel'.*'class'"):
        fit_temperature(LogitSegmenter(), frames, "logits")
    with pytest.raises(ValueError, match="no class logits"):
        fit_temperature(LogitSegmenter(), frames, "class")
    with pytest.raises(ValueError, match="no frames"):
        calibration_curve(LogitSegmenter(), [], 1.0)
    anomaly = [Frame("0", frames[0].raw, (frames[0].label % 2).to(torch.uint8))]
    with pytest.raises(ValueError, match="label_key='target'"):
        fit_temperature(LogitSegmenter(), anomaly)
    with pytest.raises(ValueError, match="0 < low < high"):
        fit_temperature(LogitSegmenter(), frames, bounds=(0, 1))
    void = [Frame("0", frames[0].raw, torch.full_like(frames[0].label, 255))]
    with pytest.raises(ValueError, match="no valid pixel"):
        fit_temperature(LogitSegmenter(), void)


def test_on_a_small_eomt_the_fit_lowers_the_nll(tiny_data):
    """End to end on windowed EoMT outputs of the tiny Cityscapes val frames (random weights)."""
    from anomalyseg.data.cityscapes import CityscapesSegmentation
    from anomalyseg.evaluate import collect_outputs
    from anomalyseg.models.eomt import load_eomt, small_eomt_config

    torch.manual_seed(0)
    seg = load_eomt(
        small_eomt_config(
            image_size=32,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_queries=6,
        )
    )
    frames = collect_outputs(
        seg,
        CityscapesSegmentation(tiny_data / "cityscapes", "val"),
        "val",
        label_key="target",
        progress=False,
    )
    for mode in ("pixel", "class"):
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # a random EoMT may prefer a bound; not what this test is about
            t = fit_temperature(seg, frames, mode, max_pixels=5000, bounds=(0.05, 20))
        before, after = temperature_nll(seg, frames, [1.0, t], mode, max_pixels=5000)
        assert after <= before + 1e-9
        assert (
            calibration_curve(seg, frames, t, mode)["nll"]
            <= calibration_curve(seg, frames, 1.0, mode)["nll"] + 1e-6
        )


def test_calibrate_and_its_table():
    frames = pixel_frames(n=2)
    fit = calibrate(LogitSegmenter(), frames, "pixel", max_pixels=None)
    assert fit["temperature"] == pytest.approx(
        fit_temperature(LogitSegmenter(), frames, max_pixels=None)
    )
    assert fit["after"]["nll"] < fit["before"]["nll"]  # labels were drawn at T = 0.5, not 1
    row = calibration_table([fit]).iloc[0]
    assert row["model"] == "toy_pixel" and row["temperature_on"] == "pixel"
    assert row["ece_T1"] == round(100 * fit["before"]["ece"], 2) and row["nll_fitted"] == round(
        fit["after"]["nll"], 4
    )


def test_calibration_is_stored_and_read_back(tmp_path):
    from anomalyseg.calibration import store_calibration
    from anomalyseg.results import append_rows, read_results

    frames = pixel_frames(n=2)
    fit = calibrate(LogitSegmenter(), frames, "pixel", max_pixels=None)
    path = tmp_path / "results.csv"
    append_rows(
        [dict(model="toy_pixel", dataset="fs_static", score="msp", temperature=1.0, auprc=0.5)],
        path,
    )
    rows = store_calibration([fit], path)
    assert list(rows.temperature) == [1.0, fit["temperature"]] and set(rows.score) == {
        "calibration"
    }
    df = read_results(path)
    assert len(df) == 3 and df.ece.notna().sum() == 2
    stored = stored_calibration_table(df)
    direct = calibration_table([fit])
    assert stored.to_dict("records") == direct.to_dict(
        "records"
    )  # the report shows what notebook 03 measured
    assert stored_calibration_table(df[df.score != "calibration"]).empty


def test_temperature_spread_in_points():
    import pandas as pd

    rows = pd.DataFrame(
        dict(
            model="eomt",
            score="msp",
            dataset=["RoadAnomaly21"] * 3 + ["fs_static"] * 3,
            temperature=[0.5, 1.0, 2.0] * 2,
            auprc=[0.30, 0.35, 0.32, 0.10, 0.10, 0.10],
        )
    )
    table = temperature_spread(rows)
    assert table.loc[("eomt", "msp")].tolist() == [5.0, 0.0]  # course order: RA21 before FS Static
    assert list(table.columns) == ["SMIYC RA-21", "FS Static"]
    assert temperature_spread(rows.iloc[:0]).empty
