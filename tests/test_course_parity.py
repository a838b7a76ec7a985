"""Parity with the course's evaluation scripts, to 1e-6, on generated frames in the real formats.

The reference below is written here, independently of the package, from what the course's
``eval/evalAnomaly.py``, ``eval/eval_iou.py`` and ``eval/iouEval.py`` do (REFERENCE §1, §2, §5):

- each image is opened with PIL, converted to RGB, resized by torchvision's ``Resize((512, 1024),
  Image.BILINEAR)`` on the PIL image (that is PIL's own ``Image.resize``) and turned into a tensor
  by ``ToTensor`` (``/ 255``), with no mean / std;
- its mask is ``images`` -> ``labels_masks`` with a ``.png`` extension, resized with
  ``Resize((512, 1024), Image.NEAREST)`` (PIL nearest); Road Anomaly's 2 becomes 1;
- a frame whose resized mask holds no 1 is skipped (``if 1 not in np.unique(ood_gts): continue``);
- the scores of pixels labelled 1 and 0 are pooled over the data set, AuPRC is sklearn's
  ``average_precision_score`` and FPR95 is the ``ood-metrics`` package's ``fpr_at_95_tpr``;
- mIoU: ``Resize(512, BILINEAR)`` / ``Resize(512, NEAREST)``, labels ``Relabel(255, 19)``, the
  argmax of the 20 ERFNet channels, and ``iouEval(20)`` with ignore index 19: one-hot TP / FP / FN
  over the first 19 channels, FP not counted on ignored pixels, IoU = TP / (TP + FP + FN + 1e-15),
  mean over the 19 classes.

The network is the same random-weight ERFNet on both sides (it is not under test), saved and
loaded in the course's ``module.``-prefixed DataParallel format. The course evaluates at 512x1024;
here the evaluation size is the reference's parameter ``SIZE`` = 128x256 (the same conventions at
a sixteenth of the CPU time), with frames from 180x320 to 1024x2048. The scores compared are the
course's MSP (``1 - max softmax``) and MaxLogit; other formulas (entropy) are not the course's to
fix and round differently in float32.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.evaluate import OutputCache, evaluate_anomaly, evaluate_miou
from anomalyseg.models.erfnet import ERFNet, ErfnetSegmenter, load_erfnet
from anomalyseg.protocol import PROTOCOLS, block_labels, block_scores, get_protocol

SIZE = (128, 256)  # the evaluation size (H, W); the course's scripts hard-code 512x1024
SCORES = ("msp", "max_logit")
TOL = 1e-6


# ----------------------------------------------------------------------- the course, re-implemented
def ood_metrics_fpr_at_95_tpr(preds, labels) -> float:
    """``ood_metrics.fpr_at_95_tpr`` as the package defines it."""
    fpr, tpr, _ = roc_curve(labels, preds)
    if all(tpr < 0.95):
        return 0.0
    if all(tpr >= 0.95):
        return float(min(fpr[i] for i, x in enumerate(tpr) if x >= 0.95))
    return float(np.interp(0.95, tpr, fpr))


def smiyc_fpr_at_95_tpr(preds, labels) -> float:
    """SMIYC: the FPR at the first (highest) threshold where the TPR reaches 0.95."""
    fpr, tpr, _ = roc_curve(labels, preds, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


def course_scores(logits: torch.Tensor) -> dict[str, np.ndarray]:
    """The course's scores from ERFNet's logits ``[20, H, W]`` (the 19 classes), in float32
    torch."""
    z = logits[:19]
    p = torch.softmax(z, dim=0)
    return {"msp": (1.0 - p.max(0).values).numpy(), "max_logit": (-z.max(0).values).numpy()}


def course_forward(model, path: str, size=SIZE) -> torch.Tensor:
    """evalAnomaly.py's input: PIL open -> RGB -> Resize(size, BILINEAR) on the PIL image ->
    ToTensor."""
    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        return model(x)[0]


def course_mask(path: str, size=SIZE) -> np.ndarray | None:
    gt_path = path.replace("images", "labels_masks")
    gt_path = os.path.splitext(gt_path)[0] + ".png"
    mask = Image.open(gt_path)
    if size is not None:
        mask = mask.resize((size[1], size[0]), Image.NEAREST)
    ood = np.array(mask)
    if "RoadAnomaly" in gt_path:
        ood = np.where(ood == 2, 1, ood)
    return ood


def course_eval_anomaly(
    model, folder, variant: str = "course", logits_cache: dict | None = None
) -> dict[str, dict]:
    """evalAnomaly.py on one benchmark folder, for each score: ``{score: {auprc, fpr, frames}}``.

    ``variant`` adds the documented alternatives: ``smiyc`` (FPR95), ``blocks2x2`` (mean score /
    max label per 2x2 block, seed 000), ``full_resolution`` (logits resized bilinearly to the frame,
    mask as stored), ``per_image`` (mean of per-frame metrics)."""
    logits_cache = {} if logits_cache is None else logits_cache
    kept: dict[str, list] = {s: [] for s in SCORES}
    labels: list[np.ndarray] = []
    for path in sorted(glob.glob(os.path.join(str(folder), "images", "*.*"))):
        full = variant == "full_resolution"
        ood = course_mask(path, None if full else SIZE)
        if variant == "blocks2x2":
            h, w = ood.shape
            ood = ood.reshape(h // 2, 2, w // 2, 2).max(axis=(1, 3))
        if 1 not in np.unique(ood):
            continue
        if path not in logits_cache:
            logits_cache[path] = course_forward(model, path)
        logits = logits_cache[path]
        if full:
            logits = F.interpolate(
                logits[None], size=ood.shape, mode="bilinear", align_corners=False
            )[0]
        for s, m in course_scores(logits).items():
            if (
                variant == "blocks2x2"
            ):  # the mean of the block's 4 float32 scores, summed row by row
                m = (m[0::2, 0::2] + m[0::2, 1::2] + m[1::2, 0::2] + m[1::2, 1::2]) / np.float32(4)
            kept[s].append(m)
        labels.append(ood)
    out = {}
    for s in SCORES:
        if variant == "per_image":
            per = [_pooled(m[None], g[None], "course") for m, g in zip(kept[s], labels)]
            out[s] = dict(
                auprc=np.mean([p["auprc"] for p in per]),
                fpr=np.mean([p["fpr"] for p in per]),
                frames=len(per),
            )
        else:
            gts = np.concatenate([g.ravel() for g in labels])
            scores = np.concatenate([m.ravel() for m in kept[s]])
            out[s] = dict(_pooled(scores, gts, variant), frames=len(labels))
    return out


def _pooled(scores, gts, variant):
    ood_out, ind_out = scores[gts == 1], scores[gts == 0]
    val_out = np.concatenate((ind_out, ood_out))
    val_label = np.concatenate((np.zeros(len(ind_out)), np.ones(len(ood_out))))
    fpr = smiyc_fpr_at_95_tpr if variant == "smiyc" else ood_metrics_fpr_at_95_tpr
    return dict(
        auprc=average_precision_score(val_label, val_out),
        fpr=fpr(val_out, val_label),
        auroc=roc_auc_score(val_label, val_out),
    )


class IouEval:
    """The course's iouEval(nClasses=20, ignoreIndex=19), one-hot form."""

    def __init__(self, n_classes=20, ignore_index=19):
        self.n, self.ignore = n_classes, ignore_index
        self.tp = torch.zeros(n_classes - 1, dtype=torch.float64)
        self.fp, self.fn = self.tp.clone(), self.tp.clone()

    def add_batch(self, x, y):  # x: preds [B, 1, H, W], y: targets [B, 1, H, W]
        x_onehot = torch.zeros(x.size(0), self.n, x.size(2), x.size(3)).scatter_(1, x, 1)
        y_onehot = torch.zeros(y.size(0), self.n, y.size(2), y.size(3)).scatter_(1, y, 1)
        ignores = y_onehot[:, self.ignore].unsqueeze(1)
        x_onehot, y_onehot = x_onehot[:, : self.ignore], y_onehot[:, : self.ignore]
        self.tp += (x_onehot * y_onehot).sum(dim=(0, 2, 3)).double()
        self.fp += (x_onehot * (1 - y_onehot - ignores)).sum(dim=(0, 2, 3)).double()
        self.fn += ((1 - x_onehot) * y_onehot).sum(dim=(0, 2, 3)).double()

    def get_iou(self):
        iou = self.tp / (self.tp + self.fp + self.fn + 1e-15)
        return float(iou.mean()), iou


