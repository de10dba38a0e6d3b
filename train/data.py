"""Training data: photos from the allowed sources, a fixed train/validation split, patches.

Sources (nothing else is read; none of these images is committed):

- scikit-image's bundled photographs (``skimage/data``): the photos only, not the
  synthetic images (no chessboard, color wheel, logo, phantom, horse silhouette, ...);
- scikit-learn's bundled photos (``sklearn/datasets/images``: china, flower);
- Debian ``mate-backgrounds`` (/usr/share/backgrounds/mate/*/*) and
  ``plasma-workspace-wallpapers`` (/usr/share/wallpapers/*/contents/images/, the largest
  file of each wallpaper); install them with ``train/get_data.sh``.

Validation split (fixed, by name, never trained on): ``VALIDATION`` below. Validation
images are center-cropped to at most ``VAL_CROP`` pixels a side for the table in
docs/models.md (``validate.py``); training validates on smaller crops (``Config.val_crop``).

Training samples: HR crops of ``CROP`` x ``CROP`` pixels cut once per image at fixed
(seeded) random positions, each RGB channel a separate plane (the model upscales planes),
LR by MATLAB-compatible bicubic downscaling of the crop (``iqlut_gpu.evaluate.imresize``);
then random LR patches with their HR patches, flips and 90-degree rotations (which
commute with the bicubic downscale exactly).
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..evaluate import imresize
from ..planes import to_planes

SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
                  "ihc.png", "moon.png", "motorcycle_left.png", "page.png", "retina.jpg",
                  "rocket.jpg", "text.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MATE_DIR = "/usr/share/backgrounds/mate"
PLASMA_DIR = "/usr/share/wallpapers"

# Held out for validation: never cut into training crops.
VALIDATION = ("skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/rocket",
              "skimage/camera", "sklearn/flower", "mate/LadyBird", "mate/Dune",
              "plasma/Path", "plasma/Kite", "plasma/MilkyWay")
VAL_CROP = 384
CROP = 240  # divisible by 2, 3 and 4
CROPS_PER_MPIX = 8
MAX_CROPS = 48
DATA_SEED = 20260401


def _name_size(path: str) -> int:
    stem = Path(path).stem
    try:
        w, h = stem.split("x")
        return int(w) * int(h)
    except ValueError:
        return 0


def sources() -> dict[str, str]:
    """Every usable image as ``{name: path}`` (name = ``source/stem``), sorted by name."""
    import skimage
    import sklearn

    out = {}
    sk = Path(skimage.__file__).parent / "data"
    for f in SKIMAGE_PHOTOS:
        if (sk / f).exists():
            out[f"skimage/{Path(f).stem}"] = str(sk / f)
    sl = Path(sklearn.__file__).parent / "datasets" / "images"
    for f in SKLEARN_PHOTOS:
        if (sl / f).exists():
            out[f"sklearn/{Path(f).stem}"] = str(sl / f)
    for f in sorted(glob.glob(f"{MATE_DIR}/*/*")):
        stem = Path(f).stem
        if "_" in stem and stem.split("_")[-1][:1].isdigit():  # Elephants_3840x2160: a duplicate
            continue
        if Path(f).suffix.lower() in (".jpg", ".jpeg", ".png"):
            out[f"mate/{stem}"] = f
    for d in sorted(glob.glob(f"{PLASMA_DIR}/*/contents/images")):
        files = [f for f in glob.glob(f"{d}/*") if Path(f).suffix.lower() in (".jpg", ".jpeg", ".png")]
        if files:
            out[f"plasma/{Path(d).parent.parent.name}"] = max(files, key=_name_size)
    return dict(sorted(out.items()))


def read_rgb(path: str) -> np.ndarray:
    """uint8 HxWx3 (RGB) or HxW (gray); alpha dropped."""
    import imageio.v3 as iio

    img = np.asarray(iio.imread(path))
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) * 255.0 / max(1.0, float(img.max()))).round().astype(np.uint8)
    if img.ndim == 3:
        if img.shape[2] in (2, 4):
            img = img[..., :-1]
        if img.shape[2] == 1:
            img = img[..., 0]
    return img


def split() -> tuple[dict[str, str], dict[str, str]]:
    """(train, validation) as ``{name: path}``."""
    src = sources()
    val = {k: v for k, v in src.items() if k in VALIDATION}
    train = {k: v for k, v in src.items() if k not in VALIDATION}
    return train, val


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[y:y + ch, x:x + cw]


def validation_images(crop: int = VAL_CROP, limit: int = 0) -> dict[str, np.ndarray]:
    """The validation split's images (uint8, RGB or gray), center-cropped to ``crop``;
    ``limit``: only the first N (by name)."""
    _, val = split()
    items = sorted(val.items())[:limit] if limit else sorted(val.items())
    return {k: center_crop(read_rgb(p), crop) for k, p in items}


def training_items(limit: int | None = None, names=None) -> list[tuple[str, str]]:
    """The training split as sorted ``(name, path)`` pairs; ``names`` picks some by name,
    ``limit`` keeps the first N (tests)."""
    train, _ = split()
    items = sorted(train.items())
    if names:
        missing = set(names) - set(train)
        if missing:
            raise RuntimeError(f"not training images: {sorted(missing)}")
        items = [(k, v) for k, v in items if k in names]
    if limit:
        items = items[:limit]
    if not items:
        raise RuntimeError("no training images found (run train/get_data.sh, and install "
                           "scikit-image / scikit-learn)")
    return items


def build_bank(scale: int, cache_dir: str | None = None, limit: int | None = None,
               log=print, names=None) -> tuple[np.ndarray, np.ndarray]:
    """The bank of the training split (``training_items``): see ``bank_of``."""
    return bank_of(training_items(limit, names), scale, cache_dir, log)


def cut_crops(img: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """``CROP`` x ``CROP`` HR crops of one image at random positions, more for a larger
    image (``CROPS_PER_MPIX``, 2 to ``MAX_CROPS``); none from an image smaller than a crop."""
    h, w = img.shape[:2]
    if h < CROP or w < CROP:
        return []
    n = int(np.clip(round(h * w / 1e6 * CROPS_PER_MPIX), 2, MAX_CROPS))
    ys = rng.integers(0, h - CROP + 1, n)
    xs = rng.integers(0, w - CROP + 1, n)
    return [img[y:y + CROP, x:x + CROP] for y, x in zip(ys, xs)]


def bank_of(items: list[tuple[str, str]], scale: int, cache_dir: str | None = None,
            log=print) -> tuple[np.ndarray, np.ndarray]:
    """HR crops of the images ``items`` (``(name, path)`` pairs, in this order) and their
    LR: uint8 [M, CROP, CROP] and [M, CROP/r, CROP/r], one plane per RGB channel.

    The crops (``cut_crops``) come from one random stream seeded with ``DATA_SEED``, so
    the bank depends on the list. Cached as an .npz in ``cache_dir`` (default
    $IQLUT_DATA_CACHE or /tmp/iqlut_data), keyed by scale, the names and the constants above.
    """
    key = hashlib.sha1(repr((scale, CROP, CROPS_PER_MPIX, MAX_CROPS, DATA_SEED,
                             [k for k, _ in items])).encode()).hexdigest()[:12]
    cache_dir = cache_dir or os.environ.get("IQLUT_DATA_CACHE", "/tmp/iqlut_data")
    cache = Path(cache_dir) / f"bank_x{scale}_{key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["hr"], z["lr"]
    rng = np.random.default_rng(DATA_SEED)
    hrs, lrs = [], []
    for name, path in items:
        crops = cut_crops(read_rgb(path), rng)
        for c in crops:
            lr = imresize(c, 1.0 / scale)
            hrs.extend(to_planes(c)[0])
            lrs.extend(to_planes(lr)[0])
        log(f"  {name}: {len(crops)} crops" if crops else f"  {name}: smaller than {CROP} px, skipped")
    if not hrs:
        raise RuntimeError(f"no training image is at least {CROP}x{CROP} pixels")
    hr, lr = np.stack(hrs), np.stack(lrs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name of this process's own: two runs building the same bank at once
    # (e.g. an IQ-LUT and an ECNN run started together) each write theirs and rename it
    # over the other's (same contents); a shared temporary name made the second rename fail
    fd, tmp = tempfile.mkstemp(prefix=f".{cache.stem}.", suffix=".tmp.npz", dir=cache.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, hr=hr, lr=lr)
        os.replace(tmp, cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hr, lr


def dihedral(lp: np.ndarray, hp: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Transform ``t`` (0..7) of the dihedral group on an LR/HR pair, applied to both alike:
    bit 0 mirrors x, bit 1 mirrors y, bit 2 transposes (in that order)."""
    if t & 1:
        lp, hp = lp[:, ::-1], hp[:, ::-1]
    if t & 2:
        lp, hp = lp[::-1], hp[::-1]
    if t & 4:
        lp, hp = lp.T, hp.T
    return lp, hp


def sample_batch(rng: np.random.Generator, hr: np.ndarray, lr: np.ndarray, scale: int,
                 batch: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Random LR patches [B, patch, patch] with their HR [B, r*patch, r*patch] (uint8),
    each with a random flip / 90-degree rotation (one of the 8 dihedral transforms)."""
    M, h, w = lr.shape
    patch = min(patch, h, w)
    idx = rng.integers(0, M, batch)
    ys = rng.integers(0, h - patch + 1, batch)
    xs = rng.integers(0, w - patch + 1, batch)
    lo = np.empty((batch, patch, patch), np.uint8)
    hi = np.empty((batch, patch * scale, patch * scale), np.uint8)
    for b in range(batch):
        lp = lr[idx[b], ys[b]:ys[b] + patch, xs[b]:xs[b] + patch]
        hp = hr[idx[b], ys[b] * scale:(ys[b] + patch) * scale, xs[b] * scale:(xs[b] + patch) * scale]
        lo[b], hi[b] = dihedral(lp, hp, int(rng.integers(0, 8)))
    return lo, hi
