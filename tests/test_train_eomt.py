"""EoMT training: targets, loss terms, masked-attention annealing, optimiser groups, resume,
export."""

from __future__ import annotations

import pytest
import torch
from transformers import EomtForUniversalSegmentation

from anomalyseg.models.eomt import build_eomt, load_eomt
from anomalyseg.results import training_log
from anomalyseg.training.eomt import (
    EomtModule,
    WarmupPoly,
    annealing_schedule,
    export_eomt,
    mask_annealing_prob,
    semantic_to_mask_labels,
    train_eomt,
)
from anomalyseg.training.settings import TrainSettings
from helpers import Crash
from helpers import tiny_eomt_config as tiny_config


def test_semantic_to_mask_labels_leaves_void_and_outliers_uncovered():
    target = torch.tensor([[0, 0, 255, 13], [254, 13, 13, 0]])
    masks, classes = semantic_to_mask_labels(target)
    assert classes.tolist() == [0, 13]
    assert masks.dtype == torch.float32
    assert masks[0].tolist() == [[1, 1, 0, 0], [0, 0, 0, 1]]
    assert masks[1].tolist() == [[0, 0, 0, 1], [0, 1, 1, 0]]
    covered = masks.sum(0)
    assert covered[0, 2] == 0 and covered[1, 0] == 0  # 255 and 254 in no mask
    assert semantic_to_mask_labels(torch.full((2, 2), 255))[1].numel() == 0


def test_compute_loss_terms_sum_to_transformers_loss():
    torch.manual_seed(0)
    module = EomtModule(tiny_config(), max_steps=10)
    module.train()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    targets = torch.randint(0, 3, (2, 32, 32))
    targets[0, :4] = 255
    torch.manual_seed(1)  # the loss samples points at random
    module._layer_losses.clear()
    outputs = module(images, targets)
    losses = module.compute_loss({"image": images, "target": targets}, outputs)
    assert set(losses) == {"loss_cross_entropy", "loss_mask", "loss_dice"}
    # transformers computed outputs.loss over the final and both intermediate predictions
    assert len(module._layer_losses) == 1 + module.model.config.num_blocks
    torch.testing.assert_close(sum(losses.values()), outputs.loss)


def test_compute_loss_applies_upstream_weights():
    """class 2.0, mask 5.0, dice 5.0 on transformers' unweighted terms; no-object weight 0.1."""
    torch.manual_seed(0)
    module = EomtModule(tiny_config(), max_steps=10).eval()
    module.model.attn_mask_probs.zero_()  # eval without masked attention: only the final prediction
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    targets = torch.randint(0, 3, (2, 32, 32))
    torch.manual_seed(1)
    module._layer_losses.clear()
    outputs = module(images, targets)
    losses = module.compute_loss({"image": images, "target": targets}, outputs)
    torch.manual_seed(1)  # the same random points, for the unweighted reference
    labels = [semantic_to_mask_labels(t) for t in targets]
    raw = module.model.criterion(
        outputs.masks_queries_logits,
        outputs.class_queries_logits,
        [m for m, _ in labels],
        [c for _, c in labels],
    )
    for name, weight in (("loss_cross_entropy", 2.0), ("loss_mask", 5.0), ("loss_dice", 5.0)):
        torch.testing.assert_close(losses[name], weight * raw[name])
    assert module.model.criterion.empty_weight[-1].item() == pytest.approx(0.1)


def test_mask_annealing_matches_upstream_schedule():
    starts, ends = annealing_schedule(4, 33170)
    upstream = [3317, 8292, 13268, 18243] + [6634, 11609, 16585, 21560]  # its Cityscapes config
    assert (
        max(abs(a - b) for a, b in zip(starts + ends, upstream)) <= 1
    )  # rounding of the fractions
    assert mask_annealing_prob(100, 200, 400) == 1.0
    assert mask_annealing_prob(300, 200, 400) == pytest.approx(0.5**0.9)
    assert mask_annealing_prob(400, 200, 400) == 0.0


def test_annealing_drives_the_buffer_block_by_block():
    module = EomtModule(tiny_config(), max_steps=100, annealing_steps=([10, 30], [20, 40]))

    class FakeTrainer:
        global_step = 0

    module._trainer = FakeTrainer()  # global_step is read from the trainer
    seen = []
    for step in (0, 15, 25, 35, 40):
        FakeTrainer.global_step = step
        module._anneal()
        seen.append([round(p, 4) for p in module.model.attn_mask_probs.tolist()])
    assert seen == [[1, 1], [round(0.5**0.9, 4), 1], [0, 1], [0, round(0.5**0.9, 4)], [0, 0]]
    off = EomtModule(
        tiny_config(), max_steps=100, trainable="heads"
    )  # fine-tuning: masked attention off
    off._trainer = FakeTrainer()
    off._anneal()
    assert off.model.attn_mask_probs.tolist() == [0.0, 0.0]