def course_eval_iou(model, root) -> float:
    """eval_iou.py: Resize(512) bilinear / nearest (short side to 512; here to ``SIZE[0]``),
    Relabel(255, 19), the argmax of the 20 channels, iouEval."""
    ev = IouEval()
    for img_path in sorted(
        glob.glob(os.path.join(str(root), "leftImg8bit", "val", "*", "*_leftImg8bit.png"))
    ):
        lab_path = img_path.replace("leftImg8bit", "gtFine", 1).replace(
            "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
        )
        img = Image.open(img_path).convert("RGB")
        w, h = img.size
        short = SIZE[0]
        new = (int(short * w / h), short) if w >= h else (short, int(short * h / w))
        x = (
            torch.from_numpy(np.array(img.resize(new, Image.BILINEAR)))
            .permute(2, 0, 1)
            .float()
            .div(255)[None]
        )
        label = torch.from_numpy(
            np.array(Image.open(lab_path).convert("P").resize(new, Image.NEAREST))
        ).long()
        label[label == 255] = 19
        with torch.no_grad():
            out = model(x)
        ev.add_batch(out.max(1)[1].unsqueeze(1), label[None, None])
    return ev.get_iou()[0]


# --------------------------------------------------------------- generated data in the real formats
def _image(rng, h, w) -> np.ndarray:
    """A smooth random RGB frame (noise upsampled, plus fine noise), uint8 [h, w, 3]."""
    coarse = rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
    img = np.array(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.int16)
    return np.clip(img + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def _write(folder, stem, image, mask, ext):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels_masks").mkdir(parents=True, exist_ok=True)
    kw = {"quality": 90} if ext in ("jpg", "webp") else {}
    Image.fromarray(image).save(folder / "images" / f"{stem}.{ext}", **kw)
    Image.fromarray(mask.astype(np.uint8)).save(folder / "labels_masks" / f"{stem}.png")


def _mask(h, w, anomaly, rects=(), void=(), base=0):
    m = np.full((h, w), base, np.uint8)
    for y0, y1, x0, x1 in void:
        m[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = 255
    for y0, y1, x0, x1 in rects:
        m[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = anomaly
    return m


def make_benchmarks(root, seed=0):
    """The five course folders with their formats and label conventions, and the edge cases:
    Road Anomaly 0/2 with a frame whose single anomaly pixel vanishes at 512x1024 (PIL nearest
    samples odd rows and columns of a 1024x2048 frame) and a frame without anomaly; 255 void
    bands; 1024x2048 and other frame sizes; webp frames of RoadObsticle21 whose off-road is void."""
    rng = np.random.default_rng(seed)
    R = root / "Validation_Dataset"
    ra = R / "RoadAnomaly"
    _write(ra, "0", _image(rng, 270, 480), _mask(270, 480, 2, [(0.5, 0.7, 0.4, 0.55)]), "jpg")
    vanish = np.zeros((512, 1024), np.uint8)
    vanish[300, 500] = (
        2  # PIL's nearest samples rows and columns 4k + 2 of a 512x1024 frame at 128x256
    )
    _write(ra, "1", _image(rng, 512, 1024), vanish, "jpg")
    _write(ra, "2", _image(rng, 300, 400), np.zeros((300, 400), np.uint8), "jpg")  # no anomaly
    _write(
        ra,
        "3",
        _image(rng, 1024, 2048),
        _mask(1024, 2048, 2, [(0.55, 0.62, 0.3, 0.34), (0.6, 0.8, 0.7, 0.72)]),
        "jpg",
    )
    for name, ext, sizes in (
        ("RoadAnomaly21", "png", [(270, 480), (180, 320)]),
        ("RoadObsticle21", "webp", [(270, 480), (180, 320)]),
        ("FS_LostFound_full", "png", [(1024, 2048)]),
        ("fs_static", "jpg", [(512, 1024), (1024, 2048)]),
    ):
        for i, (h, w) in enumerate(sizes):
            if (
                name == "RoadObsticle21"
            ):  # road 0 in the lower half, off-road void, a small obstacle
                m = _mask(h, w, 1, [(0.7, 0.74, 0.45, 0.48)], void=[(0.0, 0.55, 0.0, 1.0)])
            else:
                m = _mask(
                    h,
                    w,
                    1,
                    [(0.45 + 0.1 * i, 0.6 + 0.1 * i, 0.2, 0.3 + 0.05 * i)],
                    void=[(0.9, 1.0, 0.0, 1.0)],
                )
            if (
                name == "fs_static" and i == 1
            ):  # 2 anomaly pixels at 128x256 whose 2x2 block touches void
                m = np.zeros((h, w), np.uint8)
                m[484, [804, 812]] = (
                    1  # rows / columns 8k + 4 survive the resize: (60, 100), (60, 101)
                )
                m[492, [804, 812]] = 255  # (61, 100), (61, 101)
                m[300:340, 600:660] = 1
            _write(R / name, str(i), _image(rng, h, w), m, ext)
    return R


def make_cityscapes(root, seed=1):
    rng = np.random.default_rng(seed)
    for i in range(2):  # 256x512: eval_iou's Resize(short side) to 128 gives SIZE
        img_dir, lab_dir = root / "leftImg8bit" / "val" / "city", root / "gtFine" / "val" / "city"
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(rng, 256, 512)).save(
            img_dir / f"city_{i:06d}_000019_leftImg8bit.png"
        )
        lab = np.array(
            Image.fromarray(rng.integers(0, 19, (16, 32)).astype(np.uint8)).resize(
                (512, 256), Image.NEAREST
            )
        )
        lab[:25] = 255
        Image.fromarray(lab).save(lab_dir / f"city_{i:06d}_000019_gtFine_labelTrainIds.png")
    return root


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def course_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    torch.manual_seed(0)
    model = ERFNet(20).eval()
    with torch.no_grad():  # a void channel that wins a share of pixels, as a trained model's may
        model.decoder.output_conv.bias[19] += 0.35
    ckpt = root / "erfnet_pretrained.pth"
    torch.save(
        {f"module.{k}": v for k, v in model.state_dict().items()}, ckpt
    )  # DataParallel format
    bench_root = make_benchmarks(root)
    city = make_cityscapes(root / "cityscapes")
    seg = ErfnetSegmenter(load_erfnet(ckpt), checkpoint=str(ckpt), input_size=SIZE)
    return dict(
        root=root,
        model=model,
        ckpt=ckpt,
        bench_root=bench_root,
        city=city,
        seg=seg,
        cache=OutputCache(),
        ref_logits={},
    )


ALTERNATIVES = (
    "RoadAnomaly",
    "RoadObsticle21",
    "fs_static",
)  # jpg 0/2, webp with void off-road, blocks with void
EVALUATED = {
    "course": None,
    "smiyc": ALTERNATIVES,
    "blocks2x2": ALTERNATIVES,
    "per_image": ALTERNATIVES,
    "full_resolution": ("RoadObsticle21",),
    "legacy": ("RoadAnomaly",),
}  # None: all five


@pytest.fixture(scope="module")
def product_rows(course_setup):
    """The package's rows under each protocol (one output cache: course-like protocols share
    forwards)."""
    s = course_setup
    return {
        name: evaluate_anomaly(
            s["seg"],
            load_benchmarks(s["bench_root"], names),
            scores=SCORES,
            results_path=None,
            cache=s["cache"],
            progress=False,
            protocol=name,
            maps_frames=0,
        )
        for name, names in EVALUATED.items()
    }


def _check(rows, ref, dataset, with_fpr=True):
    for score in SCORES:
        row = rows[(rows.dataset == dataset) & (rows.score == score)].iloc[0]
        assert row.frames_used == ref[score]["frames"], (dataset, score)
        assert row.auprc == pytest.approx(ref[score]["auprc"], abs=TOL), (dataset, score)
        if with_fpr:
            assert row.fpr_at_95_tpr == pytest.approx(ref[score]["fpr"], abs=TOL), (dataset, score)


# ----------------------------------------------------------------------------- tests
BENCHES = ("RoadAnomaly", "RoadAnomaly21", "RoadObsticle21", "FS_LostFound_full", "fs_static")


@pytest.mark.parametrize("dataset", BENCHES)
def test_course_protocol_equals_evalAnomaly(course_setup, product_rows, dataset):
    s = course_setup
    ref = course_eval_anomaly(s["model"], s["bench_root"] / dataset, "course", s["ref_logits"])
    rows = product_rows["course"]
    assert (rows.protocol == "course").all() and (rows.fpr_convention == "course").all()
    _check(rows, ref, dataset)
    total = len(os.listdir(s["bench_root"] / dataset / "images"))
    assert (rows[rows.dataset == dataset].frames_skipped == total - ref["msp"]["frames"]).all()


def test_the_vanishing_anomaly_frame_is_skipped_only_after_the_resize(course_setup, product_rows):
    """Road Anomaly frame 1: one anomaly pixel at full resolution, none at the evaluation size. The
    course drops it (2 frames used, 2 skipped with frame 2, which has no anomaly at all); the legacy
    rule kept it, as inlier pixels only."""
    s = course_setup
    assert (course_mask(str(s["bench_root"] / "RoadAnomaly" / "images" / "1.jpg")) == 1).sum() == 0
    course = product_rows["course"].query("dataset == 'RoadAnomaly' and score == 'msp'").iloc[0]
    legacy = product_rows["legacy"].query("dataset == 'RoadAnomaly' and score == 'msp'").iloc[0]
    assert (course.frames_used, course.frames_skipped) == (2, 2)
    assert (legacy.frames_used, legacy.frames_skipped) == (3, 1)
    assert legacy.auprc != pytest.approx(course.auprc, abs=1e-4)


@pytest.mark.parametrize("variant", ["smiyc", "blocks2x2", "full_resolution", "per_image"])
def test_named_alternatives_equal_their_reference(course_setup, product_rows, variant):
    s = course_setup
    rows = product_rows[variant]
    assert (rows.protocol == variant).all()
    for dataset in EVALUATED[variant]:
        ref = course_eval_anomaly(s["model"], s["bench_root"] / dataset, variant, s["ref_logits"])
        _check(rows, ref, dataset)
    if variant == "blocks2x2":  # fs_static frame 1's 2-pixel anomaly shares its blocks with void
        assert rows.query("dataset == 'fs_static'").eval_size.iloc[0] == "64x128"
        label = course_mask(str(s["bench_root"] / "fs_static" / "images" / "1.jpg"))
        assert (
            label[60, 100] == label[60, 101] == 1 and label[61, 100] == 255
        )  # fs_static 1 is 1024x2048
        assert block_labels(torch.from_numpy(label))[30, 50] == 255


def test_block_scoring_by_hand():
    """2x2 blocks: mean score, max label (0 < 1 < 255): a block touching void is void."""
    scores = torch.tensor(
        [
            [0.0, 1.0, 2.0, 2.0, 9.0],
            [2.0, 1.0, 2.0, 2.0, 9.0],
            [4.0, 4.0, 0.5, 0.5, 9.0],
            [4.0, 0.0, 0.5, 0.5, 9.0],
        ]
    )
    labels = torch.tensor(
        [[0, 0, 1, 0, 1], [0, 1, 0, 255, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]], dtype=torch.uint8
    )
    assert block_scores(scores).tolist() == [
        [1.0, 2.0],
        [3.0, 0.5],
    ]  # the odd last column is dropped
    assert block_labels(labels).tolist() == [[1, 255], [0, 0]]


def test_miou_course_equals_iouEval_with_a_winning_void_channel(course_setup):
    s = course_setup
    val = CityscapesSegmentation(s["city"], "val")
    ref = course_eval_iou(s["model"], s["city"])
    course, _ = evaluate_miou(s["seg"], val, results_path=None, cache=s["cache"], progress=False)
    legacy, _ = evaluate_miou(
        s["seg"], val, results_path=None, cache=s["cache"], progress=False, protocol="legacy"
    )
    assert course.miou.iloc[0] == pytest.approx(ref, abs=TOL)
    assert course.protocol.iloc[0] == "course" and legacy.protocol.iloc[0] == "legacy"
    # the void channel wins a real share of pixels, so the 19-channel argmax reads more hits
    with torch.no_grad():
        x = torch.rand(1, 3, *SIZE)
        share = (s["model"](x).argmax(1) == 19).float().mean().item()
    assert share > 0.02
    assert legacy.miou.iloc[0] > course.miou.iloc[0] + 1e-4
    assert s["seg"].use_void is False  # the protocol's setting did not leak out of the evaluation


def test_protocol_registry_names_every_convention():
    assert get_protocol(None).name == "course"
    assert set(PROTOCOLS) >= {
        "course",
        "smiyc",
        "blocks2x2",
        "full_resolution",
        "per_image",
        "legacy",
    }
    course, legacy = PROTOCOLS["course"], PROTOCOLS["legacy"]
    assert set(course.differences(legacy)) == {
        "input_resize",
        "skip_after_resize",
        "miou_void_channel",
        "logits_dtype",
        "msp_form",
    }
    with pytest.raises(ValueError, match="named ones"):
        get_protocol("courses")


def test_per_image_means_by_hand():
    """Frame A: anomaly 0.9 above inlier 0.1 (AP 1, FPR95 0). Frame B: inlier 0.8 above anomaly
    0.2 above inlier 0.1 (AP 1/2; the ROC runs (0, 0) -> (1/2, 0) -> (1/2, 1) -> (1, 1), so the
    ood-metrics FPR95 interpolates 1/2). Means: AP 0.75, FPR95 0.25."""
    from anomalyseg.metrics import PerImageAccumulator

    acc = PerImageAccumulator()
    acc.update(torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 0]], dtype=torch.uint8))
    acc.update(
        torch.tensor([[0.2, 0.8, 0.1, 5.0]]), torch.tensor([[1, 0, 0, 255]], dtype=torch.uint8)
    )
    m = acc.compute()
    assert (m["auprc"], m["fpr_at_95_tpr"], acc.num_frames) == (0.75, 0.25, 2)
    assert (
        acc.compute("smiyc")["fpr_at_95_tpr"] == 0.25
    )  # B's first threshold reaching TPR 1: FPR 1/2


