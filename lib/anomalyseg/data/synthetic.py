"""The embedded procedural road benchmark: a data set that needs no download.

``make_data(out, preset)`` writes, in exactly the layouts of the real data sets (REFERENCE §1):

    out/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    out/cityscapes/gtFine/{train,val}/<city>/<same stem>_gtFine_labelTrainIds.png
    out/Validation_Dataset/<RoadAnomaly|RoadAnomaly21|RoadObsticle21|FS_LostFound_full|fs_static>/
        images/<i>.<ext>, labels_masks/<i>.png
    out/coco/train2017/<12-digit id>.jpg, out/coco/annotations/instances_train2017.json
    out/coco/annotations/ood_seg_train2017/*.png, out/coco/train2017_ood_subset/  (prepare_coco_ood)

so every real loader reads it unchanged. Scenes are streets seen by a pinhole camera: a road with
lane marks running to a vanishing point, sidewalks with curbs, facades, vegetation, poles, signs,
vehicles and people, drawn as the 19 Cityscapes train classes with per-class colours, textures,
lighting and an ego-vehicle hood (void). Benchmark anomalies (blobs, boxes, animal-like figures,
debris with striped, checkered, spotted or saturated textures) and the COCO stand-in objects
(gradient-shaded convex and star polygons, photo-like noise patches) come from two different
generator families, so outlier exposure has to generalise rather than memorise.

The same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..labels import BENCHMARKS, CLASS_NAMES, IGNORE_INDEX
from ..progress import notice, tqdm
from . import _draw as d
from ._draw import Camera, Canvas

# The generator as a whole; bumped whenever any written byte changes (benchmark frames included).
GENERATOR_VERSION = 2
# The frames models train on (Cityscapes train/val, the COCO stand-ins); bumped only when those
# change. Shipped demo weights record it, so new benchmark frames keep them valid. Version 2 of
# the generator changed only RoadAnomaly's and RoadAnomaly21's anomalies.
TRAINING_DATA_VERSION = 1
MARKER = "EMBEDDED_DATA.json"

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip
assert CLASS_NAMES[TRAIN] == "train" and CLASS_NAMES[BICYCLE] == "bicycle"
# Classes an anomaly may not cover: it would stand in front of an object it is drawn behind.
_THINGS = np.array([POLE, LIGHT, SIGN, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE])

TRAIN_CITIES = ("arlen", "bramwick", "corsa", "dunfeld")
VAL_CITIES = ("elsburg", "fennmoor")


@dataclass(frozen=True)
class Preset:
    """Sizes and counts of one embedded data set. Frames are ``height x width`` (Cityscapes-like,
    1:2); RoadAnomaly, RoadAnomaly21 and RoadObsticle21 are 16:9 like the real ones."""

    name: str
    height: int
    width: int
    n_train: int
    n_val: int
    benchmark_frames: tuple[tuple[str, int], ...]
    n_coco: int
    coco_size: tuple[int, int]  # (H, W) of a landscape COCO image; some are portrait

    def frame_size(self, folder: str | None = None) -> tuple[int, int]:
        if folder in ("RoadAnomaly", "RoadAnomaly21", "RoadObsticle21"):
            return int(round(self.width * 9 / 16 / 8)) * 8, self.width  # stays divisible by 8
        return self.height, self.width

    @property
    def total(self) -> int:
        return self.n_train + self.n_val + sum(n for _, n in self.benchmark_frames) + self.n_coco


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny", 64, 128, 8, 4,
        tuple((name, 3) for name in BENCHMARKS),
        12, (120, 160),
    ),
    "demo": Preset(
        "demo", 256, 512, 300, 50,
        (("RoadAnomaly21", 10), ("RoadObsticle21", 15), ("FS_LostFound_full", 30),
         ("fs_static", 15), ("RoadAnomaly", 20)),
        150, (240, 320),
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Colours


def _jit(rng, c, spread=0.12, tint=0.03):
    return np.clip(
        np.asarray(c, np.float32) * rng.uniform(1 - spread, 1 + spread) + rng.normal(0, tint, 3),
        0,
        1,
    )


def _pick(rng, options):
    return options[rng.integers(len(options))]


_PAINT = [
    (0.06, 0.06, 0.07), (0.85, 0.86, 0.86), (0.6, 0.61, 0.63), (0.38, 0.39, 0.41),
    (0.55, 0.08, 0.08), (0.12, 0.2, 0.45), (0.15, 0.28, 0.2), (0.62, 0.56, 0.45),
    (0.25, 0.25, 0.32),
]  # fmt: skip
_FACADES = [
    (0.72, 0.64, 0.5), (0.55, 0.3, 0.22), (0.55, 0.55, 0.55), (0.8, 0.8, 0.77), (0.78, 0.68, 0.45),
    (0.32, 0.3, 0.29), (0.62, 0.5, 0.42),
]  # fmt: skip
_SIGNS = [(0.75, 0.08, 0.1), (0.1, 0.25, 0.7), (0.9, 0.9, 0.9), (0.9, 0.75, 0.1)]


def _cloth(rng):
    return d.rgb_from_hsv(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.08, 0.7))


def _odd_colour(rng):
    """Saturated colours no scene class uses at that size (anomalies only)."""
    return d.rgb_from_hsv(rng.uniform(), rng.uniform(0.85, 1.0), rng.uniform(0.75, 1.0))


# ----------------------------------------------------------------------------------------------
# Street geometry


@dataclass
class Street:
    cam: Camera
    road: tuple[float, float]  # X of the left and right road edges (metres)
    walk: tuple[float, float]  # X of the outer sidewalk edges
    facade: tuple[float, float]  # X of the facade planes
    lanes: list[float]  # lane centres
    z_far: float
    shade: Image.Image  # multiplicative shadow map for the ground, mode F


_STYLES = {
    #           building vegetation wall fence gap | cars/lane parked persons riders terrain-strip
    # sidewalk
    "urban": ((0.62, 0.2, 0.08, 0.06, 0.04), 1.0, 0.6, 3.0, 0.6, 0.25, 1.0),
    "suburban": ((0.25, 0.45, 0.1, 0.12, 0.08), 0.6, 0.3, 1.0, 0.3, 0.7, 0.7),
    "empty": ((0.45, 0.35, 0.08, 0.07, 0.05), 0.15, 0.15, 0.5, 0.1, 0.5, 0.8),
}


def _billboard(cam: Camera, X, Z, u, v):
    """Template points ``(u, v)`` in metres (lateral, height) standing at ``(X, Z)``, facing the
    camera."""
    return cam.project(X + np.asarray(u, np.float64), np.asarray(v, np.float64), Z)


def _rect(cv: Canvas, cam, X, Z, u0, u1, v0, v1, pid):
    cv.polygon(*_billboard(cam, X, Z, [u0, u1, u1, u0], [v0, v0, v1, v1]), pid)


def _oval(cv: Canvas, cam, X, Z, uc, vc, ru, rv, pid, n=18):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    cv.polygon(*_billboard(cam, X, Z, uc + ru * np.cos(t), vc + rv * np.sin(t)), pid)


def _box(cv: Canvas, cam, x0, x1, y0, y1, z0, z1, near, side, top=None):
    """Axis-aligned box: the faces the camera sees, far ones first."""
    P = cam.project
    if x1 < 0:
        cv.polygon(*P([x1] * 4, [y0, y0, y1, y1], [z0, z1, z1, z0]), side)
    elif x0 > 0:
        cv.polygon(*P([x0] * 4, [y0, y0, y1, y1], [z0, z1, z1, z0]), side)
    if y1 < cam.height:
        cv.polygon(*P([x0, x1, x1, x0], [y1] * 4, [z0, z0, z1, z1]), side if top is None else top)
    elif y0 > cam.height:
        cv.polygon(*P([x0, x1, x1, x0], [y0] * 4, [z0, z0, z1, z1]), side if top is None else top)
    cv.polygon(*P([x0, x1, x1, x0], [y0, y0, y1, y1], [z0] * 4), near)


def _ground(cv, cam, x0, x1, z0, z1, pid, y=0.0):
    cv.polygon(*cam.project([x0, x1, x1, x0], [y] * 4, [z0, z0, z1, z1]), pid)


def _street(rng: np.random.Generator, H: int, W: int, style: str) -> tuple[Canvas, Street]:
    """Draw the static street (sky, ground, facades, far background) and return it with its
    layout."""
    mix, *_ = _STYLES[style]
    cam = Camera(
        f=W * rng.uniform(0.85, 1.15),
        cx=W / 2 + rng.normal(0, 0.04 * W),
        hy=H * rng.uniform(0.36, 0.5),
        height=rng.uniform(1.15, 1.6),
        H=H,
        W=W,
    )
    cv = Canvas(H, W)
    cv.part(IGNORE_INDEX, (0, 0, 0))  # id 0: nothing drawn (every pixel gets covered below)
    sky_c = _pick(rng, [(0.5, 0.68, 0.92), (0.78, 0.8, 0.83), (0.72, 0.8, 0.9)])
    cv.polygon(
        np.array([-1, W + 1, W + 1, -1.0]),
        np.array([-1, -1, H + 1, H + 1.0]),
        cv.part(SKY, _jit(rng, sky_c, 0.08, 0.02), d.SKY),
    )
    terrain_c = _pick(rng, [(0.35, 0.45, 0.2), (0.5, 0.47, 0.3), (0.45, 0.36, 0.26)])
    terrain = cv.part(TERRAIN, _jit(rng, terrain_c), d.GRASS)
    cv.polygon(
        np.array([-1, W + 1, W + 1, -1.0]), np.array([cam.hy, cam.hy, H + 1, H + 1]), terrain
    )

    n_lanes = int(rng.integers(2, 5))
    lane_w = rng.uniform(3.0, 3.7)
    left = -(rng.integers(n_lanes) + rng.uniform(0.3, 0.7)) * lane_w
    road = (left, left + n_lanes * lane_w)
    _, _, _, _, _, p_strip, p_walk = _STYLES[style]
    walk_w = [rng.uniform(1.5, 4.5) if rng.uniform() < p_walk else 0.0 for _ in range(2)]
    walk = (road[0] - walk_w[0], road[1] + walk_w[1])
    strip = [rng.uniform(1.0, 5.0) if rng.uniform() < p_strip else 0.3 for _ in range(2)]
    facade = (walk[0] - strip[0], walk[1] + strip[1])
    z0, z_far = cam.z_near, rng.uniform(90, 180)

    # Far background first: a low skyline across the whole width closes the street.
    x = -400.0
    while x < 400:
        w, h = rng.uniform(8, 40), rng.uniform(3, 25)
        kind = BUILDING if rng.uniform() < mix[0] / (mix[0] + mix[1]) else VEGETATION
        c = _jit(rng, _pick(rng, _FACADES)) if kind == BUILDING else _jit(rng, (0.18, 0.33, 0.14))
        pid = cv.part(kind, c * 0.9, d.FACADE if kind == BUILDING else d.FOLIAGE)
        cv.polygon(*cam.project([x, x + w, x + w, x], [0, 0, h, h], [z_far] * 4), pid)
        x += w

    road_pid = cv.part(ROAD, _jit(rng, (0.36, 0.36, 0.38), 0.18, 0.015), d.ASPHALT)
    _ground(cv, cam, road[0], road[1], z0, z_far, road_pid)
    paint = cv.part(ROAD, _jit(rng, (0.85, 0.85, 0.8), 0.08, 0.01), d.FLAT)
    period, dash = rng.uniform(8, 12), rng.uniform(2.5, 4.0)
    for xb in [road[0] + lane_w * k for k in range(1, n_lanes)]:
        z = z0 + rng.uniform(0, period)
        while z < min(z_far, 90):
            _ground(cv, cam, xb - 0.07, xb + 0.07, z, z + dash, paint)
            z += period
    if rng.uniform() < 0.5:
        for xb in road:
            _ground(cv, cam, xb + 0.25 - 0.08, xb + 0.25 + 0.08, z0, min(z_far, 90), paint)
    if rng.uniform() < 0.3:  # a zebra crossing
        zc = rng.uniform(8, 30)
        for xs in np.arange(road[0] + 0.5, road[1] - 0.5, 1.0):
            _ground(cv, cam, xs, xs + 0.5, zc, zc + 3.0, paint)
    walk_c = _jit(rng, _pick(rng, [(0.56, 0.55, 0.53), (0.62, 0.56, 0.47), (0.55, 0.4, 0.35)]))
    curb_c = _jit(rng, (0.64, 0.64, 0.62), 0.08)
    for side in (0, 1):
        if walk_w[side] == 0:
            continue
        inner, outer = road[side], walk[side]
        _ground(
            cv,
            cam,
            min(inner, outer),
            max(inner, outer),
            z0,
            z_far,
            cv.part(SIDEWALK, walk_c, d.PAVER),
            y=0.12,
        )
        cv.polygon(
            *cam.project([inner] * 4, [0, 0, 0.12, 0.12], [z0, z_far, z_far, z0]),
            cv.part(SIDEWALK, curb_c, d.FACADE),
        )

    # Side facades, far to near so nearer segments cover farther ones.
    for side in (0, 1):
        X = facade[side]
        segments, z = [], 1.0
        while z < z_far:
            length = rng.uniform(8, 40)
            segments.append((z, min(z + length, z_far), int(rng.choice(5, p=mix))))
            z += length
        for za, zb, kind in reversed(segments):
            _facade_segment(rng, cv, cam, X, za, zb, kind)

    shade = Image.new("F", (W, H), 1.0)
    if rng.uniform() < 0.6:  # a building's shadow across the street
        zs, ze = sorted(rng.uniform(z0, 60, 2))
        depth = rng.uniform(0.45, 0.75)
        xs, ys = cam.project(
            [facade[0], facade[1], facade[1], facade[0]], [0] * 4, [zs, zs, ze, ze]
        )
        ImageDraw.Draw(shade).polygon(
            list(zip(xs.clip(-4 * W, 5 * W), ys.clip(-4 * H, 5 * H))), fill=depth
        )
    lanes = [road[0] + lane_w * (k + 0.5) for k in range(n_lanes)]
    return cv, Street(cam, road, walk, facade, lanes, z_far, shade)


def _facade_segment(rng, cv: Canvas, cam: Camera, X: float, za: float, zb: float, kind: int):
    """One stretch of the street side between depths ``za`` and ``zb`` on the plane ``x = X``."""
    P = cam.project
    if kind == 0:  # building with a grid of windows
        h = rng.uniform(6, 25)
        cv.polygon(
            *P([X] * 4, [0, 0, h, h], [za, zb, zb, za]),
            cv.part(BUILDING, _jit(rng, _pick(rng, _FACADES)), d.FACADE),
        )
        if cam.scale(zb) * 1.2 >= 1.5 or cam.scale(za) * 1.2 >= 1.5:
            glass = cv.part(BUILDING, _jit(rng, (0.14, 0.16, 0.2), 0.3), d.GLASS)
            step, first = rng.uniform(2.4, 3.6), rng.uniform(0.8, 2.0)
            for y in np.arange(first, h - 1.5, 3.2):
                for z in np.arange(za + 0.8, zb - 1.2, step):
                    if cam.scale(z) * 1.2 >= 1.5:
                        cv.polygon(
                            *P([X] * 4, [y, y, y + 1.5, y + 1.5], [z, z + 1.2, z + 1.2, z]), glass
                        )
    elif kind == 1:  # trees and hedges: a ragged crown line
        zs = np.linspace(za, zb, max(3, int((zb - za) / 1.5)))
        top = rng.uniform(3, 11) + np.cumsum(rng.normal(0, 0.6, zs.size))
        top = np.clip(top, 1.5, 16)
        ys = np.concatenate([[0, 0], top[::-1]])
        cv.polygon(
            *P([X] * (zs.size + 2), ys, np.concatenate([[za, zb], zs[::-1]])),
            cv.part(VEGETATION, _jit(rng, (0.17, 0.34, 0.12), 0.25, 0.03), d.FOLIAGE),
        )
    elif kind in (2, 3):  # a wall or fence in front of vegetation or a building
        _facade_segment(rng, cv, cam, X + np.sign(X) * 0.5, za, zb, int(rng.integers(2)))
        h = rng.uniform(0.8, 2.5) if kind == 2 else rng.uniform(1.0, 2.0)
        c = (
            _pick(rng, [(0.58, 0.57, 0.54), (0.5, 0.45, 0.38)])
            if kind == 2
            else _pick(rng, [(0.33, 0.35, 0.34), (0.2, 0.3, 0.22), (0.45, 0.33, 0.22)])
        )
        cls, tex = (WALL, d.FACADE) if kind == 2 else (FENCE, d.METAL)
        cv.polygon(*P([X] * 4, [0, 0, h, h], [za, zb, zb, za]), cv.part(cls, _jit(rng, c), tex))
        if kind == 3:  # posts
            post = cv.part(FENCE, _jit(rng, c) * 0.7, d.METAL)
            for z in np.arange(za, zb, 2.5):
                cv.polygon(*P([X] * 4, [0, 0, h + 0.1, h + 0.1], [z, z + 0.12, z + 0.12, z]), post)
    # kind 4: a gap, the ground and sky stay visible


# ----------------------------------------------------------------------------------------------
# Objects: each returns its depth and a closure that draws it, so all can be sorted far to near.


def _person(rng, cv, cam, X, Z, cls=PERSON, lift=0.0, h=None):
    s = (h or rng.uniform(1.5, 1.9)) / 1.75
    skin = cv.part(cls, _jit(rng, (0.8, 0.6, 0.5)) * rng.uniform(0.45, 1.1), d.SKIN)
    top, legs = cv.part(cls, _cloth(rng), d.CLOTH), cv.part(cls, _cloth(rng), d.CLOTH)
    stride = rng.uniform(-0.08, 0.08) if lift == 0 else 0.12
    for sgn in (-1, 1):
        _rect(
            cv,
            cam,
            X,
            Z,
            s * (sgn * 0.09 - 0.07 + sgn * stride),
            s * (sgn * 0.09 + 0.07 + sgn * stride),
            lift,
            lift + s * 0.88,
            legs,
        )
        _rect(cv, cam, X, Z, s * sgn * 0.2, s * sgn * 0.28, lift + s * 0.92, lift + s * 1.42, top)
    cv.polygon(
        *_billboard(
            cam,
            X,
            Z,
            s * np.array([-0.17, 0.17, 0.22, -0.22]),
            lift + s * np.array([0.85, 0.85, 1.46, 1.46]),
        ),
        top,
    )
    _oval(cv, cam, X, Z, 0, lift + s * 1.6, s * 0.1, s * 0.13, skin)
    _oval(
        cv,
        cam,
        X,
        Z,
        0,
        lift + s * 1.68,
        s * 0.1,
        s * 0.07,
        cv.part(cls, _jit(rng, (0.15, 0.1, 0.07), 0.5), d.CLOTH),
    )


def _two_wheeler(rng, cv, cam, X, Z, motor: bool):
    """Back view of a bicycle or motorcycle with its rider."""
    cls = MOTORCYCLE if motor else BICYCLE
    frame = cv.part(cls, _jit(rng, _pick(rng, _PAINT)), d.METAL)
    tyre = cv.part(cls, (0.05, 0.05, 0.05), d.FLAT)
    w = 0.07 if motor else 0.03
    _rect(cv, cam, X, Z, -w, w, 0, 0.66, tyre)
    if motor:
        cv.polygon(*_billboard(cam, X, Z, [-0.22, 0.22, 0.3, -0.3], [0.35, 0.35, 0.9, 0.9]), frame)
        _rect(cv, cam, X, Z, -0.08, 0.08, 0.62, 0.7, cv.part(cls, (0.9, 0.05, 0.05), d.LAMP))
    _rect(cv, cam, X, Z, -0.3, 0.3, 0.95, 1.0, frame)
    _person(rng, cv, cam, X, Z, cls=RIDER, lift=0.45 if motor else 0.5, h=rng.uniform(1.3, 1.5))


def _parked_bicycle(rng, cv, cam, X, Z):
    """Side view: two wheels and a frame, so the class shows through its holes."""
    s = cam.scale(Z)
    frame = cv.part(BICYCLE, _jit(rng, _pick(rng, _PAINT)), d.METAL)
    width = max(1, int(round(0.05 * s)))
    for u in (-0.52, 0.52):
        x, y = _billboard(cam, X, Z, [u - 0.34, u + 0.34], [0.68, 0.0])
        cv.ellipse(x[0], y[0], x[1], y[1], frame, width=width)
    for u, v in (([-0.52, 0.0, 0.0], [0.34, 0.75, 0.34]), ([0.0, 0.52, 0.45], [0.75, 0.34, 0.85])):
        xs, ys = _billboard(cam, X, Z, u, v)
        cv._draw.line(list(zip(xs.tolist(), ys.tolist())), fill=frame, width=width)


def _vehicle(rng, cv, cam, X, Z, kind: int, oncoming: bool):
    """Car, truck, bus or tram as boxes seen from behind (or in front, when oncoming)."""
    paint = _jit(
        rng,
        _pick(
            rng,
            _PAINT
            if kind == CAR
            else _PAINT[:3] + [(0.85, 0.7, 0.1), (0.7, 0.12, 0.1), (0.2, 0.3, 0.6)],
        ),
    )
    body = cv.part(kind, paint, d.METAL)
    side = cv.part(kind, paint * 0.8, d.METAL)
    glass = cv.part(kind, _jit(rng, (0.1, 0.12, 0.15), 0.3), d.GLASS)
    dark = cv.part(kind, (0.04, 0.04, 0.04), d.FLAT)
    lamp = cv.part(kind, (1.0, 0.95, 0.8) if oncoming else (0.85, 0.05, 0.05), d.LAMP)
    hw, h, length = {
        CAR: (0.9, 1.45, 4.4),
        TRUCK: (1.2, 3.4, 8.5),
        BUS: (1.25, 3.1, 12.0),
        TRAIN: (1.3, 3.4, 24.0),
    }[kind]
    x0, x1 = X - hw, X + hw
    if kind == CAR:
        _box(cv, cam, x0 + 0.15, x1 - 0.15, 0.95, h, Z + 0.9, Z + 3.3, glass, glass, body)
        _box(cv, cam, x0, x1, 0.3, 1.0, Z, Z + length, body, side)
        cv.polygon(
            *cam.project(
                [x0 + 0.2, x1 - 0.2, x1 - 0.35, x0 + 0.35], [1.0, 1.0, 1.35, 1.35], [Z + 0.9] * 4
            ),
            glass,
        )
        _rect(cv, cam, X, Z, -0.25, 0.25, 0.45, 0.58, cv.part(kind, (0.85, 0.85, 0.85), d.FLAT))
    elif kind == TRUCK:
        _box(cv, cam, x0, x1, 0.6, h, Z, Z + 6.2, body, side)
        _box(cv, cam, x0 + 0.1, x1 - 0.1, 0.5, 2.8, Z + 6.3, Z + length, side, side)
    else:
        _box(cv, cam, x0, x1, 0.35, h, Z, Z + length, body, side)
        band = [1.2, 1.2, 2.4, 2.4]
        xs = x1 if x1 < 0 else x0
        if x1 < 0 or x0 > 0:
            cv.polygon(
                *cam.project(
                    [xs] * 4, band, [Z + 0.8, Z + length - 0.8, Z + length - 0.8, Z + 0.8]
                ),
                glass,
            )
        cv.polygon(*cam.project([x0 + 0.2, x1 - 0.2, x1 - 0.2, x0 + 0.2], band, [Z] * 4), glass)
    for u in (x0 + 0.05, x1 - 0.3):  # tyres under the body
        cv.polygon(*cam.project([u, u + 0.25, u + 0.25, u], [0, 0, 0.4, 0.4], [Z + 0.5] * 4), dark)
    for u in (x0 + 0.1, x1 - 0.35):
        cv.polygon(*cam.project([u, u + 0.25, u + 0.25, u], [0.7, 0.7, 0.85, 0.85], [Z] * 4), lamp)


def _pole(rng, cv, cam, X, Z):
    c = _jit(rng, _pick(rng, [(0.45, 0.46, 0.47), (0.2, 0.22, 0.22)]))
    h = rng.uniform(3.5, 9)
    _rect(cv, cam, X, Z, -0.08, 0.08, 0, h, cv.part(POLE, c, d.METAL))
    r = rng.uniform()
    if r < 0.35:  # a traffic sign
        y = rng.uniform(2.0, min(3.2, h - 0.3))
        c = np.asarray(_pick(rng, _SIGNS))
        if rng.uniform() < 0.5:
            _oval(cv, cam, X, Z, 0, y, 0.32, 0.32, cv.part(SIGN, _jit(rng, c, 0.1), d.FLAT))
            _oval(
                cv,
                cam,
                X,
                Z,
                0,
                y,
                0.22,
                0.22,
                cv.part(SIGN, _jit(rng, (0.9, 0.9, 0.9), 0.1), d.FLAT),
            )
        else:
            _rect(
                cv,
                cam,
                X,
                Z,
                -0.35,
                0.35,
                y - 0.3,
                y + 0.3,
                cv.part(SIGN, _jit(rng, c, 0.1), d.FLAT),
            )
    elif r < 0.55:  # a traffic light
        y = rng.uniform(2.6, max(2.7, h - 1.0))
        _rect(
            cv,
            cam,
            X,
            Z,
            -0.17,
            0.17,
            y,
            y + 0.95,
            cv.part(LIGHT, _jit(rng, (0.1, 0.1, 0.1), 0.3), d.FLAT),
        )
        lit = rng.integers(3)
        for k, c in enumerate([(1.0, 0.1, 0.05), (1.0, 0.6, 0.05), (0.1, 1.0, 0.5)]):
            col = np.asarray(c) if k == lit else np.asarray(c) * 0.2
            _oval(cv, cam, X, Z, 0, y + 0.8 - 0.3 * k, 0.1, 0.1, cv.part(LIGHT, col, d.LAMP), n=10)


def _tree(rng, cv, cam, X, Z):
    h = rng.uniform(2.0, 4.0)
    _rect(
        cv,
        cam,
        X,
        Z,
        -0.15,
        0.15,
        0,
        h + 0.5,
        cv.part(VEGETATION, _jit(rng, (0.25, 0.18, 0.12)), d.FACADE),
    )
    u, v = d.blob_polygon(rng, 28, 0.4)
    r = rng.uniform(1.3, 3.0)
    cv.polygon(
        *_billboard(cam, X, Z, u * r, h + r * 0.8 + v * r * 0.8),
        cv.part(VEGETATION, _jit(rng, (0.17, 0.34, 0.12), 0.25, 0.03), d.FOLIAGE),
    )


def _populate(rng, cv: Canvas, st: Street, style: str, ego_free: float = 0.0):
    """Vehicles, people, poles and trees; ``ego_free`` metres of the ego lane stay empty."""
    _, cars, parked, persons, riders, _, _ = _STYLES[style]
    cam, items = st.cam, []
    zmin = cam.z_near * 1.4
    ego = int(np.argmin(np.abs(st.lanes)))
    shade = ImageDraw.Draw(st.shade)

    def add(Z, fn, *args):
        items.append((Z, len(items), fn, args))

    for k, x in enumerate(st.lanes):
        z = zmin + rng.uniform(0, 12) + (ego_free if k == ego else 0)
        for _ in range(rng.poisson(cars)):
            kind = int(
                rng.choice([CAR, TRUCK, BUS, TRAIN, MOTORCYCLE], p=[0.72, 0.1, 0.1, 0.03, 0.05])
            )
            if z > 90:
                break
            if kind == MOTORCYCLE:
                add(z, _two_wheeler, x + rng.normal(0, 0.3), z, True)
            else:
                add(z, _vehicle, x + rng.normal(0, 0.2), z, kind, k < ego)
                xs, ys = cam.project([x - 1.1, x + 1.1], [0, 0], [z + 0.4, z + 0.4])
                shade.ellipse(
                    [xs[0], ys[0] - 0.25 * cam.scale(z), xs[1], ys[0] + 0.05 * cam.scale(z)],
                    fill=0.45,
                )
            z += rng.uniform(8, 30)
    for side, sgn in ((0, 1), (1, -1)):
        if rng.uniform() < parked:
            x = st.road[side] + sgn * 1.1
            for z in np.arange(zmin + rng.uniform(0, 5), 70, rng.uniform(5.2, 7.5)):
                if rng.uniform() < 0.6:
                    add(z, _vehicle, x, z, CAR, False)
        walk_mid = (st.road[side] + st.walk[side]) / 2
        for z in np.arange(rng.uniform(3, 15), 90, rng.uniform(12, 30)):
            add(
                z,
                _pole,
                st.walk[side] + sgn * 0.4
                if st.walk[side] != st.road[side]
                else st.road[side] - sgn * 0.8,
                z,
            )
        for z in rng.uniform(4, 60, rng.poisson(2)):
            add(
                z,
                _tree,
                (st.walk[side] + st.facade[side]) / 2
                if abs(st.facade[side] - st.walk[side]) > 1
                else st.walk[side] + sgn * 0.8,
                z,
            )
        for z in rng.uniform(3, 50, rng.poisson(persons / 2)):
            x = rng.uniform(
                min(st.road[side], st.walk[side]) - 0.5, max(st.road[side], st.walk[side]) + 0.5
            )
            add(z, _person, x, z)
        if rng.uniform() < 0.25:
            for z in rng.uniform(4, 30, rng.integers(1, 4)):
                add(z, _parked_bicycle, walk_mid, z)
    for z in rng.uniform(6, 50, rng.poisson(riders)):
        side = rng.integers(2)
        add(
            z,
            _two_wheeler,
            st.road[side] + (1 if side == 0 else -1) * 1.0,
            z,
            bool(rng.uniform() < 0.4),
        )
    for z, _, fn, args in sorted(items, key=lambda t: (-t[0], t[1])):
        fn(rng, cv, cam, *args)


def _ego_void(rng, cv: Canvas, hood_p: float = 0.7, border_p: float = 0.3):
    """Cityscapes' void: the ego vehicle's hood at the bottom and, sometimes, a rectification
    border."""
    H, W = cv.H, cv.W
    if rng.uniform() < hood_p:
        hh = H * rng.uniform(0.05, 0.13)
        xs = np.linspace(-1, W + 1, 24)
        ys = H - hh * (1 - 0.35 * ((xs - W / 2) / (W / 2)) ** 2)
        c = _jit(rng, _pick(rng, [(0.08, 0.08, 0.1), (0.2, 0.22, 0.28), (0.6, 0.6, 0.62)]))
        cv.polygon(
            np.concatenate([xs, [W + 1, -1]]),
            np.concatenate([ys, [H + 1, H + 1]]),
            cv.part(IGNORE_INDEX, c, d.GLASS),
        )
    if rng.uniform() < border_p:
        b = max(1, W // 256)
        x0 = 0 if rng.uniform() < 0.5 else W - b
        cv.polygon(
            np.array([x0, x0 + b - 0.01, x0 + b - 0.01, x0]),
            np.array([-1, -1, H + 1, H + 1.0]),
            cv.part(IGNORE_INDEX, (0, 0, 0)),
        )


def _paint(
    rng, cv: Canvas, st: Street, alpha_from: Canvas | None = None, feather: float = 0.0
) -> np.ndarray:
    """Render ``cv`` to uint8 RGB; with ``alpha_from``, anomalies are blended into that scene with
    soft edges."""
    fields = d.noise_fields(rng, cv.H, cv.W)
    img = d.render(cv, fields)
    labels = cv.labels()
    shade = np.where(
        np.isin(labels, [ROAD, SIDEWALK, TERRAIN]) | cv.anomaly_mask(), np.asarray(st.shade), 1.0
    )
    if alpha_from is not None:
        base = d.render(alpha_from, fields)
        m = Image.fromarray((cv.anomaly_mask() * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(feather)
        )
        a = (np.asarray(m, np.float32) / 255)[..., None]
        img = a * img + (1 - a) * base
    return d.finish(img, d.Look.sample(rng), rng, shade.astype(np.float32))


def cityscapes_frame(rng: np.random.Generator, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """One street frame: RGB ``[H, W, 3]`` uint8 and train ids ``[H, W]`` uint8 (255 void)."""
    style = "urban" if rng.uniform() < 0.75 else "suburban"
    cv, st = _street(rng, H, W, style)
    _populate(rng, cv, st, style)
    _ego_void(rng, cv)
    return _paint(rng, cv, st), cv.labels()


# ----------------------------------------------------------------------------------------------
# Benchmark anomalies: blobs, boxes, animal-like figures and debris with textures no class has.


def _anomaly_part(rng, cv: Canvas, px_size: float) -> int:
    tex = int(
        rng.choice(
            [d.STRIPES, d.CHECKER, d.SPOTS, d.HISAT, d.RAINBOW], p=[0.25, 0.2, 0.2, 0.25, 0.1]
        )
    )
    c1 = _odd_colour(rng)
    c2 = _odd_colour(rng) if rng.uniform() < 0.6 else np.full(3, rng.choice([0.05, 0.95]))
    period = float(np.clip(px_size * rng.uniform(0.08, 0.25), 1.5, 24))
    return cv.part(
        255, c1, tex, color2=tuple(c2), param=(float(rng.uniform(0, np.pi)), period), anomaly=True
    )


def _draw_anomaly(
    rng, cam: Camera, H: int, W: int, X: float, Z: float, size: float, kind: str
) -> Canvas:
    """One anomaly standing on the ground at ``(X, Z)``, ``size`` metres across, on a blank
    canvas."""
    cv = Canvas(H, W)
    cv.part(255, (0, 0, 0))
    px = size * cam.scale(Z)
    pid = _anomaly_part(rng, cv, px)
    if kind == "blob":
        u, v = d.blob_polygon(rng, 40, rng.uniform(0.2, 0.6))
        h = size * rng.uniform(0.4, 1.0)
        cv.polygon(*_billboard(cam, X, Z, u * size / 2, (v + 1) * h / 2), pid)
    elif kind == "box":
        h, depth = size * rng.uniform(0.4, 1.0), size * rng.uniform(0.4, 1.0)
        side, top = _anomaly_part(rng, cv, px), _anomaly_part(rng, cv, px)
        _box(cv, cam, X - size / 2, X + size / 2, 0, h, Z, Z + depth, pid, side, top)
    elif kind == "animal":
        body_h, leg = size * 0.4, size * 0.35
        for u in (-0.38, -0.25, 0.25, 0.38):
            _rect(
                cv,
                cam,
                X,
                Z,
                u * size - 0.04 * size,
                u * size + 0.04 * size,
                0,
                leg + 0.1 * size,
                pid,
            )
        _oval(cv, cam, X, Z, 0, leg + body_h / 2, size * 0.45, body_h / 2, pid, n=24)
        head = 1 if rng.uniform() < 0.5 else -1
        _oval(cv, cam, X, Z, head * size * 0.5, leg + body_h * 1.0, size * 0.14, size * 0.11, pid)
        _rect(
            cv,
            cam,
            X,
            Z,
            -head * size * 0.5,
            -head * size * 0.44,
            leg * 0.6,
            leg + body_h * 0.8,
            pid,
        )
    else:  # debris: scattered flat pieces lying on the ground
        for _ in range(int(rng.integers(4, 10))):
            dx, dz = rng.uniform(-size / 2, size / 2), rng.uniform(0, size)
            r = size * rng.uniform(0.08, 0.22)
            t = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 6))))
            piece = _anomaly_part(rng, cv, px)
            cv.polygon(
                *cam.project(X + dx + r * np.cos(t), np.full(t.size, 0.04), Z + dz + r * np.sin(t)),
                piece,
            )
            _rect(
                cv, cam, X + dx, Z + dz, -r * 0.5, r * 0.5, 0, r * 0.5, piece
            )  # pieces have some height
    return cv


def _footprint(mask: np.ndarray) -> np.ndarray:
    """The lowest tenth (at least 2 rows) of the rows ``mask`` [H, W] covers, as a row mask."""
    rows = np.nonzero(mask.any(1))[0]
    low = rows[-1] - max(2, (rows[-1] - rows[0] + 1) // 10) + 1
    keep = np.zeros(mask.shape, bool)
    keep[max(low, rows[0]) : rows[-1] + 1] = True
    return keep


def _place_anomalies(
    rng,
    cv: Canvas,
    st: Street,
    n: int,
    where: str,
    size: tuple[float, float],
    depth: tuple[float, float],
    min_px: int,
    kinds=("blob", "box", "animal", "debris"),
    tries: int = 40,
    strict: bool = True,
    max_share: float = 0.25,
    in_view: float | None = None,
) -> int:
    """Place up to ``n`` anomalies on the road (``where="road"``) or anywhere on the ground; returns
    how many were placed. A position is rejected when the anomaly would be too small to see (under
    ``min_px`` pixels), cover more than ``max_share`` of the frame, cover void or, if ``strict``,
    cover an object or stand mostly off the road it was put on. With ``in_view``, an anomaly stands
    on ground the frame shows (not nearer than the frame's bottom row) with its centre in the
    middle ``in_view`` share of the frame's width, and is rejected where the frame's edge cuts
    it."""
    cam, placed = st.cam, 0
    labels = cv.labels()
    for _ in range(tries):
        if placed == n:
            break
        Z = rng.uniform(*depth)
        lo, hi = st.road if where == "road" else (st.facade[0] + 1, st.facade[1] - 1)
        if in_view is not None:
            Z = max(Z, cam.z_near * 1.1)
            margin = cv.W * (1 - in_view) / 2
            lo = max(lo, (margin - cam.cx) * Z / cam.f)
            hi = min(hi, (cv.W - margin - cam.cx) * Z / cam.f)
        X = rng.uniform(lo + 0.3, hi - 0.3) if hi - lo > 0.6 else (lo + hi) / 2
        other = _draw_anomaly(rng, cam, cv.H, cv.W, X, Z, rng.uniform(*size), _pick(rng, kinds))
        mask = other.ids() > 0
        covered = labels[mask]
        if mask.sum() < min_px or mask.mean() > max_share or (covered == IGNORE_INDEX).any():
            continue
        if in_view is not None and (mask[:, 0].any() or mask[:, -1].any() or mask[-1].any()):
            continue
        # A large object standing near the car mostly hides what is behind it: whether it stands
        # on the road is judged by its footprint (its lowest rows) then.
        ground = covered if in_view is None else labels[mask & _footprint(mask)]
        if strict and (
            np.isin(covered, _THINGS).any() or (where == "road" and (ground == ROAD).mean() < 0.5)
        ):
            continue
        cv.overlay(other)
        labels = cv.labels()
        placed += 1
        rows, cols = np.nonzero(mask)  # contact shadow under the object
        ImageDraw.Draw(st.shade).ellipse(
            [cols.min(), rows.max() - 2, cols.max(), rows.max() + 2], fill=0.6
        )
    return placed


@dataclass(frozen=True)
class _Anomalies:
    """How one benchmark's frames and anomalies are drawn: scene ``style``, ``count`` anomalies
    (inclusive range) placed on the ``where`` ground (``"road"`` or ``"any"``), ``size`` metres
    across at ``depth`` metres, at least ``min_px`` pixels (at 256x512) and at most ``max_share``
    of the frame each, ego-vehicle ``hood`` probability, ``kinds`` (repeats weight the draw) and
    ``ego_free`` metres of the ego lane kept free of vehicles; ``in_view``: anomalies stand on
    visible ground with their centre in that middle share of the frame's width (None: anywhere on
    their ground, even cut off by the frame's edge)."""

    style: str
    count: tuple[int, int]
    where: str
    size: tuple[float, float]
    depth: tuple[float, float]
    min_px: int
    hood: float
    kinds: tuple[str, ...]
    ego_free: float = 0.0
    max_share: float = 0.25
    in_view: float | None = None


# The anomaly statistics follow the real benchmarks' descriptions (notebook 00 tabulates them
# with data.benchmarks.anomaly_statistics): Road Anomaly "big anomalies, mostly animals" (its
# authors' road-anomaly-benchmark README), and the two real 1280x720 road photos of
# ../shared/realdata hold one object of 10.3% and 26.9% of the frame; RoadAnomaly21's anomalies
# "can appear everywhere in the image" and "widely differ in size" (SMIYC); RoadObstacle21 and
# Fishyscapes Lost&Found show small obstacles on the road ahead, scored on the road only.
_BENCH = {
    "RoadAnomaly": _Anomalies(
        "suburban", (1, 2), "road", (1.5, 4.0), (2.5, 10), 60, 0.0,
        ("animal", "animal", "animal", "box", "blob"), ego_free=20.0, max_share=0.4, in_view=0.6,
    ),
    "RoadAnomaly21": _Anomalies(
        "urban", (1, 3), "any", (1.5, 5.0), (2.5, 12), 60, 0.5,
        ("animal", "animal", "box", "blob", "blob"), ego_free=30.0, max_share=0.4, in_view=0.9,
    ),
    "RoadObsticle21": _Anomalies(
        "empty", (1, 3), "road", (0.2, 0.8), (5, 40), 12, 0.3,
        ("blob", "box", "animal", "debris"), ego_free=45.0,
    ),
    "FS_LostFound_full": _Anomalies(
        "empty", (1, 3), "road", (0.1, 0.5), (6, 35), 6, 0.6,
        ("blob", "box", "debris"), ego_free=45.0,
    ),
    "fs_static": _Anomalies(
        "urban", (1, 2), "any", (0.6, 2.5), (4, 25), 40, 0.7,
        ("blob", "box", "animal", "debris"),
    ),
}  # fmt: skip


def benchmark_frame(
    rng: np.random.Generator, folder: str, H: int, W: int, with_anomaly: bool = True
):
    """One frame of benchmark ``folder``: RGB ``[H, W, 3]`` uint8 and its mask ``[H, W]`` uint8 in
    that benchmark's stored convention (RoadAnomaly 0/2; the others 0/1/255)."""
    b = _BENCH[folder]
    where, size, depth = b.where, b.size, b.depth
    min_px = max(4, int(b.min_px * H * W / (256 * 512)))
    cv, st = _street(rng, H, W, b.style)
    _populate(rng, cv, st, b.style, ego_free=b.ego_free)
    _ego_void(rng, cv, hood_p=b.hood, border_p=0.0 if folder == "RoadAnomaly" else 0.2)
    scene = cv.copy()
    if with_anomaly:
        n = int(rng.integers(b.count[0], b.count[1] + 1))
        placed = _place_anomalies(
            rng, cv, st, n, where, size, depth, min_px, b.kinds,
            tries=40 if b.in_view is None else 200, max_share=b.max_share, in_view=b.in_view,
        )  # fmt: skip
        if placed == 0:  # a crowded frame: accept an anomaly in front of whatever it covers
            placed = _place_anomalies(
                rng,
                cv,
                st,
                1,
                where,
                size,
                (depth[0], depth[0] * 2),
                4,
                ("blob",),
                400,
                strict=False,
                in_view=b.in_view,
            )
        if placed == 0:
            raise RuntimeError(
                f"Could not place an anomaly in a {folder} frame of {W}x{H}; the frame is too "
                "small."
            )
    feather = max(0.6, W / 512) if folder == "fs_static" else 0.0
    image = _paint(rng, cv, st, alpha_from=scene if feather else None, feather=feather)
    labels, anomaly = cv.labels(), cv.anomaly_mask()
    mask = np.zeros((H, W), np.uint8)
    if folder == "RoadAnomaly":
        mask[anomaly] = 2
    elif folder in ("RoadObsticle21", "FS_LostFound_full"):  # only the road counts
        mask[labels != ROAD] = 255
        mask[anomaly] = 1
    else:
        mask[labels == IGNORE_INDEX] = 255
        mask[anomaly] = 1
    return image, mask


# ----------------------------------------------------------------------------------------------
# COCO stand-ins for outlier exposure: a different generator family from the benchmark anomalies.

# Real COCO category ids. The first block are among the 14 Cityscapes-like categories that
# COCO preparation must drop; the rest are kept.
COCO_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (6, "bus", "vehicle"), (10, "traffic light", "outdoor"), (15, "bench", "outdoor"),
    (17, "cat", "animal"), (18, "dog", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"),
    (28, "umbrella", "accessory"), (33, "suitcase", "accessory"), (37, "sports ball", "sports"),
    (38, "kite", "sports"), (44, "bottle", "kitchen"), (62, "chair", "furniture"),
    (64, "potted plant", "furniture"), (72, "tv", "electronic"), (85, "clock", "indoor"),
    (88, "teddy bear", "indoor"),
)  # fmt: skip
_CITYSCAPES_LIKE_IDS = (1, 2, 3, 6, 10, 15)


def _coco_background(rng, H, W) -> np.ndarray:
    """Generic indoor or outdoor scene: gradients, large panels and smooth noise, no street."""
    x, y = d.grid(H, W)
    c0, c1 = (
        d.rgb_from_hsv(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.3, 0.9)) for _ in range(2)
    )
    t = (y / H)[..., None] if rng.uniform() < 0.6 else (x / W)[..., None]
    img = c0 * (1 - t) + c1 * t
    for _ in range(int(rng.integers(1, 5))):  # walls, tables, windows
        x0, x1 = np.sort(rng.uniform(0, W, 2))
        y0, y1 = np.sort(rng.uniform(0, H, 2))
        img[int(y0) : int(y1), int(x0) : int(x1)] = d.rgb_from_hsv(
            rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.2, 0.9)
        )
    img = img * (1 + 0.12 * d.smooth_noise(rng, H, W, max(H, W) / 6))[..., None]
    return img.astype(np.float32)


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Counter-clockwise hull ``[M, 2]`` of points ``[N, 2]`` (Andrew's monotone chain)."""
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    hull: list = []
    for seq in (pts, pts[::-1]):
        chain: list = []
        for p in seq:
            while (
                len(chain) >= 2
                and np.linalg.det(np.stack([chain[-1] - chain[-2], p - chain[-2]])) <= 0
            ):
                chain.pop()
            chain.append(p)
        hull += chain[:-1]
    return np.array(hull)


def _coco_shape(rng) -> np.ndarray:
    """Outline ``[N, 2]`` (x, y) of unit area around the origin: a convex hull of random points or
    a regular-ish star."""
    if rng.uniform() < 0.5:
        pts = rng.normal(0, 1, (12, 2)) * [1.0, rng.uniform(0.5, 1.0)]
        out = _convex_hull(pts)
    else:
        k = int(rng.integers(5, 10))
        t = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False) + rng.uniform(0, np.pi)
        rad = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.4, 0.75))
        out = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    a = rng.uniform(0, np.pi)
    out = out @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    area = 0.5 * abs(
        np.dot(out[:, 0], np.roll(out[:, 1], 1)) - np.dot(out[:, 1], np.roll(out[:, 0], 1))
    )
    return out / np.sqrt(area)


