"""Shared fixtures: the embedded data set at the `tiny` preset, generated once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "road_samples"

# Two xdist workers share two cores: one intra-op thread each avoids oversubscription, in this
# process and in the notebook kernels papermill starts (they inherit the environment).
_THREADS = os.environ.get("ANOMALYSEG_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
torch.set_num_threads(int(_THREADS))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Root of a `tiny` embedded data set: cityscapes/, Validation_Dataset/, coco/."""
    from anomalyseg.data.synthetic import make_data

    return make_data(tmp_path_factory.mktemp("embedded") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The two real road photos of ../shared/realdata (never copied into the repository)."""
    if not (REALDATA / "images").is_dir():
        pytest.skip(
            f"real road photos not found at {REALDATA} (they live beside the checkout, in "
            "../shared)"
        )
    return REALDATA


@pytest.fixture(scope="session")
def erfnet_file(tmp_path_factory) -> Path:
    """An untrained ERFNet as a safetensors file (what the CLI's error cases load: fast)."""
    from safetensors.torch import save_file

    from anomalyseg.models.erfnet import ERFNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("erfnet") / "erfnet.safetensors"
    save_file(ERFNet().state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_eomt_folder(tmp_path_factory) -> Path:
    """A tiny random EoMT (``helpers.tiny_eomt_config``, seed 0) as a ``save_pretrained`` folder."""
    from transformers import EomtForUniversalSegmentation

    from helpers import tiny_eomt_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_eomt") / "model"
    EomtForUniversalSegmentation(tiny_eomt_config()).save_pretrained(folder)
    return folder
