"""The evaluation loop against sklearn on the same pooled pixels, with a deterministic toy model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, jaccard_score, roc_auc_score

from anomalyseg import scores as S
from anomalyseg.evaluate import OutputCache, evaluate_anomaly, evaluate_miou
from anomalyseg.models.base import resize_map
from anomalyseg.results import load_curves, read_results


class ToySegmenter:
    """Class logits derived from the image colour, so outputs are fixed and inspectable."""

    name, checkpoint, num_channels, supports_class_temperature = "toy", "toy-v1", 19, True
    extra_score_names = ("toy_head",)

    def __init__(self):
        self.forwards = 0
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(19, 3, generator=g)

    def eval_size(self, frame_size):
        return frame_size

    def raw_outputs(self, image):
        self.forwards += 1
        x = image.float() / 255.0
        return {"logits": torch.einsum("ck,khw->chw", self.proj, x * 4 - 2).half()}

    def class_map(self, raw, size, class_temperature=1.0):
        return resize_map(raw["logits"].float() / class_temperature, size)

    def extra_scores(self, raw, size):
        return {"toy_head": raw["logits"].float().std(0)}


class ListData(torch.utils.data.Dataset):
    def __init__(self, n=3, seed=0, key="label", values=(0, 1, 255)):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            img = torch.randint(0, 256, (3, 12, 20), generator=g, dtype=torch.uint8)
            lab = torch.tensor(values, dtype=torch.uint8)[
                torch.randint(0, len(values), (12, 20), generator=g)
            ]
            self.items.append({"image": img, key: lab, "stem": str(i)})
        self.skipped = ["9"]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _pooled(seg, data, score, t=1.0, class_t=1.0):
    xs, ys = [], []
    for item in data.items:
        raw = seg.raw_outputs(item["image"])
        m = S.get_score(score)(seg.class_map(raw, (12, 20), class_t), temperature=t).numpy().ravel()
        lab = item["label"].numpy().ravel()
        keep = lab < 2
        xs.append(m[keep])
        ys.append(lab[keep])
    return np.concatenate(xs), np.concatenate(ys)


def test_rows_equal_sklearn_on_pooled_pixels(tmp_path):
    seg, data = ToySegmenter(), ListData()
    path = tmp_path / "results.csv"
    df = evaluate_anomaly(
        seg,
        {"RoadAnomaly21": data},
        scores=("msp", "max_logit", "toy_head"),
        temperatures=(0.5, 1.0),
        results_path=path,
        progress=False,
    )
    assert seg.forwards == 3  # one forward per frame for every score and temperature
    for score, t in (("msp", 0.5), ("msp", 1.0), ("max_logit", 1.0)):
        x, y = _pooled(ToySegmenter(), data, score, t)
        row = df[(df.score == score) & (df.temperature == t)].iloc[0]
        assert row.auprc == pytest.approx(average_precision_score(y, x), abs=1e-9)
        assert row.auroc == pytest.approx(roc_auc_score(y, x), abs=1e-9)
        assert row.frames_used == 3 and row.frames_skipped == 1
    # max_logit ignores T, and still has a row per swept T; the learned head has one row without T.
    assert sorted(df[df.score == "max_logit"].temperature) == [0.5, 1.0]
    head = df[df.score == "toy_head"]
    assert len(head) == 1 and head.iloc[0].temperature_on == "none"
    stored = read_results(path)
    assert len(stored) == len(df)
    curves = load_curves(path, stored.iloc[0])
    assert set(curves) == {"recall", "precision", "fpr", "tpr"}


def test_class_temperature_changes_the_fusion(tmp_path):
    seg, data = ToySegmenter(), ListData()
    df = evaluate_anomaly(
        seg,
        {"fs_static": data},
        scores=("msp",),
        temperatures=(0.5, 2.0),
        temperature_on="class",
        results_path=None,
        progress=False,
    )
    for t in (0.5, 2.0):
        x, y = _pooled(ToySegmenter(), data, "msp", 1.0, class_t=t)
        assert df[df.temperature == t].iloc[0].auprc == pytest.approx(
            average_precision_score(y, x), abs=1e-9
        )


def test_disk_cache_skips_the_forward(tmp_path):
    data = ListData()
    cache = OutputCache(tmp_path / "cache")
    first = evaluate_anomaly(
        ToySegmenter(),
        {"fs_static": data},
        scores=("msp",),
        results_path=None,
        cache=cache,
        progress=False,
    )
    seg = ToySegmenter()
    second = evaluate_anomaly(
        seg, {"fs_static": data}, scores=("msp",), results_path=None, cache=cache, progress=False
    )
    assert seg.forwards == 0
    assert first.auprc.tolist() == second.auprc.tolist()


def test_bad_settings_are_clear():
    seg = ToySegmenter()
    with pytest.raises(ValueError, match="temperature_on"):
        evaluate_anomaly(seg, {}, temperature_on="logits", results_path=None)
    seg.supports_class_temperature = False
    with pytest.raises(ValueError, match="no class logits"):
        evaluate_anomaly(seg, {}, temperature_on="class", results_path=None)
    with pytest.raises(ValueError, match="unknown anomaly score"):
        evaluate_anomaly(seg, {}, scores=("maxlogit",), results_path=None)


def test_miou_matches_sklearn_jaccard(tmp_path):
    seg = ToySegmenter()
    data = ListData(key="target", values=tuple(range(19)) + (255,))
    rows, per_class = evaluate_miou(seg, data, results_path=tmp_path / "r.csv", progress=False)
    preds, targets = [], []
    for item in data.items:
        preds.append(
            seg.class_map(seg.raw_outputs(item["image"]), (12, 20)).argmax(0).numpy().ravel()
        )
        targets.append(item["target"].numpy().ravel())
    p, t = np.concatenate(preds), np.concatenate(targets)
    keep = t != 255
    ref = jaccard_score(t[keep], p[keep], labels=list(range(19)), average=None, zero_division=0)
    np.testing.assert_allclose(per_class["T=1"].to_numpy(), ref, atol=1e-12)
    assert rows.iloc[0].miou == pytest.approx(ref.mean())


def test_maps_of_first_frames_are_stored_for_the_report(tmp_path):
    from anomalyseg.results import load_maps

    seg, data = ToySegmenter(), ListData()
    path = tmp_path / "results.csv"
    df = evaluate_anomaly(
        seg,
        {"fs_static": data},
        scores=("msp", "toy_head"),
        results_path=path,
        maps_frames=2,
        progress=False,
    )
    stored = load_maps(path, df.run_id.iloc[0], "fs_static")
    assert list(stored) == ["0", "1"]
    frame = stored["1"]
    expected = S.msp(seg.class_map(seg.raw_outputs(data.items[1]["image"]), (12, 20)))
    np.testing.assert_allclose(
        frame["maps"]["msp"], expected.numpy(), atol=1e-3
    )  # stored as float16
    assert (
        frame["image"].shape == (3, 12, 20)
        and (frame["label"] == data.items[1]["label"].numpy()).all()
    )


class ModuleToy(ToySegmenter):
    """A segmenter whose outputs come from an nn.Module, as real models' do."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.model = torch.nn.Conv2d(3, 19, 1)
        with torch.no_grad():
            self.model.weight.copy_(self.proj[:, :, None, None] * weight)
            self.model.bias.zero_()

    def raw_outputs(self, image):
        self.forwards += 1
        with torch.no_grad():
            return {"logits": self.model(image[None].float() / 255.0 * 4 - 2)[0].half()}