def test_cli_eval_and_compare_conventions_give_the_evaluation_rows(
    course_setup, product_rows, tmp_path, capsys
):
    """``anomalyseg eval`` on the course checkpoint file gives the rows of ``evaluate_anomaly`` (the
    notebooks' call) to the last digit, under the default (course) and a named protocol, and
    ``compare-conventions`` sets them side by side."""
    from anomalyseg import cli
    from anomalyseg.report.tables import conventions_table
    from anomalyseg.results import read_results

    s = course_setup
    common = [
        "--model",
        "erfnet",
        "--checkpoint",
        str(s["ckpt"]),
        "--benchmarks-root",
        str(s["bench_root"]),
        "--benchmarks",
        "RoadAnomaly",
        "--input-size",
        *map(str, SIZE),
        "--scores",
        *SCORES,
        "--workers",
        "0",
    ]
    cli.main(["eval", *common, "--results", str(tmp_path / "eval.csv")])
    out = capsys.readouterr().out
    assert "protocol `course`" in out
    cli.main(
        [
            "compare-conventions",
            *common,
            "--protocols",
            "course",
            "legacy",
            "--results",
            str(tmp_path / "cmp.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert (
        "| course | legacy |" in out and "| input_resize | pil | tensor |" in out
    )  # both tables printed
    ev, cmp = read_results(tmp_path / "eval.csv"), read_results(tmp_path / "cmp.csv")
    for protocol, rows in (
        ("course", ev),
        ("course", cmp[cmp.protocol == "course"]),
        ("legacy", cmp[cmp.protocol == "legacy"]),
    ):
        ref = product_rows[protocol].query("dataset == 'RoadAnomaly'")
        assert len(rows) == len(ref) == len(SCORES) and (rows.protocol == protocol).all()
        for score in SCORES:
            got, want = rows[rows.score == score].iloc[0], ref[ref.score == score].iloc[0]
            assert (got.auprc, got.fpr_at_95_tpr, got.frames_used) == (
                want.auprc,
                want.fpr_at_95_tpr,
                want.frames_used,
            )
    table = conventions_table(cmp, "erfnet")
    assert list(table.columns) == ["course", "legacy"]
    msp = cmp[(cmp.score == "msp")].set_index("protocol")
    assert (
        table.loc[("Road Anomaly", "MSP"), "legacy"]
        == f"{100 * msp.auprc['legacy']:.2f} / {100 * msp.fpr_at_95_tpr['legacy']:.2f}"
    )


def test_compare_conventions_cli_with_an_eomt_folder(course_setup, tmp_path, capsys):
    """``compare-conventions --model eomt`` on a ``save_pretrained`` folder: rows under each
    protocol
    asked for, the same frames used where only the resize differs (EoMT scores at the frame
    size)."""
    from anomalyseg import cli
    from anomalyseg.models.eomt import build_eomt
    from anomalyseg.results import read_results
    from helpers import tiny_eomt_config

    torch.manual_seed(0)
    folder = tmp_path / "eomt"
    build_eomt(tiny_eomt_config()).save_pretrained(folder)
    window = tiny_eomt_config().image_size
    cli.main(
        [
            "compare-conventions",
            "--model",
            "eomt",
            "--checkpoint",
            str(folder),
            "--window-size",
            str(window),
            "--benchmarks-root",
            str(course_setup["bench_root"]),
            "--benchmarks",
            "RoadAnomaly21",
            "--protocols",
            "course",
            "smiyc",
            "legacy",
            "--results",
            str(tmp_path / "r.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert "| course | smiyc | legacy |" in out
    rows = read_results(tmp_path / "r.csv")
    assert sorted(set(rows.protocol)) == ["course", "legacy", "smiyc"] and set(rows.model) == {
        "eomt"
    }
    by = rows[rows.score == "msp"].set_index("protocol")
    assert (
        by.auprc["course"] == by.auprc["smiyc"]
    )  # the same scores; only the FPR95 reading differs
    assert by.eval_size["course"] == by.eval_size["legacy"] == "270x480"
