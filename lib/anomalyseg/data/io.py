"""Reading frames and masks from disk with errors that say what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """A data set on disk does not match the layout or label convention it claims."""


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]``."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy shares it
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(
            f"Could not read the image {path}: {e}. Expected a readable RGB image (png, jpg or webp); "
            "the file may be truncated or not an image. Re-copy it or remove it together with its mask."
        ) from e


def read_mask(path: Path) -> np.ndarray:
    """Read a single-channel label image as uint8 ``[H, W]`` (values as stored, no palette conversion)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    f"The mask {path} has image mode {im.mode!r}; expected a single-channel label image "
                    "(mode L or P, one integer label per pixel). A colour-coded label drawing must be "
                    "converted to label values first."
                )
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"Could not read the mask {path}: {e}. Expected a single-channel PNG of label values.") from e
    if arr.max(initial=0) > 255:
        raise DatasetError(f"The mask {path} holds values above 255; expected 8-bit label values.")
    return arr.astype(np.uint8)


def check_values(mask: np.ndarray, allowed: frozenset[int], path: Path, convention: str) -> None:
    """Raise when ``mask`` holds a value outside ``allowed`` (never map unknown values silently)."""
    values = np.unique(mask)
    unexpected = sorted(set(values.tolist()) - set(allowed))
    if unexpected:
        raise DatasetError(
            f"The mask {path} holds values {unexpected} that the {convention} convention does not allow; "
            f"expected only {sorted(allowed)}. Check that this folder is the data set it is named as "
            "(for example raw Lost&Found ids 0..200 are not the Fishyscapes 0/1/255 masks)."
        )
