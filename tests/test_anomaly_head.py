"""The pixel-wise anomaly head: statistics, heads, windowed scores, weights, training on a
frozen EoMT.

References are independent of the code under test: statistics and BCE written out by hand,
windows stitched by an explicit loop over EoMT run window by window, the frozen model's weights
compared tensor by tensor, and an uninterrupted training run for the resumed one.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from safetensors.torch import save_file

from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.evaluate import OutputCache, evaluate_anomaly
from anomalyseg.models.anomaly_head import (
    HeadSegmenter,
    HybridAnomalyHead,
    StatsAnomalyHead,
    load_anomaly_head,
    pixel_statistics,
    save_anomaly_head,
)
from anomalyseg.models.base import Segmenter
from anomalyseg.models.checkpoints import CheckpointError
from anomalyseg.models.eomt import EomtSegmenter, build_eomt, normalize, split_windows
from anomalyseg.results import training_log
from anomalyseg.training.anomaly_head import AnomalyHeadModule, train_anomaly_head
from anomalyseg.training.settings import HeadConfig, TrainSettings
from helpers import Crash
from helpers import tiny_eomt_config as tiny_config


@pytest.fixture(scope="module")
def tiny_eomt():
    torch.manual_seed(0)
    return build_eomt(tiny_config())  # eval mode, masked attention off


def _heads(seed: int = 0, feature_dim: int = 32):
    torch.manual_seed(seed)
    return StatsAnomalyHead().eval(), HybridAnomalyHead(feature_dim).eval()


# ----------------------------------------------------------------------------- statistics and heads
def test_pixel_statistics_by_hand():
    # two pixels, three classes; L is EoMT's fused map, not normalised (pixel 1 sums to 0.6)
    L = torch.tensor([[0.7, 0.1], [0.2, 0.5], [0.1, 0.0]]).reshape(1, 3, 1, 2)
    s = pixel_statistics(L)
    assert s.shape == (1, 4, 1, 2) and s.dtype == torch.float32
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    h1 = -(
        0.1 * math.log(0.1) + 0.5 * math.log(0.5) + 0.0 * math.log(1e-7)
    )  # 0 log 0 -> 0 through the clamp
    expected = torch.tensor([[0.7, 0.5], [h0, h1], [1.0, 0.6], [0.3, 0.5]]).reshape(1, 4, 1, 2)
    torch.testing.assert_close(s, expected)
    assert torch.isfinite(
        pixel_statistics(torch.zeros(1, 19, 2, 2))
    ).all()  # all-zero pixel: log clamped
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        pixel_statistics(torch.rand(19, 4, 4))


def test_head_shapes_and_layers():
    stats, hybrid = _heads(feature_dim=48)
    L = torch.rand(2, 19, 24, 40)
    features = torch.randn(2, 48, 3, 5)  # a coarser grid than the map: resized inside
    assert stats(L).shape == (2, 1, 24, 40)
    assert hybrid(L, features).shape == (2, 1, 24, 40)
    convs = [m for m in stats.mlp if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (4, 64, (1, 1)),
        (64, 32, (1, 1)),
        (32, 1, (1, 1)),
    ]
    assert [m.p for m in stats.mlp if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]
    assert hybrid.mlp[0].in_channels == 36 and (
        hybrid.project.in_channels,
        hybrid.project.out_channels,
    ) == (48, 32)
    with pytest.raises(ValueError, match="patch features"):
        hybrid(L)
    with pytest.raises(ValueError, match="feature_dim=48"):
        hybrid(L, torch.randn(2, 32, 3, 5))


def test_heads_are_per_pixel_and_hybrid_reads_resized_projected_features():
    stats, hybrid = _heads(feature_dim=8)
    L = torch.rand(1, 19, 6, 10)
    # per pixel: permuting pixels permutes the logits
    perm = torch.randperm(60)
    flat = L.flatten(2)[..., perm].reshape(1, 19, 6, 10)
    torch.testing.assert_close(stats(flat).flatten(2), stats(L).flatten(2)[..., perm])
    # hybrid: features projected then resized bilinearly, concatenated after the 4 statistics
    feats = torch.randn(1, 8, 3, 5)
    projected = F.interpolate(
        F.conv2d(feats, hybrid.project.weight, hybrid.project.bias),
        size=(6, 10),
        mode="bilinear",
        align_corners=False,
    )
    x = torch.cat([pixel_statistics(L), projected], 1)
    for layer in hybrid.mlp:
        x = layer(x)
    torch.testing.assert_close(hybrid(L, feats), x)


# ----------------------------------------------------------------------------- windows
def _window_reference(model, head, image: torch.Tensor, s: int) -> torch.Tensor:
    """EoMT run on each window separately, L fused by hand, the head, and windows averaged by an
    explicit loop: the stitched head logits [H', W'] at the resized frame's size."""
    windows, offsets, resized = split_windows(image, s)
    total, count = torch.zeros(resized), torch.zeros(resized)
    for window, (a, b) in zip(windows, offsets.tolist()):
        with torch.no_grad():
            out = model(pixel_values=normalize(window[None]), output_hidden_states=False)
        masks = F.interpolate(
            out.masks_queries_logits.half().float(), size=(s, s), mode="bilinear"
        ).sigmoid()
        probs = out.class_queries_logits.softmax(-1)[..., :-1]
        L = (probs[0, :, :, None, None] * masks[0, :, None]).sum(0)[None]  # [1, C, S, S]
        feats = out.last_hidden_state[
            :, model.config.num_queries + 1 + model.config.num_register_tokens :
        ]
        feats = feats.transpose(1, 2).reshape(1, -1, s // 16, s // 16).half().float()
        with torch.no_grad():
            logits = head(L, feats)[0, 0]
        total[:, a:b] += logits
        count[:, a:b] += 1
    return total / count


def test_extra_scores_stitch_per_window_head_logits(tiny_eomt):
    stats, hybrid = _heads()
    seg = EomtSegmenter(tiny_eomt, checkpoint="tiny")
    hs = HeadSegmenter(seg, {"anomaly_head": stats, "anomaly_head_hybrid": hybrid})
    assert isinstance(hs, Segmenter) and hs.extra_score_names == (
        "anomaly_head",
        "anomaly_head_hybrid",
    )
    torch.manual_seed(1)
    image = torch.randint(
        0, 256, (3, 32, 56), dtype=torch.uint8
    )  # two windows overlapping by 8 columns
    raw = hs.raw_outputs(image)
    assert raw["mask_logits"].shape[0] == 2 and raw["features"].shape == (2, 32, 2, 2)
    maps = hs.extra_scores(raw, (32, 56))
    for name, head in (("anomaly_head", stats), ("anomaly_head_hybrid", hybrid)):
        assert maps[name].shape == (32, 56) and maps[name].dtype == torch.float32
        torch.testing.assert_close(
            maps[name], _window_reference(tiny_eomt, head, image, 32), atol=1e-4, rtol=1e-4
        )
    # the class map is EoMT's own, untouched
    torch.testing.assert_close(hs.class_map(raw, (32, 56)), seg.class_map(raw, (32, 56)))
    # sigmoid output ranks identically
    probs = HeadSegmenter(seg, {"anomaly_head": stats}, output="sigmoid").extra_scores(
        raw, (32, 56)
    )["anomaly_head"]
    torch.testing.assert_close(probs, maps["anomaly_head"].sigmoid())


def test_one_window_frame_equals_head_on_the_class_map(tiny_eomt):
    stats, _ = _heads()
    seg = EomtSegmenter(tiny_eomt, checkpoint="tiny")
    hs = HeadSegmenter(seg, {"anomaly_head": stats})
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    raw = hs.raw_outputs(image)
    with torch.no_grad():
        direct = stats(seg.class_map(raw, (32, 32))[None])[0, 0]
    torch.testing.assert_close(hs.extra_scores(raw, (32, 32))["anomaly_head"], direct)
    # at another evaluation size the stitched logits are resized bilinearly
    resized = F.interpolate(
        direct[None, None], size=(48, 48), mode="bilinear", align_corners=False
    )[0, 0]
    torch.testing.assert_close(hs.extra_scores(raw, (48, 48))["anomaly_head"], resized)


def test_head_segmenter_cache_and_errors(tiny_eomt, tmp_path):
    stats, hybrid = _heads()
    seg = EomtSegmenter(tiny_eomt, checkpoint="tiny")
    with_features = HeadSegmenter(seg, {"anomaly_head_hybrid": hybrid})
    stats_only = HeadSegmenter(seg, {"anomaly_head": stats})
    assert not seg.keep_features  # the user's segmenter is not modified
    assert with_features.cache_tag != seg.cache_tag and stats_only.cache_tag == seg.cache_tag
    image = torch.randint(0, 256, (3, 32, 56), dtype=torch.uint8)
    with pytest.raises(KeyError, match="keep_features"):
        with_features.extra_scores(seg.raw_outputs(image), (32, 56))
    with pytest.raises(ValueError, match="another backbone"):
        HeadSegmenter(seg, {"anomaly_head_hybrid": HybridAnomalyHead(64)})
    with pytest.raises(TypeError, match="EomtSegmenter"):
        HeadSegmenter(object(), {"anomaly_head": stats})


def test_evaluate_anomaly_rows_for_learned_scores(tiny_eomt, tiny_data, tmp_path):
    stats, hybrid = _heads()
    hs = HeadSegmenter(
        EomtSegmenter(tiny_eomt, checkpoint="tiny"),
        {"anomaly_head": stats, "anomaly_head_hybrid": hybrid},
    )
    benches = load_benchmarks(tiny_data / "Validation_Dataset", ["RoadAnomaly21"])
    df = evaluate_anomaly(
        hs,
        benches,
        scores=["msp", "anomaly_head", "anomaly_head_hybrid"],
        results_path=tmp_path / "r.csv",
        cache=OutputCache(tmp_path / "cache"),
        progress=False,
    )
    learned = df[df.score.isin(["anomaly_head", "anomaly_head_hybrid"])]
    assert (
        len(learned) == 2 and set(learned.temperature_on) == {"none"} and set(df.model) == {"eomt"}
    )
    assert learned.auprc.between(0, 1).all()


# ----------------------------------------------------------------------------- weights
def test_save_load_round_trip(tmp_path):
    stats, hybrid = _heads(seed=3, feature_dim=32)
    L, feats = torch.rand(1, 19, 8, 8), torch.randn(1, 32, 2, 2)
    for head in (stats, hybrid):
        path = save_anomaly_head(head, tmp_path / f"{head.variant}.safetensors")
        loaded = load_anomaly_head(path)
        assert type(loaded) is type(head) and not loaded.training
        for k, v in head.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v)
        torch.testing.assert_close(loaded(L, feats), head(L, feats))
    assert load_anomaly_head(tmp_path / "hybrid.safetensors").feature_dim == 32