def _shade_object(rng, mask: np.ndarray) -> np.ndarray:
    """Appearance of one COCO stand-in inside ``mask`` ``[H, W]``: smooth gradient shading or a
    photo-like multi-scale noise patch (never the benchmarks' stripes, checks or spots)."""
    H, W = mask.shape
    x, y = d.grid(H, W)
    rows, cols = np.nonzero(mask)
    cx, cy, r = cols.mean(), rows.mean(), max(2.0, np.sqrt(mask.sum() / np.pi))
    base = d.rgb_from_hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.4, 0.95))
    kind = rng.uniform()
    if kind < 0.4:  # linear light
        a = rng.uniform(0, 2 * np.pi)
        g = ((x - cx) * np.cos(a) + (y - cy) * np.sin(a)) / r
        val = np.clip(0.75 + 0.35 * g, 0.3, 1.2)[..., None] * base
    elif kind < 0.7:  # a lit sphere
        dist2 = ((x - cx - 0.3 * r) ** 2 + (y - cy - 0.3 * r) ** 2) / (1.6 * r) ** 2
        val = np.clip(1.15 - dist2, 0.25, 1.15)[..., None] * base
    else:  # photo-like: noise at several scales mapped onto a two-colour palette
        n = sum(d.smooth_noise(rng, H, W, max(2.0, r / s)) / s for s in (1, 2, 4, 8))
        t = np.clip(0.5 + 0.3 * n, 0, 1)[..., None]
        other = d.rgb_from_hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.9))
        val = base * (1 - t) + other * t
    return val.astype(np.float32)


