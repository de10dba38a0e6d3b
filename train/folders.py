"""Your own training images (``iqlut train --data DIR...``): finding them, the validation
hold-out, the per-image cache of decoded HR and MATLAB-bicubic LR, and patch sampling.
No torch here.

**Finding images** (``find_images``): each ``--data`` argument is a folder, searched with
its subfolders (symbolic links followed, each real folder once), or an image file. Image
files are those with an image suffix (``iqlut_gpu.io.IMAGE_SUFFIXES``: PNG, JPEG, BMP,
TIFF, WebP, ...); other files and hidden files and folders (``.name``) are passed over.
Folders named as the LR folders of the SR packs are (``LR_bicubic``, ``X2``, ``LRbicx4``,
``DIV2K_train_LR_bicubic``, ...; ``iqlut_gpu.datasets``): training makes its LR from the
HR, so a DIV2K folder can be given whole or as ``DIV2K_train_HR``. An image's name is
``<folder name>/<path in it>``; they are in natural order of that (``img_2`` before
``img_10``), argument by argument.
The same file reached twice (two arguments, links) is used once.

**Checks** (``usable``): each file's header is read first (no decoding). A file that is
no image or cannot be read is skipped with a warning line naming it (a large folder with
one bad file still trains; the warning says which file); an image smaller than one
training patch (``patch * scale`` HR pixels a side) is skipped with a note. If nothing
is left, or an argument holds no image at all, it is an error (``DataError``, one line).
A file that passes the header check but then fails to decode is skipped with a warning too.

**Hold-out** (``holdout``): ``HOLDOUT_FRACTION`` of the usable images (at least 1, at most
``HOLDOUT_MAX``) are validation images, never trained on: those first in the order of
``sha1("<HOLDOUT_SEED>:<name>")``, so the choice depends only on the names (not on
``--seed``, not on the order of arguments) and adding images moves few others. With
``--val DIR`` nothing is held out (files of ``--val`` that are also in ``--data`` are
left out of training).

**Cache** (``prepare``): per image, in ``<cache>/images/<P>/`` with ``P`` the first 16
hex digits of the sha1 of the file's real path: ``<K>.hr.npy`` (the decoded image, uint8
``[C, H, W]``, alpha dropped; C = 1 or 3) and ``<K>.x<r>.npy`` (its LR at scale r: MATLAB
bicubic, ``iqlut_gpu.evaluate.imresize``, of the HR cropped at the bottom and right to a
multiple of r, as the evaluation makes LR), where ``K`` hashes (real path, size in bytes,
modification time in ns). A changed file has another ``K``: it is decoded and downscaled
again and its old entry removed. ``<cache>`` is ``--cache-dir``, else $IQLUT_DATA_CACHE,
else /tmp/iqlut_data; it takes about the decoded size of the images (DIV2K's 800 training
images: 6.6 GB) plus 1/r^2 of that per scale. Entries are written atomically (a temporary
name, then a rename), so two runs preparing the same folder at once both succeed.

**Sampling** (``ImageSource.sample``): the arrays are read memory-mapped (the page cache
holds what is used; nothing is decoded during training); each patch picks an image with
probability proportional to its number of patch positions (planes x positions: every LR
pixel about equally likely), a plane, a position, and one of the eight flips / 90-degree
rotations (``data.dihedral``), from the random generator it is given.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import _looks_lr, image_size, natural_key
from ..evaluate import _resize_axis
from ..io import IMAGE_SUFFIXES, ImageError, read_image
from .data import DATA_SEED, dihedral

HOLDOUT_FRACTION = 0.1
HOLDOUT_MAX = 16
HOLDOUT_SEED = DATA_SEED
STRIP_BYTES = 64 << 20  # imresize's float64 temporaries are cut into strips of about this
PARALLEL_AT = 4  # images to make before preparing them in several threads


class DataError(ValueError):
    """A training or validation folder gives nothing to use; one line says why."""


@dataclass(frozen=True)
class ImageFile:
    name: str  # "<folder name>/<path in it>", or the file name for a file argument
    path: Path


# ----------------------------------------------------------------------------- finding


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _walk(top: Path, notes: list) -> list[ImageFile]:
    """Image files under ``top`` in natural order (each real folder once)."""
    found, seen = [], set()
    label = top.name or Path(os.path.abspath(top)).name

    def visit(folder: Path, rel: str):
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: (natural_key(e.name), e.name))
        except OSError as e:
            notes.append(f"warning: {folder}: cannot list ({e.strerror or e}); skipped")
            return
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                continue
            if is_dir:
                subdirs.append(e)
            elif _is_image_name(e.name):
                found.append(ImageFile(f"{label}/{rel}{e.name}", Path(e.path)))
        for e in subdirs:
            if _looks_lr(e.name):
                notes.append(f"note: {e.path}: an LR folder, not read (the LR is made from "
                             "the HR images)")
                continue
            visit(Path(e.path), f"{rel}{e.name}/")

    visit(top, "")
    return sorted(found, key=lambda f: (natural_key(f.name), f.name))


def find_images(inputs, what: str = "--data") -> tuple[list[ImageFile], list[str]]:
    """The image files of ``inputs`` (folders, searched with their subfolders, or image
    files), and notes for people. Raises DataError: an argument that does not exist, is no
    image file, or holds no image."""
    files, notes, seen = [], [], set()
    for arg in inputs:
        p = Path(arg)
        if not p.exists():
            raise DataError(f"{what} {arg}: no such folder or file")
        if p.is_dir():
            got = _walk(p, notes)
            if not got:
                raise DataError(f"{what} {arg}: no images (looked for "
                                f"{', '.join(IMAGE_SUFFIXES[:4])}, ... in it and its subfolders)")
        elif _is_image_name(p.name):
            got = [ImageFile(p.name, p)]
        else:
            raise DataError(f"{what} {arg}: not a folder or an image file")
        for f in got:
            real = os.path.realpath(f.path)
            if real not in seen:
                seen.add(real)
                files.append(f)
    return files, notes


def usable(files: list[ImageFile], min_side: int, warn, what: str = "--data") -> list[ImageFile]:
    """The files whose header reads and whose sides are at least ``min_side`` pixels; the
    others are skipped with a warning (unreadable) or a note (too small). Raises DataError
    if none is left."""
    good, small, bad = [], [], 0
    for f in files:
        try:
            h, w = image_size(f.path)
        except ImageError as e:
            warn(f"warning: skipped {e}")
            bad += 1
            continue
        if min(h, w) < min_side:
            small.append(f"{f.path} ({w}x{h})")
        else:
            good.append(f)
    if small:
        shown = ", ".join(small[:3]) + (f" and {len(small) - 3} more" if len(small) > 3 else "")
        warn(f"note: {len(small)} image{'s' if len(small) > 1 else ''} smaller than "
             f"{min_side}x{min_side} skipped: {shown}")
    if not good:
        if small and not bad:
            raise DataError(f"{what}: no image is at least {min_side}x{min_side} pixels "
                            f"({len(small)} smaller ones; a smaller --patch takes smaller images)")
        raise DataError(f"{what}: none of the {len(files)} image files could be used "
                        f"({bad} unreadable, {len(small)} too small)")
    return good


def holdout(files: list[ImageFile], fraction: float = HOLDOUT_FRACTION,
            cap: int = HOLDOUT_MAX) -> tuple[list[ImageFile], list[ImageFile]]:
    """(training, validation) files: the validation ones are ``fraction`` of them (at least
    1, at most ``cap``), chosen by the hash of their names (module docstring)."""
    if len(files) < 2:
        raise DataError(f"--data: {len(files)} usable image; training holds one out for "
                        "validation, so it needs at least 2 (or give --val DIR)")
    k = int(min(cap, max(1, round(len(files) * fraction)), len(files) - 1))
    order = sorted(files, key=lambda f: hashlib.sha1(f"{HOLDOUT_SEED}:{f.name}".encode()).digest())
    val = {f.path for f in order[:k]}
    return [f for f in files if f.path not in val], [f for f in files if f.path in val]


# ----------------------------------------------------------------------------- the cache


def cache_root(cache_dir: str = "") -> Path:
    return Path(cache_dir or os.environ.get("IQLUT_DATA_CACHE", "/tmp/iqlut_data")) / "images"


def cache_keys(path) -> tuple[str, str]:
    """(folder key P, entry key K) of an image file (module docstring)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    folder = hashlib.sha1(real.encode()).hexdigest()[:16]
    entry = hashlib.sha1(f"{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return folder, entry


def imresize_planes(planes: np.ndarray, scale: float) -> np.ndarray:
    """``iqlut_gpu.evaluate.imresize`` of each uint8 plane ``[C, H, W]`` (the same numbers,
    bit for bit), its float64 passes cut into strips so that a large image needs no more
    than about ``STRIP_BYTES`` of temporaries."""
    C, H, W = planes.shape
    oh, ow = int(math.ceil(H * scale)), int(math.ceil(W * scale))
    taps = int(math.ceil(4.0 / scale if scale < 1 else 4.0)) + 2
    out = np.empty((C, oh, ow), np.uint8)
    for c in range(C):
        plane = planes[c]
        cols = max(1, STRIP_BYTES // (8 * taps * oh))
        mid = np.empty((oh, W), np.float64)
        for x in range(0, W, cols):  # rows first (imresize's order), a strip of columns at a time
            mid[:, x:x + cols] = _resize_axis(plane[:, x:x + cols].astype(np.float64), 0, scale, oh)
        rows = max(1, STRIP_BYTES // (8 * taps * ow))
        for y in range(0, oh, rows):
            res = _resize_axis(mid[y:y + rows], 1, scale, ow)
            out[c, y:y + rows] = np.clip(np.round(res), 0, 255).astype(np.uint8)
    return out


def _save(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path):
    """The cached array (memory-mapped), or None if it is missing or unreadable."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Entry:
    """One prepared image: its cache files and shape (LR ``lh x lw``, C planes)."""

    name: str
    hr: str
    lr: str
    planes: int
    lh: int
    lw: int


def _paths(root: Path, path, scale: int) -> tuple[Path, Path, Path, str]:
    folder_key, key = cache_keys(path)
    folder = root / folder_key
    return folder, folder / f"{key}.hr.npy", folder / f"{key}.x{scale}.npy", key


def _make(root: Path, name: str, path: str, scale: int) -> tuple[Entry | None, str | None]:
    """The cache entry of one image, made if missing: (entry, None) or (None, why not).
    Runs in a pool of threads when many images are made at once."""
    try:
        folder, hr_f, lr_f, key = _paths(root, path, scale)
    except OSError as e:
        return None, f"{path}: cannot read ({e.strerror or e})"
    hr = _load(hr_f)
    if hr is None:
        try:
            img = _read_hr(path)
        except ImageError as e:
            return None, str(e)
        hr = np.ascontiguousarray(np.moveaxis(img, -1, 0) if img.ndim == 3 else img[None])
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.npy"):  # the entry of an older version of this file
            if not old.name.startswith(key + "."):
                old.unlink(missing_ok=True)
        _save(hr_f, hr)
    lr = _load(lr_f)
    if lr is None:
        C, H, W = hr.shape
        lr = imresize_planes(np.asarray(hr[:, :H - H % scale, :W - W % scale]), 1.0 / scale)
        _save(lr_f, lr)
    return Entry(name, str(hr_f), str(lr_f), int(lr.shape[0]), int(lr.shape[1]),
                 int(lr.shape[2])), None


def prepare(files: list[ImageFile], scale: int, cache_dir: str = "", warn=print,
            progress: bool = False, what: str = "--data") -> list[Entry]:
    """The cache entries of ``files`` at ``scale`` (made where missing or stale; in several
    threads when more than a few are to be made). A file that fails to decode is
    skipped with a warning. Raises DataError if none is left."""
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    todo = []
    for f in files:
        try:
            _, hr_f, lr_f, _ = _paths(root, f.path, scale)
        except OSError:
            todo.append(f)
            continue
        if not (hr_f.exists() and lr_f.exists()):
            todo.append(f)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"preparing x{scale} LR", leave=False)
    made: dict[Path, tuple] = {}
    threads = min(len(todo), os.cpu_count() or 1, 8)
    if len(todo) >= PARALLEL_AT and threads > 1:
        # threads: decoding (Pillow), NumPy's array arithmetic and the file writes release
        # the GIL; no process start-up, nothing to pickle, no __main__ guard needed
        with ThreadPoolExecutor(threads) as pool:
            futures = {pool.submit(_make, root, f.name, str(f.path), scale): f for f in todo}
            for fut in futures:
                made[futures[fut].path] = fut.result()
                if bar is not None:
                    bar.update(1)
    else:
        for f in todo:
            made[f.path] = _make(root, f.name, str(f.path), scale)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    entries = []
    for f in files:
        entry, why = made[f.path] if f.path in made else _make(root, f.name, str(f.path), scale)
        if entry is None:
            warn(f"warning: skipped {why}")
        else:
            entries.append(entry)
    if not entries:
        raise DataError(f"{what}: none of the {len(files)} images could be decoded")
    return entries


# ----------------------------------------------------------------------------- sampling


class ImageSource:
    """Random LR/HR patch pairs from prepared images (``prepare``); see the module
    docstring. Pickles as its file names (a loader process maps the files itself)."""

    def __init__(self, entries: list[Entry], scale: int):
        self.entries, self.scale = list(entries), scale
        self._arrays = None
        self._weights: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {"entries": self.entries, "scale": self.scale}

    def __setstate__(self, state):
        self.__init__(state["entries"], state["scale"])

    def __len__(self) -> int:
        return len(self.entries)

    def arrays(self, i: int):
        if self._arrays is None:
            self._arrays = [None] * len(self.entries)
        if self._arrays[i] is None:
            e = self.entries[i]
            # plain arrays over the mapped files (slicing a np.memmap costs more)
            self._arrays[i] = (np.asarray(np.load(e.hr, mmap_mode="r")),
                               np.asarray(np.load(e.lr, mmap_mode="r")))
        return self._arrays[i]

    def max_patch(self) -> int:
        return min(min(e.lh, e.lw) for e in self.entries)

    def _cumulative(self, patch: int) -> np.ndarray:
        if patch not in self._weights:
            w = [e.planes * max(e.lh - patch + 1, 0) * max(e.lw - patch + 1, 0) for e in self.entries]
            self._weights[patch] = np.cumsum(np.asarray(w, np.float64))
        return self._weights[patch]

    def sample(self, rng: np.random.Generator, batch: int, patch: int):
        """``batch`` random LR patches [B, patch, patch] with their HR [B, r*patch, r*patch]
        (uint8), each flipped / rotated at random."""
        r = self.scale
        cum = self._cumulative(patch)
        if cum[-1] <= 0:
            raise ValueError(f"no image has room for a {patch}-pixel LR patch")
        which = np.searchsorted(cum, rng.random(batch) * cum[-1], side="right")
        u = rng.random((batch, 3))
        ts = rng.integers(0, 8, batch)
        lo = np.empty((batch, patch, patch), np.uint8)
        hi = np.empty((batch, patch * r, patch * r), np.uint8)
        for b in range(batch):
            i = int(min(which[b], len(self.entries) - 1))
            e = self.entries[i]
            hr, lr = self.arrays(i)
            c = int(u[b, 0] * e.planes)
            y = int(u[b, 1] * (e.lh - patch + 1))
            x = int(u[b, 2] * (e.lw - patch + 1))
            lp = lr[c, y:y + patch, x:x + patch]
            hp = hr[c, y * r:(y + patch) * r, x * r:(x + patch) * r]
            lo[b], hi[b] = dihedral(lp, hp, int(ts[b]))
        return lo, hi


class MixedSource:
    """Patches of two sources in a fixed share per batch: ``round(batch * share)`` from
    ``second``, the rest from ``first`` (first's patches first)."""

    def __init__(self, first, second, share: float):
        self.first, self.second, self.share = first, second, share
        self.scale = first.scale

    def max_patch(self) -> int:
        return min(self.first.max_patch(), self.second.max_patch())

    @staticmethod
    def split(batch: int, share: float) -> tuple[int, int]:
        """Patches of a batch from (first, second): ``round(batch * share)`` from second."""
        n2 = int(round(batch * share))
        return batch - n2, n2

    def sample(self, rng: np.random.Generator, batch: int, patch: int):
        n1, n2 = self.split(batch, self.share)
        parts = [s.sample(rng, n, patch) for s, n in ((self.first, n1), (self.second, n2)) if n]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _read_hr(path) -> np.ndarray:
    """An HR image as training and validation use it: ``io.read_image`` (gray (H, W), RGB or
    RGBA), alpha dropped."""
    img = read_image(path)
    return img[..., :3] if img.ndim == 3 else img


def validation_images(files: list[ImageFile], crop: int, warn) -> dict[str, np.ndarray]:
    """The validation images (uint8, RGB or gray, alpha dropped), centre-cropped to at
    most ``crop`` pixels a side; one that fails to decode is skipped with a warning."""
    from .data import center_crop

    out = {}
    for f in files:
        try:
            img = _read_hr(f.path)
        except ImageError as e:
            warn(f"warning: skipped {e}")
            continue
        out[f.name] = np.ascontiguousarray(center_crop(img, crop))
    return out
