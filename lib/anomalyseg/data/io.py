"""Reading frames and masks from disk with errors that say what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """A data set on disk does not match the layout or label convention it claims."""


# PIL modes of one channel wider than 8 bits: convert("RGB") would clip them, not scale them.
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]``.

    A 16-bit grayscale frame (PIL mode ``I;16`` / ``I``) is scaled to 8 bits (``round(v / 257)``)
    and repeated over the three channels; ``convert("RGB")`` would clip it to almost white."""
    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_GRAY:
                gray = np.asarray(im).astype(np.float64)
                if im.mode == "F" or gray.max(initial=0) > 65535 or gray.min(initial=0) < 0:
                    raise DatasetError(
                        f"The image {path} is a single-channel {im.mode!r} image with values "
                        "outside 0..65535; expected an 8-bit or 16-bit RGB or grayscale photo."
                    )
                gray8 = np.rint(gray / 257.0).astype(np.uint8)
                return np.repeat(gray8[..., None], 3, axis=2)
            return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy shares it
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(
            f"Could not read the image {path}: {e}. Expected a readable RGB image (png, jpg or "
            "webp); the file may be truncated or not an image. Re-copy it or remove it together "
            "with its mask."
        ) from e


def read_mask(path: Path) -> np.ndarray:
    """Read a single-channel label image as uint8 ``[H, W]`` (values as stored, no palette
    conversion)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    f"The mask {path} has image mode {im.mode!r}; expected a single-channel label "
                    "image (mode L or P, one integer label per pixel). A colour-coded label "
                    "drawing must be converted to label values first."
                )
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(
            f"Could not read the mask {path}: {e}. Expected a single-channel PNG of label values."
        ) from e
    if arr.max(initial=0) > 255:
        raise DatasetError(f"The mask {path} holds values above 255; expected 8-bit label values.")
    return arr.astype(np.uint8)


def check_values(mask: np.ndarray, allowed: frozenset[int], path: Path, convention: str) -> None:
    """Raise when ``mask`` holds a value outside ``allowed`` (never map unknown values silently)."""
    values = np.unique(mask)
    unexpected = sorted(set(values.tolist()) - set(allowed))
    if unexpected:
        raise DatasetError(
            f"The mask {path} holds values {unexpected} that the {convention} convention does not "
            f"allow; expected only {sorted(allowed)}. Check that this folder is the data set it is "
            "named as (for example raw Lost&Found ids 0..200 are not the Fishyscapes 0/1/255 "
            "masks)."
        )
