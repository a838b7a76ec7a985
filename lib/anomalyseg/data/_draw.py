"""Drawing primitives of the embedded generator: a pinhole camera, a part canvas, noise and
textures.

A frame is drawn in two passes. Geometry first: every shape is painted, far to near, into an id
map ``[H, W]`` (int32) where each id is a *part* with a label and an appearance. Appearance second:
``render`` turns the id map into RGB with one vectorised pass per texture kind, so the cost of a
frame does not grow with the number of parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Texture kinds. Scene textures (first block) and anomaly textures (second block) never share a
# kind, so the benchmarks' anomalies cannot look like any training class by construction.
FLAT, ASPHALT, PAVER, FACADE, GLASS, FOLIAGE, GRASS, SKY, METAL, SKIN, CLOTH, LAMP = range(12)
STRIPES, CHECKER, SPOTS, HISAT, RAINBOW = range(12, 17)
# Outlier-exposure objects (COCO stand-ins) are rendered separately: see ``shade_object``.


@dataclass
class Camera:
    """Pinhole camera ``height`` metres above a flat ground; the horizon is image row ``hy``.

    World axes: X to the right, Y up (0 = ground), Z forward (depth, metres).
    """

    f: float
    cx: float
    hy: float
    height: float
    H: int
    W: int

    def project(self, X, Y, Z) -> tuple[np.ndarray, np.ndarray]:
        Z = np.maximum(np.asarray(Z, dtype=np.float64), 1e-3)
        return self.cx + self.f * np.asarray(X) / Z, self.hy + self.f * (
            self.height - np.asarray(Y)
        ) / Z

    def ground_row(self, Z) -> np.ndarray:
        return self.hy + self.f * self.height / np.maximum(Z, 1e-3)

    @property
    def z_near(self) -> float:
        """Depth whose ground row lies just below the frame: nearer ground is never visible."""
        return self.f * self.height / (self.H - self.hy) * 0.9

    def scale(self, Z) -> np.ndarray:
        """Pixels per metre at depth ``Z``."""
        return self.f / np.maximum(Z, 1e-3)


@dataclass
class Part:
    label: int  # train id, 255 void, or a benchmark value set by the caller
    color: tuple[float, float, float]  # linear-ish RGB in 0..1
    texture: int = FLAT
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    param: tuple[float, float] = (0.0, 8.0)  # pattern angle (rad), period (px)
    anomaly: bool = False


@dataclass
class Canvas:
    """Painter's-order id map: later shapes cover earlier ones."""

    H: int
    W: int
    parts: list[Part] = field(default_factory=list)

    def __post_init__(self):
        self.image = Image.new("I", (self.W, self.H), 0)
        self._draw = ImageDraw.Draw(self.image)

    def part(self, label: int, color, texture: int = FLAT, **kw) -> int:
        self.parts.append(Part(label, tuple(np.clip(color, 0, 1.5)), texture, **kw))
        return len(self.parts) - 1

    def polygon(self, xs, ys, pid: int) -> None:
        xs, ys = np.clip(xs, -4 * self.W, 5 * self.W), np.clip(ys, -4 * self.H, 5 * self.H)
        if (
            len(xs) >= 3
            and xs.max() >= 0
            and xs.min() < self.W
            and ys.max() >= 0
            and ys.min() < self.H
        ):
            self._draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=pid)

    def ellipse(self, x0, y0, x1, y1, pid: int, width: int = 0) -> None:
        if x1 - x0 < 0.5 or y1 - y0 < 0.5:
            return
        if width:
            self._draw.ellipse([x0, y0, x1, y1], outline=pid, width=width)
        else:
            self._draw.ellipse([x0, y0, x1, y1], fill=pid)

    def ids(self) -> np.ndarray:
        return np.asarray(self.image, dtype=np.int32)

    def labels(self) -> np.ndarray:
        table = np.array([p.label for p in self.parts], dtype=np.uint8)
        return table[self.ids()]

    def anomaly_mask(self) -> np.ndarray:
        table = np.array([p.anomaly for p in self.parts], dtype=bool)
        return table[self.ids()]

    def copy(self) -> "Canvas":
        other = Canvas(self.H, self.W, list(self.parts))
        other.image = self.image.copy()
        other._draw = ImageDraw.Draw(other.image)
        return other

    def overlay(self, other: "Canvas") -> np.ndarray:
        """Paint the shapes of ``other`` (its ids > 0) over this canvas; returns their mask
        ``[H, W]``."""
        theirs = other.ids()
        mask = theirs > 0
        offset = len(self.parts) - 1
        self.parts.extend(other.parts[1:])
        self.image = Image.fromarray(np.where(mask, theirs + offset, self.ids()).astype(np.int32))
        self._draw = ImageDraw.Draw(self.image)
        return mask