def test_load_refuses_weights_that_do_not_fit(tmp_path):
    stats, hybrid = _heads(feature_dim=32)
    path = save_anomaly_head(stats, tmp_path / "stats.safetensors")
    with pytest.raises(CheckpointError, match="variant='stats'"):
        load_anomaly_head(path, variant="hybrid")
    bare = tmp_path / "bare.safetensors"  # no metadata, keys renamed
    save_file({k.replace("mlp.", "net."): v for k, v in stats.state_dict().items()}, str(bare))
    with pytest.raises(CheckpointError, match="pass variant="):
        load_anomaly_head(bare)
    with pytest.raises(
        CheckpointError, match=r"missing from checkpoint.*mlp\.0\.weight.*StatsAnomalyHead"
    ):
        load_anomaly_head(bare, variant="stats")
    wide = tmp_path / "wide.safetensors"  # hybrid weights of another backbone width, declared as 32
    save_file(HybridAnomalyHead(64).state_dict(), str(wide))
    with pytest.raises(CheckpointError, match="shape mismatch.*project.weight"):
        load_anomaly_head(wide, variant="hybrid", feature_dim=32)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_anomaly_head(tmp_path / "nothing.safetensors")


# ----------------------------------------------------------------------------- training
def test_training_loss_is_masked_bce_with_pos_weight(tiny_eomt):
    module = AnomalyHeadModule(
        tiny_eomt, "stats", max_steps=10, pos_weight=10.0
    ).eval()  # eval: no dropout
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mask = torch.randint(0, 2, (2, 32, 32), dtype=torch.uint8)
    mask[0, :10] = 255
    module.log = lambda *a, **k: None  # no trainer attached
    module.optimizers = lambda: torch.optim.SGD(module.head.parameters(), lr=0.1)
    loss = module.training_step({"image": images, "outlier_mask": mask}, 0)
    with torch.no_grad():
        x = module(images)[:, 0].double()
    y, valid = (mask == 1).double(), mask != 255
    bce = -(
        10 * y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)
    )  # pos_weight 10 on the outlier term
    torch.testing.assert_close(loss.double(), bce[valid].mean(), rtol=1e-5, atol=1e-6)
    # what happens at void pixels does not matter: change the logits there, same loss
    from anomalyseg.losses import anomaly_head_loss

    changed = x.clone()
    changed[0, :10] = 1e4
    torch.testing.assert_close(
        anomaly_head_loss(changed[:, None].float(), mask), loss.detach(), rtol=1e-5, atol=1e-6
    )
    changed[1, 0, 0] += 5.0  # a non-void pixel does
    assert not torch.isclose(anomaly_head_loss(changed[:, None].float(), mask), loss.detach())


