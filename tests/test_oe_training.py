"""Outlier Exposure fine-tuning of EoMT: the outlier term, the pasted data, frozen backbone,
exact resume, logging and clear errors."""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import EomtForUniversalSegmentation

from anomalyseg.data.coco import OODObjects
from anomalyseg.data.mix_ood import ScaledObjects
from anomalyseg.labels import OOD_OBJECT_VALUE
from anomalyseg.models.eomt import build_eomt
from anomalyseg.results import training_log
from anomalyseg.training.eomt import BACKBONE_PREFIXES, HEAD_PREFIXES, EomtModule
from anomalyseg.training.oe import (
    EomtOEModule,
    finetune_oe,
    oe_annealing_steps,
    oe_datamodule,
    oe_run_dir,
    pasted_samples,
)
from anomalyseg.training.oe_config import OEConfig
from anomalyseg.training.settings import TrainSettings
from helpers import Crash
from helpers import tiny_eomt_config as tiny_config

# Tiny crops need small objects: the tiny COCO objects are 40-136 px, the crops 32 px.
SMALL_OBJECTS = 0.25


def tiny_model(seed: int = 0) -> EomtForUniversalSegmentation:
    torch.manual_seed(seed)
    return EomtForUniversalSegmentation(tiny_config())


def _metrics(out_dir) -> pd.DataFrame:
    return training_log(out_dir).dropna(subset=["train_loss"]).set_index("step")


# ----------------------------------------------------------------------------- the loss term
def _reference_outlier_loss(outputs, outlier_mask, t_in, t_out):
    """RbA's squared hinge written out from REFERENCE §3 and §6, independently of the package
    (the batch holds pasted pixels, so both terms count)."""
    probs = outputs.class_queries_logits.softmax(-1)[..., :-1]  # [B, Q, 19]
    masks = outputs.masks_queries_logits.sigmoid()  # [B, Q, h, w]
    fused = (probs[..., None, None] * masks[:, :, None]).sum(1)  # [B, 19, h, w]
    s = -torch.tanh(fused).sum(1, keepdim=True)
    s = F.interpolate(s, size=outlier_mask.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
    inl, out = outlier_mask == 0, outlier_mask == 1
    return 0.5 * (
        (s - t_in).clamp(min=0)[inl].pow(2).mean() + (t_out - s).clamp(min=0)[out].pow(2).mean()
    )


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, 3, (2, 32, 32), generator=g)
    targets[:, :3] = 255
    targets[0, 10:20, 5:15] = OOD_OBJECT_VALUE
    outlier = torch.zeros(2, 32, 32, dtype=torch.uint8)
    outlier[targets == 255] = 255
    outlier[targets == OOD_OBJECT_VALUE] = 1
    return {"image": images, "target": targets, "outlier_mask": outlier}


def test_outlier_term_is_weighted_rba_hinge_on_the_final_prediction():
    cfg = OEConfig(outlier_weight=2.5, inlier_upper_threshold=-1.5, outlier_lower_threshold=-0.5)
    module = EomtOEModule(tiny_config(), oe=cfg, max_steps=10).train()
    batch = _batch()
    torch.manual_seed(1)
    module._layer_losses.clear()
    outputs = module(batch["image"], batch["target"])
    losses = module.compute_loss(batch, outputs)
    assert set(losses) == {"loss_cross_entropy", "loss_mask", "loss_dice", "loss_outlier"}
    ref = _reference_outlier_loss(outputs, batch["outlier_mask"], -1.5, -0.5)
    assert ref > 0
    torch.testing.assert_close(losses["loss_outlier"], 2.5 * ref)
    # the mask-classification terms are EomtModule's, untouched
    base = EomtModule.compute_loss(module, batch, outputs)
    for k, v in base.items():
        torch.testing.assert_close(losses[k], v)
    # and gradients reach the heads through the outlier term alone
    losses["loss_outlier"].backward()
    assert module.model.class_predictor.weight.grad.abs().sum() > 0