def coco_image(rng: np.random.Generator, H: int, W: int, image_id: int, first_ann_id: int):
    """One COCO-style image ``[H, W, 3]`` uint8 and its annotations (polygon ``segmentation``)."""
    from pycocotools import mask as mask_utils

    img = _coco_background(rng, H, W)
    anns, boxes = [], []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(10):
            # Object areas range from too small to too large for COCO preparation's filters.
            frac = float(np.exp(rng.uniform(np.log(0.015), np.log(0.6))))
            shape = _coco_shape(rng) * np.sqrt(frac * H * W)
            lo, hi = shape.min(0), shape.max(0)
            cx, cy = (
                rng.uniform(-lo[0], max(-lo[0], W - hi[0])),
                rng.uniform(-lo[1], max(-lo[1], H - hi[1])),
            )
            box = (cx + lo[0], cy + lo[1], cx + hi[0], cy + hi[1])
            if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
                break
        else:
            continue
        poly = np.clip(shape + [cx, cy], 0, [W - 1, H - 1]).round(2)
        seg = [poly.reshape(-1).tolist()]
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, H, W))
        with (
            warnings.catch_warnings()
        ):  # pycocotools' numpy-2 copy= DeprecationWarning, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = mask_utils.decode(rle).astype(bool)
        if mask.sum() < 4:
            continue
        boxes.append(box)
        img[mask] = _shade_object(rng, mask)[mask]
        is_city = rng.uniform() < 0.12
        cats = [c for c, _, _ in COCO_CATEGORIES if (c in _CITYSCAPES_LIKE_IDS) == is_city]
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": int(_pick(rng, cats)),
                "segmentation": seg,
                "area": float(mask_utils.area(rle)),
                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    img = img * (1 + 0.03 * rng.standard_normal((H, W, 1), dtype=np.float32))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), anns