class InitialHead(Callback):
    """Keeps a copy of the head's weights as training starts."""

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.head.state_dict().items()}


@pytest.mark.slow
def test_training_leaves_eomt_frozen_and_trains_the_head(tiny_data, tmp_path):
    torch.manual_seed(0)
    eomt = build_eomt(tiny_config())
    before = {k: v.clone() for k, v in eomt.state_dict().items()}
    initial = InitialHead()
    path = train_anomaly_head(
        eomt,
        tiny_data / "cityscapes",
        tiny_data / "coco",
        tmp_path / "hybrid",
        TrainSettings(max_steps=3, batch_size=2, progress=False, callbacks=[initial]),
        HeadConfig(variant="hybrid", ood_prob=1.0),
    )
    after = eomt.state_dict()
    assert set(after) == set(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert all(p.grad is None for p in eomt.parameters()) and not eomt.training
    ckpt = torch.load(tmp_path / "hybrid" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and all(
        k.startswith("head.") for k in ckpt["state_dict"]
    )  # EoMT not checkpointed
    trained = load_anomaly_head(path).state_dict()
    assert set(trained) == set(initial.state)
    assert all(
        not torch.equal(trained[k], v) for k, v in initial.state.items()
    )  # every layer of the head learned
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        train_anomaly_head(
            eomt,
            tiny_data / "cityscapes",
            tiny_data / "coco",
            tmp_path / "hybrid",
            TrainSettings(max_steps=3, batch_size=2, progress=False),
            HeadConfig(variant="stats"),
        )
    with pytest.raises(FileNotFoundError, match="never a benchmark"):
        train_anomaly_head(
            eomt,
            tiny_data / "Validation_Dataset" / "RoadAnomaly",
            tiny_data / "coco",
            tmp_path / "x",
        )


def _losses(out_dir):
    return training_log(out_dir).dropna(subset=["train_loss"]).set_index("step")["train_loss"]


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    torch.manual_seed(0)
    eomt = build_eomt(tiny_config())
    train = TrainSettings(
        max_steps=6, batch_size=2, progress=False, seed=5, checkpoint_every_n_steps=2
    )
    config = HeadConfig(variant="stats", ood_prob=1.0)
    args = (tiny_data / "cityscapes", tiny_data / "coco")
    whole = train_anomaly_head(eomt, *args, tmp_path / "whole", train, config)
    with pytest.raises(RuntimeError, match="kernel died"):
        train_anomaly_head(
            eomt, *args, tmp_path / "split", replace(train, callbacks=[Crash(3)]), config
        )
    assert torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)["global_step"] == 2
    # the interrupted run holds its paste settings: resuming it with others would mix two
    # experiments
    for other in (
        replace(config, ood_prob=0.5),
        replace(config, road_only=True),
        replace(config, object_scale=0.25),
    ):
        with pytest.raises(CheckpointError, match="other settings"):
            train_anomaly_head(eomt, *args, tmp_path / "split", train, other)
    split = train_anomaly_head(eomt, *args, tmp_path / "split", train, config)
    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert list(a.index) == list(b.index) == list(range(6))
    torch.testing.assert_close(torch.tensor(b.values), torch.tensor(a.values))
    wa, wb = load_anomaly_head(whole).state_dict(), load_anomaly_head(split).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


def test_compare_with_posthoc_picks_the_best_posthoc_score_per_benchmark():
    import pandas as pd

    from anomalyseg.report.tables import compare_with_posthoc

    rows = pd.DataFrame(
        [
            dict(
                dataset="RoadAnomaly", score="msp", temperature=1.0, auprc=0.30, fpr_at_95_tpr=0.50
            ),
            dict(
                dataset="RoadAnomaly", score="msp", temperature=2.0, auprc=0.90, fpr_at_95_tpr=0.10
            ),  # not at T=1
            dict(
                dataset="RoadAnomaly", score="rba", temperature=1.0, auprc=0.40, fpr_at_95_tpr=0.70
            ),
            dict(
                dataset="RoadAnomaly",
                score="anomaly_head",
                temperature=float("nan"),
                auprc=0.55,
                fpr_at_95_tpr=0.20,
            ),
            dict(
                dataset="RoadAnomaly21",
                score="msp",
                temperature=1.0,
                auprc=0.123456,
                fpr_at_95_tpr=0.9,
            ),
            dict(
                dataset="RoadAnomaly21",
                score="anomaly_head",
                temperature=float("nan"),
                auprc=0.05,
                fpr_at_95_tpr=0.95,
            ),
        ]
    )
    table = compare_with_posthoc(rows)
    assert list(table.index) == ["RoadAnomaly21", "RoadAnomaly"]  # course order
    assert (
        table.loc["RoadAnomaly", "best_posthoc"] == "rba"
        and table.loc["RoadAnomaly", "best_posthoc_auprc"] == 0.40
    )
    assert table.loc["RoadAnomaly", "anomaly_head_fpr_at_95_tpr"] == 0.20
    assert "anomaly_head_hybrid_auprc" not in table
    in_percent = compare_with_posthoc(rows, percent=True)
    assert in_percent.loc["RoadAnomaly21", "best_posthoc_auprc"] == 12.35
    assert in_percent.loc["RoadAnomaly21", "best_posthoc"] == "msp"  # names stay names


def test_head_and_outlier_exposure_paste_objects_of_the_same_size(tiny_data, tmp_path, monkeypatch):
    """Issue 14's bug: the head's path skipped the object rescaling of Outlier Exposure and pasted
    objects of about 4x the area. Both entry points must build the same pasting for the same
    settings: captured where their Lightning run would start, they paste the same objects into
    the same crops."""
    import lightning as L
    from transformers import EomtForUniversalSegmentation

    from anomalyseg.data.mix_ood import PasteOutliers
    from anomalyseg.training.oe import finetune_oe
    from anomalyseg.training.oe_config import OEConfig

    class Stop(Exception):
        pass

    captured = []

    def fit(self, model, datamodule=None, **kw):
        captured.append(datamodule)
        raise Stop

    monkeypatch.setattr(L.Trainer, "fit", fit)
    torch.manual_seed(0)
    model = EomtForUniversalSegmentation(
        tiny_config()
    )  # 32 px windows: the 64x128 tiny frames are seen at half size
    with pytest.raises(Stop):
        finetune_oe(
            model,
            tiny_data / "cityscapes",
            tiny_data / "coco",
            tmp_path / "oe",
            TrainSettings(max_steps=1, batch_size=1, progress=False),
            OEConfig(ood_prob=1.0),
        )
    with pytest.raises(Stop):
        train_anomaly_head(
            model,
            tiny_data / "cityscapes",
            tiny_data / "coco",
            tmp_path / "head",
            TrainSettings(max_steps=1, batch_size=1, progress=False),
            HeadConfig(ood_prob=1.0),
        )
    oe, head = captured
    for data in (oe, head):
        data.setup("fit")
        assert isinstance(data.sample_transform, PasteOutliers)
    objects_oe, objects_head = oe.sample_transform.mix.objects, head.sample_transform.mix.objects
    assert objects_oe.scale == objects_head.scale == 0.5
    areas = [
        [int(objects[i][1].sum()) for i in range(len(objects))]
        for objects in (objects_oe, objects_head)
    ]
    assert areas[0] == areas[1]
    pasted = {"oe": [], "head": []}
    for name, data in (("oe", oe), ("head", head)):
        for i in range(len(data.train_set)):
            torch.manual_seed(i)
            pasted[name].append(int((data.train_set[i]["outlier_mask"] == 1).sum()))
    assert pasted["oe"] == pasted["head"] and sum(pasted["oe"]) > 0