def test_disk_cache_keys_on_the_weights_and_reads_frames_lazily(tmp_path):
    from anomalyseg.evaluate import collect_outputs

    data, cache = ListData(), OutputCache(tmp_path / "cache")
    in_memory = collect_outputs(ModuleToy(), data, "fs_static", OutputCache(), progress=False)
    frames = collect_outputs(ModuleToy(), data, "fs_static", cache, progress=False)
    assert all(f._raw is None for f in frames)  # read back from disk when used
    for a, b in zip(in_memory, frames):
        torch.testing.assert_close(a.raw["logits"], b.raw["logits"], rtol=0, atol=0)
    same = ModuleToy()
    collect_outputs(same, data, "fs_static", cache, progress=False)
    assert same.forwards == 0  # same name, checkpoint and weights: cached
    trained = ModuleToy(weight=0.5)  # same name and checkpoint string, other weights
    again = collect_outputs(trained, data, "fs_static", cache, progress=False)
    assert trained.forwards == len(data)
    assert not torch.equal(again[0].raw["logits"], frames[0].raw["logits"])


def test_histogram_metrics_for_sweeps(tmp_path):
    seg, data = ToySegmenter(), ListData(n=4)
    path = tmp_path / "results.csv"
    kw = dict(
        scores=("msp", "energy", "max_logit"),
        temperatures=(0.5, 2.0),
        results_path=path,
        progress=False,
        maps_frames=0,
    )
    exact = evaluate_anomaly(seg, {"fs_static": data}, **kw)
    binned = evaluate_anomaly(seg, {"fs_static": data}, histogram_bits=20, **kw)
    assert (
        len(binned) == len(exact) == 6
        and set(binned.metric_bins) == {"2^20"}
        and set(exact.metric_bins) == {""}
    )
    for (_, a), (_, b) in zip(exact.iterrows(), binned.iterrows()):
        assert (a.score, a.temperature) == (b.score, b.temperature)
        assert b.auprc == pytest.approx(a.auprc, abs=1e-4) and b.auroc == pytest.approx(
            a.auroc, abs=1e-4
        )
    assert set(read_results(path).metric_bins.fillna("")) == {"", "2^20"}