def test_layerwise_lr_decay_and_heads_only():
    module = EomtModule(tiny_config(), max_steps=100, lr=1e-3, llrd=0.5)
    lr = {g["name"]: g["lr"] for g in module.param_groups()}
    assert lr["layers.2.mlp.fc1.weight"] == pytest.approx(1e-3)
    assert lr["layers.1.mlp.fc1.weight"] == pytest.approx(5e-4)
    assert lr["layers.0.attention.q_proj.weight"] == pytest.approx(2.5e-4)
    assert lr["embeddings.patch_embeddings.projection.weight"] == pytest.approx(
        2.5e-4
    )  # as block 0
    assert (
        lr["layernorm.weight"]
        == lr["class_predictor.weight"]
        == lr["query.weight"]
        == pytest.approx(1e-3)
    )

    heads = EomtModule(tiny_config(), max_steps=100, trainable="heads")
    names = {g["name"] for g in heads.param_groups()}
    assert names and all(
        n.startswith(("class_predictor.", "mask_head.", "upscale_block.", "query.")) for n in names
    )
    assert "query.weight" in names and not any(n.startswith("layers.") for n in names)
    with pytest.raises(ValueError, match="trainable='backbone'"):
        EomtModule(tiny_config(), trainable="backbone")


def test_two_stage_warmup_poly():
    heads, backbone = WarmupPoly(0, 10, 100, 0.9), WarmupPoly(10, 20, 100, 0.9)
    assert heads(0) == 0.0 and heads(5) == 0.5 and heads(10) == 1.0
    assert heads(55) == pytest.approx((1 - 45 / 90) ** 0.9) and heads(100) == 0.0
    assert (
        backbone(5) == 0.0 and backbone(20) == 0.5 and backbone(30) == 1.0 and backbone(100) == 0.0
    )


def test_crop_size_must_match_the_model(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="32x32"):
        train_eomt(
            tiny_config(),
            tiny_data / "cityscapes",
            tmp_path,
            TrainSettings(max_steps=1, crop_size=(32, 64), progress=False),
        )


def _metrics(out_dir):
    return training_log(out_dir).dropna(subset=["train_loss"]).set_index("step")


@pytest.mark.slow
def test_resume_continues_like_an_uninterrupted_run(tiny_data, tmp_path):
    """8 steps in one go == 5 steps, a crash, and a resume from the step-3 checkpoint: same
    steps, same losses, same final weights (data order, augmentations and the loss's random
    points are functions of the step)."""
    root = tiny_data / "cityscapes"
    kw = dict(
        max_steps=8,
        batch_size=3,
        progress=False,
        seed=3,
        val_every_n_steps=8,
        checkpoint_every_n_steps=3,
        num_workers=1,
    )  # a worker: the main process generator is then seeded only by the module
    whole = train_eomt(tiny_config(), root, tmp_path / "whole", TrainSettings(**kw))
    with pytest.raises(RuntimeError, match="kernel died"):
        train_eomt(
            tiny_config(), root, tmp_path / "split", TrainSettings(callbacks=[Crash(5)], **kw)
        )
    assert torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)["global_step"] == 3
    split = train_eomt(tiny_config(), root, tmp_path / "split", TrainSettings(**kw))
    for run in (tmp_path / "whole", tmp_path / "split"):
        assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 8
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "split")
    assert list(a.index) == list(b.index) == list(range(8))
    torch.testing.assert_close(
        torch.tensor(b["train_loss"].values), torch.tensor(a["train_loss"].values)
    )
    wa, wb = build_eomt(whole).state_dict(), build_eomt(split).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])
    # and a finished run is not trained further
    assert train_eomt(tiny_config(), root, tmp_path / "split", TrainSettings(**kw)) == split
    assert torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)["global_step"] == 8


@pytest.mark.slow
def test_train_export_and_load(tiny_data, tmp_path):
    folder = train_eomt(
        tiny_config(),
        tiny_data / "cityscapes",
        tmp_path / "run",
        TrainSettings(max_steps=3, batch_size=2, progress=False, val_every_n_steps=3),
    )
    assert (tmp_path / "run" / "last.ckpt").is_file() and (folder / "config.json").is_file()
    metrics = _metrics(tmp_path / "run")
    assert metrics["train_loss"].notna().all()
    val = training_log(tmp_path / "run")["val_miou"].dropna()
    assert len(val) == 1 and 0.0 <= val.iloc[0] <= 1.0
    seg = load_eomt(folder)
    assert seg.model.attn_mask_probs.tolist() == [0.0, 0.0]
    # the export holds exactly the trained weights
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in seg.model.state_dict().items():
        if k != "attn_mask_probs":
            torch.testing.assert_close(v, ckpt[f"model.{k}"])
    export_eomt(tmp_path / "run" / "last.ckpt", folder)  # re-export over an existing folder
    assert isinstance(build_eomt(folder), EomtForUniversalSegmentation)
    with pytest.raises(Exception, match="does not exist"):
        export_eomt(tmp_path / "nothing.ckpt", tmp_path / "x")
