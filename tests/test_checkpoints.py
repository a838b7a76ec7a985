"""Checkpoint loading: safe readers, prefix handling, and refusal of checkpoints that do not fit."""

from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from anomalyseg.models.checkpoints import (
    CheckpointError,
    LoadReport,
    fit_state_dict,
    load_state_dict_file,
)
from anomalyseg.models.erfnet import ERFNet, load_erfnet


class Payload:
    """A pickled object that is not a tensor: ``weights_only`` must refuse to rebuild it."""

    def __init__(self):
        self.x = 1


@pytest.fixture(scope="module")
def erfnet_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in ERFNet(20).state_dict().items()}


def _assert_same(model: nn.Module, state: dict[str, torch.Tensor]):
    own = model.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_plain_state_dict_roundtrip(tmp_path, erfnet_state):
    path = tmp_path / "plain.pth"
    torch.save(erfnet_state, path)
    model = load_erfnet(path)
    _assert_same(model, erfnet_state)
    assert not model.training


def test_dataparallel_prefix_like_course_checkpoint(tmp_path, erfnet_state):
    # The course's erfnet_pretrained.pth: DataParallel keys and no BatchNorm step counters
    # (saved before PyTorch 0.4 introduced them).
    old = collections.OrderedDict(
        ("module." + k, v) for k, v in erfnet_state.items() if not k.endswith("num_batches_tracked")
    )
    assert "module.encoder.initial_block.conv.weight" in old
    path = tmp_path / "erfnet_pretrained.pth"
    torch.save(old, path)
    model = ERFNet(20)
    report = fit_state_dict(model, load_state_dict_file(path))
    assert report.ok and not report.missing and not report.unexpected
    assert len(report.loaded) == len(old)
    _assert_same(model, {k[len("module.") :]: v for k, v in old.items()})


def test_lightning_checkpoint_is_unwrapped_and_model_prefix_removed(tmp_path, erfnet_state):
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "state_dict": {"model." + k: v for k, v in erfnet_state.items()},
        "optimizer_states": [],
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    state = load_state_dict_file(path)
    assert set(state) == {"model." + k for k in erfnet_state}
    _assert_same(load_erfnet(path), erfnet_state)


def test_model_wrapper_entry(tmp_path, erfnet_state):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 5, "model": erfnet_state}, path)
    assert set(load_state_dict_file(path)) == set(erfnet_state)


def test_safetensors(tmp_path, erfnet_state):
    path = tmp_path / "erfnet.safetensors"
    save_file(erfnet_state, str(path))
    _assert_same(load_erfnet(path), erfnet_state)


def test_wrong_class_count_is_refused_naming_the_shape(tmp_path):
    path = tmp_path / "erfnet19.pth"
    torch.save(ERFNet(19).state_dict(), path)
    model = ERFNet(20)
    before = model.decoder.output_conv.weight.clone()
    with pytest.raises(CheckpointError) as err:
        fit_state_dict(model, load_state_dict_file(path), source=path)
    msg = str(err.value)
    assert "erfnet19.pth" in msg
    assert "decoder.output_conv.weight: checkpoint [16, 19, 2, 2] vs model [16, 20, 2, 2]" in msg
    assert "number of classes" in msg
    # Refused as a whole: not even the matching encoder tensors were copied.
    assert torch.equal(model.decoder.output_conv.weight, before)
    with pytest.raises(CheckpointError, match="erfnet19.pth"):
        load_erfnet(path, num_classes=20)


def test_other_architecture_is_refused(tmp_path):
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 20, 1))
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    model = ERFNet(20)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_erfnet(path)
    msg = str(err.value)
    assert "other.pth" in msg and "missing from checkpoint" in msg and "not in model: 9" in msg
    assert "0.weight" in msg and "another architecture" in msg
    with pytest.raises(CheckpointError):
        fit_state_dict(model, other.state_dict())
    _assert_same(model, reference)


def test_non_strict_loads_matching_part_and_reports(erfnet_state):
    state = dict(erfnet_state)
    state["decoder.output_conv.weight"] = torch.zeros(16, 19, 2, 2)
    del state["decoder.output_conv.bias"]
    state["extra.head.weight"] = torch.zeros(3)
    model = ERFNet(20)
    report = fit_state_dict(model, state, strict=False)
    assert report.shape_mismatch == [("decoder.output_conv.weight", (16, 19, 2, 2), (16, 20, 2, 2))]
    assert report.missing == ["decoder.output_conv.bias"]
    assert report.unexpected == ["extra.head.weight"]
    assert len(report.loaded) == len(erfnet_state) - 2
    assert torch.equal(
        model.encoder.initial_block.conv.weight, erfnet_state["encoder.initial_block.conv.weight"]
    )
    text = str(report)
    assert text.startswith(f"loaded {len(erfnet_state) - 2} tensors")
    assert "missing from checkpoint: 1 (decoder.output_conv.bias)" in text
    assert "not in model: 1 (extra.head.weight)" in text


def test_key_map_renames_and_drops():
    model = nn.Linear(2, 3)
    state = {
        "net.fc.weight": torch.ones(3, 2),
        "net.fc.bias": torch.full((3,), 2.0),
        "net.aux": torch.zeros(1),
    }

    def key_map(k: str) -> str | None:
        return None if k == "aux" else k.replace("fc.", "")

    report = fit_state_dict(model, state, strip_prefixes=("net.",), key_map=key_map)
    assert report.dropped == ["net.aux"] and report.loaded == ["bias", "weight"]
    assert torch.equal(model.bias, torch.full((3,), 2.0))


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only=True"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        ([torch.zeros(2)], "holds a list, not a state dict"),
        ({"w": torch.zeros(1), "epoch": 3}, "not name -> tensor pairs"),
        ({}, "holds a dict, not a state dict"),
    ],
)
def test_not_a_state_dict(tmp_path, content, expected):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=expected) as err:
        load_state_dict_file(path)
    assert "odd.pt" in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth.*does not exist"):
        load_state_dict_file(tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>404 Not Found</html>")  # a failed download saved as the checkpoint
    with pytest.raises(
        CheckpointError,
        match=r"junk\.pth.*is not a file written by torch\.save \(it starts with b'<htm'",
    ) as err:
        load_state_dict_file(junk)
    assert "pickled" not in str(err.value)
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated\.pth.*could not be read by torch\.load"):
        load_state_dict_file(truncated)
    bad_st = tmp_path / "junk.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors.*not a readable safetensors"):
        load_state_dict_file(bad_st)


def test_report_ok_property():
    assert LoadReport(loaded=["a"]).ok
    assert not LoadReport(missing=["a"]).ok