def test_class_temperatures_in_one_pass_equal_separate_runs(tmp_path):
    data = ListData()
    together = evaluate_anomaly(
        ToySegmenter(),
        {"fs_static": data},
        scores=("msp", "rba"),
        temperatures=(0.5, 1.0, 2.0),
        temperature_on="class",
        results_path=None,
        progress=False,
        max_bytes=1,
    )
    for t in (0.5, 2.0):
        alone = evaluate_anomaly(
            ToySegmenter(),
            {"fs_static": data},
            scores=("msp", "rba"),
            temperatures=(t,),
            temperature_on="class",
            results_path=None,
            progress=False,
        )
        got = together[together.temperature == t]
        assert (
            got.auprc.tolist() == alone.auprc.tolist()
            and got.score.tolist() == alone.score.tolist()
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_fingerprint_of_large_tensors(dtype):
    from anomalyseg.evaluate import weights_fingerprint

    seg = ModuleToy()
    seg.model = torch.nn.Linear(1000, 200).to(
        dtype
    )  # 200k weights: hashed through a strided sample and the sum
    first = weights_fingerprint(seg)
    assert first == weights_fingerprint(seg) and len(first) == 16
    with torch.no_grad():
        seg.model.weight[0, 1] += 1.0  # off the sampled stride: the sum still changes
    assert weights_fingerprint(seg) != first


# ------------------------------------------------------------------ stored rows, or an evaluation
def test_anomaly_rows_are_reused_per_checkpoint_score_and_protocol(tmp_path):
    from anomalyseg.evaluate import anomaly_rows_or_evaluate

    path, data = tmp_path / "results.csv", ListData()
    bench = {"RoadAnomaly21": data}
    seg = ToySegmenter()
    # a store holding msp only: only max_logit is evaluated, msp is reused
    evaluate_anomaly(seg, bench, scores=("msp",), results_path=path, progress=False)
    rows, how = anomaly_rows_or_evaluate(seg, bench, path, ["msp", "max_logit"], progress=False)
    assert how == f"toy: evaluated max_logit; 1 rows reused from {path}"
    assert len(read_results(path)) == 2 and sorted(rows.score) == ["max_logit", "msp"]
    for score in ("msp", "max_logit"):
        x, y = _pooled(ToySegmenter(), data, score)
        found = rows[rows.score == score].iloc[0].auprc
        assert found == pytest.approx(average_precision_score(y, x), abs=1e-9)
    # everything stored: no forward pass, nothing appended
    again = ToySegmenter()
    reused, how = anomaly_rows_or_evaluate(again, bench, path, ["msp", "max_logit"], progress=False)
    assert again.forwards == 0 and how == f"toy: all 2 rows reused from {path}"
    assert len(read_results(path)) == 2
    assert reused.set_index("score").auprc.to_dict() == rows.set_index("score").auprc.to_dict()
    # default scores: EoMT's standard five for a mask-classification model (msp, max_logit stored)
    rows, how = anomaly_rows_or_evaluate(again, bench, path, progress=False)
    assert how.startswith("toy: evaluated max_entropy, energy, rba; 2 rows reused")
    assert list(rows.score) == list(S.default_scores("eomt"))
    # another checkpoint or another protocol is another model: evaluated again
    other = ToySegmenter()
    other.checkpoint = "toy-v2"
    _, how = anomaly_rows_or_evaluate(other, bench, path, ["msp"], progress=False)
    assert other.forwards == 3 and how == "toy: evaluated msp"
    _, how = anomaly_rows_or_evaluate(
        ToySegmenter(), bench, path, ["msp"], progress=False, protocol="smiyc"
    )
    assert how == "toy: evaluated msp"


def test_miou_is_reused_for_the_same_checkpoint(tmp_path):
    from anomalyseg.evaluate import miou_or_evaluate

    path, seg = tmp_path / "results.csv", ToySegmenter()
    data = ListData(key="target", values=tuple(range(19)) + (255,))
    miou, how = miou_or_evaluate(seg, data, path, progress=False)
    assert how == "toy: mIoU evaluated on 3 frames" and seg.forwards == 3
    ref = evaluate_miou(ToySegmenter(), data, results_path=None, progress=False)[0].iloc[0].miou
    assert miou == pytest.approx(ref, abs=1e-12)
    again = ToySegmenter()
    reused, how = miou_or_evaluate(again, data, path, progress=False)
    assert (reused, how, again.forwards) == (miou, f"toy: mIoU reused from {path}", 0)
    assert read_results(path).dataset.tolist() == ["cityscapes_val"]


def test_evaluation_pass_times_the_first_frames_and_scales_to_all(monkeypatch):
    """max_frames: the uncached pass sees only the first frames of each data set, and its time is
    scaled by (all frames / timed frames); None times every frame as it is."""
    import anomalyseg.evaluate as E

    seen = []

    def stems(d):
        return [d[i]["stem"] for i in range(len(d))]

    def anomaly(seg, benches, *a, **k):
        seen.extend([n, stems(d)] for n, d in benches.items())

    monkeypatch.setattr(E, "evaluate_anomaly", anomaly)
    monkeypatch.setattr(E, "evaluate_miou", lambda seg, d, *a, **k: seen.append(["val", stems(d)]))
    clock = iter([100.0, 106.0, 200.0, 206.0])
    monkeypatch.setattr(E.time, "perf_counter", lambda: next(clock))
    benches = {"a": ListData(5, seed=1), "b": ListData(2, seed=2)}
    val = ListData(4, seed=3, key="target")
    # timed: 3 + 2 + 3 = 8 of 11 frames in 6 s -> 6 * 11 / 8
    estimate = E.evaluation_pass(ToySegmenter(), benches, val, max_frames=3)
    assert estimate == pytest.approx(6 * 11 / 8)
    assert seen == [["a", ["0", "1", "2"]], ["b", ["0", "1"]], ["val", ["0", "1", "2"]]]
    seen.clear()
    assert E.evaluation_pass(ToySegmenter(), benches, val) == pytest.approx(6.0)
    assert seen == [
        ["a", ["0", "1", "2", "3", "4"]],
        ["b", ["0", "1"]],
        ["val", ["0", "1", "2", "3"]],
    ]


def _bench_folder(folder, data):
    """``data``'s frames as a benchmark folder on disk (PNG images, 0/1/255 masks)."""
    from PIL import Image

    for sub in ("images", "labels_masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for item in data.items:
        Image.fromarray(item["image"].permute(1, 2, 0).numpy()).save(
            folder / "images" / f"{item['stem']}.png"
        )
        Image.fromarray(item["label"].numpy()).save(folder / "labels_masks" / f"{item['stem']}.png")
    return folder


def test_stored_rows_are_reused_only_for_the_same_frames(tmp_path):
    # An embedded data set regenerated by a newer generator (or re-annotated masks) keeps its file
    # names: rows computed on the old frames must not stand in for the new ones.
    from anomalyseg.data.benchmarks import AnomalyBenchmark
    from anomalyseg.evaluate import anomaly_rows_or_evaluate

    path = tmp_path / "results.csv"
    old = AnomalyBenchmark(_bench_folder(tmp_path / "a" / "bench", ListData(seed=0)))
    copy = AnomalyBenchmark(_bench_folder(tmp_path / "b" / "bench", ListData(seed=0)))
    new = AnomalyBenchmark(_bench_folder(tmp_path / "c" / "bench", ListData(seed=1)))
    assert old.fingerprint == copy.fingerprint != new.fingerprint
    anomaly_rows_or_evaluate(ToySegmenter(), {"fs_static": old}, path, ["msp"], progress=False)
    seg = ToySegmenter()
    _, how = anomaly_rows_or_evaluate(seg, {"fs_static": copy}, path, ["msp"], progress=False)
    assert seg.forwards == 0 and how.startswith("toy: all 1 rows reused")
    seg = ToySegmenter()
    rows, how = anomaly_rows_or_evaluate(seg, {"fs_static": new}, path, ["msp"], progress=False)
    assert seg.forwards == 3 and how == "toy: evaluated msp"
    x, y = _pooled(ToySegmenter(), ListData(seed=1), "msp")
    assert rows.iloc[0].auprc == pytest.approx(average_precision_score(y, x), abs=1e-9)
    stored = read_results(path)
    assert stored.data_fingerprint.tolist() == [old.fingerprint, new.fingerprint]
    # one mask corrected under the same name: other frames again
    label = ListData(seed=0).items[1]["label"].numpy().copy()
    label[0, :] = 1
    from PIL import Image

    Image.fromarray(label).save(tmp_path / "b" / "bench" / "labels_masks" / "1.png")
    fixed = AnomalyBenchmark(tmp_path / "b" / "bench")
    assert fixed.fingerprint not in (old.fingerprint, new.fingerprint)
    _, how = anomaly_rows_or_evaluate(ToySegmenter(), {"fs_static": fixed}, path, ["msp"])
    assert how == "toy: evaluated msp"


def test_miou_is_reused_only_for_the_same_frames(tmp_path):
    path = tmp_path / "results.csv"
    data = ListData(key="target", values=tuple(range(19)) + (255,))
    data.fingerprint = "0123456789ab"  # all digits but one: stays text in the store
    from anomalyseg.evaluate import miou_or_evaluate

    miou_or_evaluate(ToySegmenter(), data, path, progress=False)
    assert read_results(path).data_fingerprint.tolist() == ["0123456789ab"]
    _, how = miou_or_evaluate(ToySegmenter(), data, path, progress=False)
    assert how.startswith("toy: mIoU reused")
    data.fingerprint = "0123456789ac"
    seg = ToySegmenter()
    _, how = miou_or_evaluate(seg, data, path, progress=False)
    assert how == "toy: mIoU evaluated on 3 frames" and seg.forwards == 3