@lru_cache(maxsize=8)
def grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(x, y)``, each ``[H, W]`` float32 (cached: shared by every frame)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    return x, y


def smooth_noise(rng: np.random.Generator, H: int, W: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-std value noise ``[H, W]`` with features about ``cell`` pixels wide."""
    h, w = max(2, int(np.ceil(H / cell)) + 1), max(2, int(np.ceil(W / cell)) + 1)
    small = rng.standard_normal((h, w)).astype(np.float32)
    big = np.asarray(Image.fromarray(small).resize((W, H), Image.BICUBIC))
    return (big - big.mean()) / (big.std() + 1e-6)


def noise_fields(rng: np.random.Generator, H: int, W: int) -> dict[str, np.ndarray]:
    s = max(H, W) / 512  # feature sizes follow the frame size, so presets look alike
    return {
        "fine": rng.standard_normal((H, W)).astype(np.float32),
        "small": smooth_noise(rng, H, W, max(2.0, 4 * s)),
        "medium": smooth_noise(rng, H, W, max(3.0, 24 * s)),
        "coarse": smooth_noise(rng, H, W, max(6.0, 96 * s)),
    }


def blob_polygon(rng: np.random.Generator, n: int = 40, roughness: float = 0.25):
    """Irregular closed outline in the unit disc: ``(u, v)`` arrays, radius modulated by random
    harmonics."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 6):
        r += roughness / k * rng.standard_normal() * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.35, 1.6)
    r /= r.max()
    return r * np.cos(t), r * np.sin(t)