# ----------------------------------------------------------------------------------------------
# Writing


def _save(arr: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


# PNG is lossless, so its compression level changes the file sizes, never a pixel (the shipped demo
# weights and the leakage check read pixels): level 1 saves in a fifth of level 6's time, which
# was half of the data generation; the demo set's PNGs grow from 76 to 81 MiB (all 1146 images
# checked pixel-equal to level 6's).
_IMAGE_KW = {
    "png": {"compress_level": 1},
    "jpg": {"quality": 95},
    "webp": {"quality": 95, "method": 4},
}


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    # Each frame has its own stream: a frame's content does not depend on how many came before.
    return np.random.default_rng([seed, stream, index])


def _items(preset: Preset, seed: int) -> list[tuple]:
    """Every image of the data set, in writing order: ``("city", stream, index)``,
    ``("bench", k, index)`` (k-th benchmark) and ``("coco", index, image_id)``."""
    items = [
        ("city", stream, i)
        for stream, n in enumerate((preset.n_train, preset.n_val))
        for i in range(n)
    ]
    items += [("bench", k, i) for k, (_, n) in enumerate(preset.benchmark_frames) for i in range(n)]
    ids = np.sort(_rng(seed, 20, 0).choice(580000, preset.n_coco, replace=False)) + 9
    return items + [("coco", i, image_id) for i, image_id in enumerate(ids.tolist())]


def _write_item(out: Path, preset: Preset, seed: int, item: tuple):
    """Draw and write one image of ``_items`` (its own RNG stream, so any process can); a COCO
    image returns its ``images`` entry and its annotations, numbered from 1."""
    kind, k, i = item
    if kind == "city":
        split, cities = (("train", TRAIN_CITIES), ("val", VAL_CITIES))[k]
        city = cities[i % len(cities)]
        stem = f"{city}_{i // len(cities):06d}_{19 + 20 * (i % 7):06d}"
        image, labels = cityscapes_frame(_rng(seed, k, i), *preset.frame_size())
        _save(
            image,
            out / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            **_IMAGE_KW["png"],
        )
        labels_dir = out / "cityscapes" / "gtFine" / split / city
        _save(labels, labels_dir / f"{stem}_gtFine_labelTrainIds.png", **_IMAGE_KW["png"])
        return None
    if kind == "bench":
        folder, n = preset.benchmark_frames[k]
        ext = BENCHMARKS[folder].image_ext
        empty = int(_rng(seed, 10 + k, 10**6).integers(n))  # one frame without anomalies
        image, mask = benchmark_frame(
            _rng(seed, 10 + k, i), folder, *preset.frame_size(folder), with_anomaly=i != empty
        )
        root = out / "Validation_Dataset" / folder
        _save(image, root / "images" / f"{i}.{ext}", **_IMAGE_KW[ext])
        _save(mask, root / "labels_masks" / f"{i}.png", **_IMAGE_KW["png"])
        return None
    index, image_id = k, i  # ("coco", index, image_id)
    rng = _rng(seed, 21, index)
    h, w = preset.coco_size if rng.uniform() < 0.7 else preset.coco_size[::-1]
    image, anns = coco_image(rng, h, w, image_id, 1)
    name = f"{image_id:012d}.jpg"
    _save(image, out / "coco" / "train2017" / name, quality=92)
    return {"id": image_id, "file_name": name, "height": h, "width": w, "license": 0}, anns


def _default_workers(preset: Preset) -> int:
    # Starting a worker process (a fresh interpreter importing numpy, PIL and this module) takes
    # about a second: more than the whole tiny set, a sixtieth of the demo set's one-process time.
    if preset.total < 100:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8))