def test_outlier_term_off_and_missing_mask():
    off = EomtOEModule(tiny_config(), oe=OEConfig(outlier_loss_enabled=False), max_steps=10).train()
    batch = _batch()
    off._layer_losses.clear()
    assert "loss_outlier" not in off.compute_loss(batch, off(batch["image"], batch["target"]))
    on = EomtOEModule(tiny_config(), oe={"ood_prob": 0.5}, max_steps=10).train()
    on._layer_losses.clear()
    outputs = on(batch["image"], batch["target"])
    with pytest.raises(KeyError, match="oe_sample_transform"):
        on.compute_loss({"image": batch["image"], "target": batch["target"]}, outputs)


def test_trainable_comes_from_the_config():
    heads = EomtOEModule(tiny_config(), max_steps=10)
    assert heads.hparams.trainable == "heads" and heads.hparams.oe["trainable"] == "heads"
    frozen = [n for n, p in heads.model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(BACKBONE_PREFIXES) for n in frozen)
    assert all(
        p.requires_grad for n, p in heads.model.named_parameters() if n.startswith(HEAD_PREFIXES)
    )
    assert (
        heads.hparams.attn_mask_annealing is False
    )  # the model to fine-tune already runs without it
    whole = EomtOEModule(tiny_config(), oe=OEConfig(trainable="all"), max_steps=10)
    assert all(p.requires_grad for p in whole.model.parameters())
    with pytest.raises(ValueError, match="set it in the OEConfig"):
        EomtOEModule(tiny_config(), oe=OEConfig(trainable="heads"), trainable="all")


def test_annealing_steps_of_seed_000s_recipe():
    seed = OEConfig.recipe("seed000")
    assert (
        oe_annealing_steps(OEConfig(), 3, 7000) is None
    )  # RbA's recipe: masked attention stays off
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert oe_annealing_steps(seed, 3, 7000) == ([1401, 3501, 5602], [2801, 4902, 7000])
        assert oe_annealing_steps(seed, 3, 9000) == ([1401, 3501, 5602], [2801, 4902, 7000])
        # without explicit steps: upstream's fractions (0.10 + 0.15 i, 0.20 + 0.15 i) of the run
        assert oe_annealing_steps(OEConfig(attn_mask_annealing_enabled=True), 2, 100) == (
            [10, 25],
            [20, 35],
        )
    # 4 blocks: the 3 windows resampled at block positions 0, 2/3, 4/3, 2, e.g. the second start
    # 1401 / 3 + 3501 * 2 / 3 = 2801, the third end 4902 * 2 / 3 + 7000 / 3 = 5601.3
    with pytest.warns(UserWarning, match=r"for 3 query blocks and a run of at least 7000 steps"):
        assert oe_annealing_steps(seed, 4, 7000) == (
            [1401, 2801, 4201, 5602],
            [2801, 4202, 5601, 7000],
        )
    # a shorter run: the same fractions of it (2 blocks take the first and the last window)
    with pytest.warns(UserWarning, match=r"scaled to \[14, 56\] -> \[28, 70\]"):
        assert oe_annealing_steps(seed, 2, 70) == ([14, 56], [28, 70])