def rgb_from_hsv(h: float, s: float, v: float) -> np.ndarray:
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def render(canvas: Canvas, fields: dict[str, np.ndarray]) -> np.ndarray:
    """Appearance of every part: float32 RGB ``[H, W, 3]`` in about 0..1, before lighting."""
    ids = canvas.ids()
    parts = canvas.parts
    color = np.array([p.color for p in parts], dtype=np.float32)
    color2 = np.array([p.color2 for p in parts], dtype=np.float32)
    tex = np.array([p.texture for p in parts], dtype=np.int16)[ids]
    param = np.array([p.param for p in parts], dtype=np.float32)
    img = color[ids]
    x, y = grid(canvas.H, canvas.W)
    fine, small, medium, coarse = (
        fields["fine"],
        fields["small"],
        fields["medium"],
        fields["coarse"],
    )
    for k in np.unique(tex).tolist():
        m = tex == k
        c = img[m]
        if k == ASPHALT:
            g = 1 + 0.05 * fine[m] + 0.06 * small[m] + 0.07 * coarse[m]
            c *= g[:, None]
        elif k == PAVER:
            # Tile joints in image space, finer towards the horizon where the ground recedes.
            period = np.maximum(2.5, 0.06 * (y[m] - canvas.H * 0.3))
            joint = (np.mod(x[m] + 0.5 * y[m], period) < 1.0) | (np.mod(y[m], period * 0.5) < 0.8)
            c *= (1 + 0.05 * fine[m] + 0.05 * medium[m] - 0.18 * joint)[:, None]
        elif k == FACADE:
            c *= (1 + 0.04 * fine[m] + 0.10 * medium[m] + 0.05 * coarse[m])[:, None]
        elif k == GLASS:
            c += (0.10 * medium[m] + 0.06 * small[m])[:, None] * np.array(
                [0.8, 0.9, 1.0], np.float32
            )
        elif k == FOLIAGE:
            g = 1 + 0.22 * small[m] + 0.12 * fine[m] + 0.10 * medium[m]
            c *= g[:, None]
            c[:, 0] *= 1 + 0.08 * medium[m]  # leaves vary in hue, not only in brightness
        elif k == GRASS:
            c *= (1 + 0.10 * small[m] + 0.06 * fine[m] + 0.10 * coarse[m])[:, None]
        elif k == SKY:
            clouds = np.clip(coarse[m] * 0.6 + medium[m] * 0.3, 0, None)[:, None]
            height = (y[m] / canvas.H)[:, None]
            c = c * (0.85 + 0.35 * height) + clouds * (0.9 - c) * 0.5
        elif k == METAL:
            c *= (1 + 0.05 * fine[m] + 0.08 * medium[m])[:, None]
        elif k in (SKIN, CLOTH):
            c *= (1 + 0.06 * fine[m] + 0.08 * small[m])[:, None]
        elif k == LAMP:
            c *= (1 + 0.03 * fine[m])[:, None]
        elif k in (STRIPES, CHECKER):
            p = param[ids[m]]
            u = x[m] * np.cos(p[:, 0]) + y[m] * np.sin(p[:, 0])
            v = -x[m] * np.sin(p[:, 0]) + y[m] * np.cos(p[:, 0])
            on = np.floor(u / p[:, 1]) % 2 == 1
            if k == CHECKER:
                on ^= np.floor(v / p[:, 1]) % 2 == 1
            c = np.where(on[:, None], color2[ids[m]], c) * (1 + 0.04 * fine[m])[:, None]
        elif k == SPOTS:
            on = (small[m] + 0.6 * medium[m]) > 0.3
            c = np.where(on[:, None], color2[ids[m]], c) * (1 + 0.05 * fine[m])[:, None]
        elif k == HISAT:
            c *= (1 + 0.12 * medium[m] + 0.05 * fine[m])[:, None]
        elif k == RAINBOW:
            hue = np.mod(0.5 * medium[m] + 0.15 * x[m] / canvas.W * 6, 1.0)
            c = (
                np.stack([np.abs(np.mod(hue + o, 1.0) * 2 - 1) for o in (0.0, 1 / 3, 2 / 3)], 1)
                * 0.9
            )
        else:  # FLAT
            c *= (1 + 0.04 * fine[m])[:, None]
        img[m] = c
    return img


@dataclass
class Look:
    """Per-frame photographic variation applied after ``render``."""

    exposure: float
    gamma: float
    tint: np.ndarray  # [3]
    vignette: float
    noise: float  # sensor noise std, in 0..255 levels
    blur: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "Look":
        return Look(
            exposure=float(rng.uniform(0.7, 1.3)),
            gamma=float(rng.uniform(0.85, 1.15)),
            tint=rng.normal(1.0, 0.05, 3).astype(np.float32),
            vignette=float(rng.uniform(0.0, 0.35)),
            noise=float(rng.uniform(1.0, 3.5)),
            blur=float(rng.uniform(0.3, 0.8)),
        )


def finish(
    img: np.ndarray, look: Look, rng: np.random.Generator, shade: np.ndarray | None = None
) -> np.ndarray:
    """Lighting, exposure, white balance, vignette, sensor noise, lens blur: float RGB -> uint8
    ``[H, W, 3]``."""
    H, W = img.shape[:2]
    x, y = grid(H, W)
    out = img * (look.exposure * look.tint)
    if shade is not None:
        out *= shade[..., None]
    r2 = ((x - W / 2) / (W / 2)) ** 2 + ((y - H / 2) / (H / 2)) ** 2
    out *= (1 - look.vignette * 0.5 * r2)[..., None]
    out = np.clip(out, 0, 1) ** look.gamma * 255
    out += rng.standard_normal((H, W, 1), dtype=np.float32) * look.noise
    pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(look.blur)))