def _write_all(
    out: Path, preset: Preset, seed: int, progress: bool, prepare_coco: bool, workers: int
) -> None:
    bar = tqdm(
        total=preset.total, desc=f"embedded data ({preset.name})", unit="img", disable=not progress
    )
    (out / "coco" / "train2017").mkdir(parents=True)
    items = _items(preset, seed)
    images, annotations = [], []

    def collect(result) -> None:
        if result is not None:  # a COCO image: its annotations numbered on from the ones before
            entry, anns = result
            images.append(entry)
            first = len(annotations) + 1
            annotations.extend({**a, "id": first + j} for j, a in enumerate(anns))
        bar.update()

    if workers <= 1:
        for item in items:
            collect(_write_item(out, preset, seed, item))
    else:
        # Each image has its own RNG stream and file, so the bytes do not depend on which process
        # draws it; results come back in item order. "spawn": a Jupyter kernel's threads make fork
        # unsafe.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            for result in pool.map(partial(_write_item, out, preset, seed), items, chunksize=4):
                collect(result)
        finally:  # on an interrupt, let no worker write into a folder about to be removed
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    coco = out / "coco"
    instances = {
        "info": {
            "description": "anomalyseg embedded COCO-layout objects (procedural, not COCO images)",
            "version": f"embedded-{TRAINING_DATA_VERSION}",
            "year": 2017,
        },
        "licenses": [{"id": 0, "name": "MIT (generated)", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": s} for c, n, s in COCO_CATEGORIES],
    }
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_train2017.json").write_text(
        json.dumps(instances, sort_keys=True, separators=(",", ":"))
    )
    if prepare_coco:
        from .coco import prepare_coco_ood

        prepare_coco_ood(
            coco, split="train", year=2017, max_images=preset.n_coco, seed=seed, progress=progress
        )


def _check_args(preset: str, seed: int) -> Preset:
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown embedded-data preset {preset!r}; expected one of {sorted(PRESETS)} (see "
            "anomalyseg.data.synthetic.PRESETS)."
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"The embedded-data seed must be a non-negative integer, got {seed!r}.")
    return PRESETS[preset]


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"The marker {root / MARKER} is not valid JSON ({e}); delete {root} and generate it "
            "again."
        ) from e