def test_seed000_recipe_trains_the_whole_network_with_annealing():
    with pytest.warns(UserWarning, match="scaled"):
        module = EomtOEModule(tiny_config(), oe=OEConfig.recipe("seed000"), max_steps=70)
    hp = module.hparams
    assert hp.trainable == "all" and hp.attn_mask_annealing is True and hp.weight_decay == 0.05
    assert [list(x) for x in hp.annealing_steps] == [[14, 56], [28, 70]]
    assert all(p.requires_grad for p in module.model.parameters())
    assert module.configure_optimizers()["optimizer"].defaults["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="set it in the OEConfig"):
        EomtOEModule(tiny_config(), oe=OEConfig.recipe("seed000"), max_steps=70, weight_decay=0.1)


# ----------------------------------------------------------------------------- the data
def test_every_item_has_an_outlier_mask_that_marks_exactly_the_pasted_pixels(tiny_data):
    root = tiny_data / "cityscapes"
    pasted = 0
    for cfg in (OEConfig(ood_prob=1.0), OEConfig(oe_enabled=False)):
        data = oe_datamodule(
            root,
            tiny_data / "coco",
            cfg,
            32,
            batch_size=4,
            object_scale=SMALL_OBJECTS,
            with_val=False,
        )
        data.setup("fit")
        for i in range(len(data.train_set)):
            torch.manual_seed(i)
            item = data.train_set[i]
            target, mask = item["target"], item["outlier_mask"]
            assert mask.dtype == torch.uint8 and mask.shape == target.shape == (32, 32)
            assert torch.equal(mask == 255, target == 255)
            assert torch.equal(mask == 1, target == OOD_OBJECT_VALUE)
            assert set(mask.unique().tolist()) <= {0, 1, 255}
            if cfg.oe_enabled:
                pasted += int((mask == 1).any())
            else:
                assert not (mask == 1).any()
        batch = next(iter(data.train_dataloader()))
        assert batch["outlier_mask"].shape == (4, 32, 32)
    assert pasted >= len(data.train_set) // 2  # ood_prob=1: most frames find a place


def test_pasted_samples_all_hold_an_object(tiny_data):
    items = pasted_samples(
        tiny_data / "cityscapes",
        tiny_data / "coco",
        OEConfig(oe_road_only=True),
        32,
        n=3,
        object_scale=SMALL_OBJECTS,
    )
    assert len(items) == 3
    for item in items:
        under = item["outlier_mask"] == 1
        assert under.any() and (item["target"][under] == OOD_OBJECT_VALUE).all()


def test_scaled_objects_keep_their_shape(tiny_data):
    objects = OODObjects(tiny_data / "coco")
    half = ScaledObjects(objects, 0.5)
    for i in range(len(objects)):
        (_, mask), (small_img, small_mask) = objects[i], half[i]
        h, w = mask.shape
        assert small_mask.shape == (round(h / 2), round(w / 2)) and small_img.shape == (
            3,
            *small_mask.shape,
        )
        assert small_img.dtype == torch.uint8 and small_mask.dtype == torch.bool
        assert small_mask.sum().item() == pytest.approx(mask.sum().item() / 4, rel=0.15)
    assert ScaledObjects(objects, 1.0)[0][1].shape == objects[0][1].shape
    with pytest.raises(ValueError, match="scale must be > 0"):
        ScaledObjects(objects, 0)


# ----------------------------------------------------------------------------- fine-tuning runs
@pytest.mark.slow
def test_heads_only_fine_tuning_freezes_the_backbone_and_lowers_the_outlier_loss(
    tiny_data, tmp_path
):
    base = tiny_model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    folder = finetune_oe(
        base,
        tiny_data / "cityscapes",
        tiny_data / "coco",
        tmp_path / "run",
        TrainSettings(max_steps=30, batch_size=4, progress=False, lr=3e-3),
        OEConfig(ood_prob=1.0),
        object_scale=SMALL_OBJECTS,
    )
    for k, v in base.state_dict().items():  # the caller's model is not touched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    after = build_eomt(folder).state_dict()
    changed = {k for k in before if k != "attn_mask_probs" and not torch.equal(before[k], after[k])}
    frozen = {k for k in before if k.startswith(BACKBONE_PREFIXES)}
    assert frozen and not (changed & frozen), (
        f"frozen parameters changed: {sorted(changed & frozen)[:5]}"
    )
    assert any(k.startswith("class_predictor.") for k in changed) and any(
        k.startswith("mask_head.") for k in changed
    )
    assert (folder / "oe_config.json").is_file()

    log = _metrics(tmp_path / "run")
    assert {
        "train_loss_outlier",
        "train_loss_cross_entropy",
        "train_loss_mask",
        "train_loss_dice",
    } <= set(log.columns)
    term = log["train_loss_outlier"]
    assert list(term.index) == list(range(30)) and term.notna().all()
    first, last = term.iloc[:5].mean(), term.iloc[-5:].mean()
    assert first > 0.1 and last < 0.5 * first, (
        f"outlier loss did not fall: {first:.3f} -> {last:.3f}"
    )


@pytest.mark.slow
def test_resume_reaches_the_state_of_an_uninterrupted_run(tiny_data, tmp_path):
    cfg = OEConfig(ood_prob=0.7, oe_road_only=True)
    train = TrainSettings(
        max_steps=8,
        batch_size=3,
        progress=False,
        seed=5,
        lr=1e-3,
        checkpoint_every_n_steps=3,
        num_workers=1,
    )
    kw = dict(config=cfg, object_scale=SMALL_OBJECTS)
    args = (tiny_data / "cityscapes", tiny_data / "coco")
    whole = finetune_oe(tiny_model(), *args, tmp_path / "whole", train, **kw)
    with pytest.raises(RuntimeError, match="kernel died"):
        finetune_oe(
            tiny_model(), *args, tmp_path / "split", replace(train, callbacks=[Crash(5)]), **kw
        )
    assert torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)["global_step"] == 3
    split = finetune_oe(tiny_model(), *args, tmp_path / "split", train, **kw)
    for run in ("whole", "split"):
        assert torch.load(tmp_path / run / "last.ckpt", weights_only=True)["global_step"] == 8
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "split")
    assert list(a.index) == list(b.index) == list(range(8))
    assert (a["train_loss_outlier"] > 0).any()  # objects were pasted and the term trained
    for col in ("train_loss", "train_loss_outlier"):
        torch.testing.assert_close(torch.tensor(b[col].values), torch.tensor(a[col].values))
    wa, wb = build_eomt(whole).state_dict(), build_eomt(split).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])

    # resuming that folder with other settings would mix two experiments
    with pytest.raises(ValueError, match="ood_prob"):
        finetune_oe(
            tiny_model(),
            *args,
            tmp_path / "split",
            train,
            **{**kw, "config": OEConfig(ood_prob=0.2, oe_road_only=True)},
        )