def make_data(
    out: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    *,
    progress: bool = True,
    prepare_coco: bool = True,
    workers: int | None = None,
) -> Path:
    """Generate the embedded data set into ``out`` and return ``out``.

    Everything is written into a temporary sibling folder that is renamed to ``out`` at the end, so
    an interrupted run never leaves a half data set. An existing ``out`` is replaced only when it is
    an earlier embedded data set (it holds ``EMBEDDED_DATA.json``) or empty. ``prepare_coco=False``
    skips ``anomalyseg.data.coco.prepare_coco_ood`` (the raw COCO layout is still written).
    ``workers`` processes draw the images (default: up to 8, one per usable core, and one for a
    set under 100 images); every image has its own RNG stream, so the bytes are the same for any
    number.
    """
    spec, out = _check_args(preset, seed), Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and _read_marker(out) is None)):
        raise FileExistsError(
            f"{out} already exists and is not an embedded data set (no {MARKER} inside). make_data "
            "writes a whole folder; pass a new or empty folder, or one made by make_data earlier, "
            "which it replaces."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    # The pid in the name tells a later run whether the writer is still alive (SIGKILL runs no
    # cleanup).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would become the data set's own mode
    try:
        n = _default_workers(spec) if workers is None else int(workers)
        _write_all(tmp, spec, int(seed), progress, prepare_coco, n)
        marker = {
            "generator": "anomalyseg.data.synthetic",
            "version": GENERATOR_VERSION,
            "training_data_version": TRAINING_DATA_VERSION,
            "seed": int(seed),
            "preset": asdict(spec),
            "coco_prepared": prepare_coco,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _remove_stale_partials(out: Path) -> None:
    """Remove the temporary folders ``.<name>.partial-<pid>-*`` of earlier ``make_data`` runs into
    ``out`` whose process is gone (killed before its own cleanup could run); folders named without
    a pid come from an older version and are removed too."""
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        pid = folder.name[len(f".{out.name}.partial-") :].split("-", 1)[0]
        if (
            pid.isdigit()
            and "-" in folder.name[len(f".{out.name}.partial-") :]
            and _alive(int(pid))
        ):
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def ensure_data(
    root: str | Path, preset: str = "demo", seed: int = 0, *, progress: bool = True
) -> Path:
    """Return ``root`` holding the embedded data set of ``preset`` and ``seed``, generating it
    when ``root`` does not exist yet (or is empty) and replacing it, with a notice, when it holds
    the same preset and seed from an earlier generator version (generated data, nothing a user
    made). A data set of another preset or seed, or of a newer generator, at ``root`` is an error
    rather than silently used or replaced."""
    spec, root = _check_args(preset, seed), Path(root)
    marker = _read_marker(root) if root.is_dir() else None
    if marker is None:
        return make_data(root, preset, seed, progress=progress)
    found = (
        marker.get("preset", {}).get("name"),
        marker.get("seed"),
        marker.get("version"),
        marker.get("coco_prepared", True),
    )
    if found == (spec.name, int(seed), GENERATOR_VERSION, True):
        return root
    if found[:2] == (spec.name, int(seed)) and found[3] and int(found[2]) < GENERATOR_VERSION:
        notice(
            f"{root} holds the embedded data set of generator version {found[2]}; generating "
            f"version {GENERATOR_VERSION} in its place (preset {spec.name!r}, seed {seed})."
        )
        return make_data(root, preset, seed, progress=progress)
    raise ValueError(
        f"{root} holds the embedded data set preset={found[0]!r}, seed={found[1]}, generator "
        f"version {found[2]}{'' if found[3] else ' without prepared COCO objects'}; asked for "
        f"preset={spec.name!r}, seed={seed}, version {GENERATOR_VERSION}. Use another folder, "
        f"or replace it with anomalyseg.data.synthetic.make_data({str(root)!r}, "
        f"preset={spec.name!r}, seed={seed})."
    )