def test_errors_name_the_fix(tiny_data, tmp_path, monkeypatch):
    args = (tiny_model(), tiny_data / "cityscapes", tiny_data / "coco")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as on a machine without it: import fails
    with pytest.raises(ImportError, match="pip install wandb"):
        finetune_oe(
            *args, tmp_path / "w", TrainSettings(max_steps=1, progress=False, logger="wandb")
        )
    with pytest.raises(ValueError, match="32x32"):
        finetune_oe(*args, tmp_path / "c", TrainSettings(max_steps=1, crop_size=64, progress=False))
    with pytest.raises(ValueError, match="coco_root"):
        finetune_oe(
            args[0], args[1], None, tmp_path / "n", TrainSettings(max_steps=1, progress=False)
        )
    with pytest.raises(TypeError, match="eomt must be"):
        finetune_oe(
            42, args[1], args[2], tmp_path / "t", TrainSettings(max_steps=1, progress=False)
        )


def test_one_run_folder_per_setting(tmp_path):
    a = oe_run_dir(tmp_path, OEConfig(), base="m", steps=10)
    assert (
        a == oe_run_dir(tmp_path, OEConfig().to_dict(), base="m", steps=10) and a.parent == tmp_path
    )
    assert a != oe_run_dir(tmp_path, OEConfig(ood_prob=0.1), base="m", steps=10)
    assert a != oe_run_dir(tmp_path, OEConfig(), base="m", steps=11)


@pytest.mark.parametrize("module_class", [EomtModule, EomtOEModule])
def test_training_runs_in_training_mode(module_class):
    """A model taken from an evaluation segmenter (or from_pretrained) is in eval mode, where
    transformers' EoMT drops the intermediate predictions and their loss terms: training and
    fine-tuning, with or without Outlier Exposure, must switch it back."""
    model = tiny_model().eval()
    module = module_class(model, max_steps=10)

    class FakeTrainer:
        global_step = 0

    module._trainer = FakeTrainer()
    module.on_train_start()
    assert module.model.training
    batch = _batch()
    module._layer_losses.clear()
    module(batch["image"], batch["target"])
    assert (
        len(module._layer_losses) == 1 + module.model.config.num_blocks
    )  # final + one per query block


def test_ood_objects_prepared_once(tiny_data, tmp_path):
    import shutil

    from anomalyseg.training.oe import ensure_ood_objects

    coco = shutil.copytree(
        tiny_data / "coco", tmp_path / "coco"
    )  # the session's data stays as it is
    manifest = coco / "annotations" / "ood_seg_train2017.json"
    stamp = manifest.stat().st_mtime_ns
    kept = len(OODObjects(coco))
    # every candidate is already kept: a larger max_images selects the same objects, nothing is
    # rewritten
    assert ensure_ood_objects(coco, max_images=400, progress=False)["kept"] == kept
    assert manifest.stat().st_mtime_ns == stamp
    # a smaller selection is prepared again, and OODObjects reads exactly it
    assert ensure_ood_objects(coco, max_images=3, progress=False)["kept"] == 3
    assert len(OODObjects(coco)) == 3 and manifest.stat().st_mtime_ns != stamp
