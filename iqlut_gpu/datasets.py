"""Super-resolution test sets as the field lays them out on disk (``iqlut eval --dataset``).

``find_datasets(DIR, scale)`` recognises, in this order (folder names case-insensitive):

- **benchmark pack** (EDSR's ``benchmark.tar``, the packs BasicSR points to):
  ``DIR/HR/baby.png`` with ``DIR/LR_bicubic/X2/babyx2.png``;
- **DIV2K**: ``DIV2K_valid_HR/0801.png`` with ``DIV2K_valid_LR_bicubic/X2/0801x2.png``
  beside it (DIR is the ``*_HR`` folder, or a folder holding ``*_HR`` folders; the other
  DIV2K tracks, ``_LR_unknown``, ``_LR_mild`` ..., are not bicubic and are not used);
- **BasicSR** (``datasets/Set5`` of BasicSR's docs): ``DIR/GTmod12/baby.png`` (or
  ``GTmodN`` for the scale N) with ``DIR/LRbicxN/baby.png``;
- **HR only**: ``DIR/HR/`` without LR files for the scale, or image files directly in DIR;
  the LR is then made with MATLAB's bicubic (``iqlut_gpu.evaluate.degrade``);
- **a folder of data sets** (``benchmark/`` holding ``Set5/``, ``Set14/``, ...): each
  subfolder that matches one of the above, up to three levels down.

DIR may also be the HR folder itself (``Set5/HR``, ``Set5/GTmod12``): its pack is the
folder above it.

An LR file is matched to its HR file by name: ``<stem>x<N>.<any image suffix>`` (EDSR,
DIV2K), or ``<stem>.<suffix>`` (BasicSR); each layout tries its own form first. A pack
with no LR folder for the scale asked for (``LR_bicubic/X2`` only, at x3) gets made LR.
Hidden files and folders (``.name``) and non-image files are ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .io import IMAGE_SUFFIXES

MAX_DEPTH = 3  # how far down a folder of data sets is searched


class DatasetError(ValueError):
    """A data set folder is empty, matches no layout, or lacks a file; one line says why."""


@dataclass(frozen=True)
class Pair:
    """One test image: its name in tables (the HR file name), the HR file, and the LR file
    (None: made from the HR with MATLAB bicubic)."""

    name: str
    hr: Path
    lr: Path | None = None


@dataclass(frozen=True)
class Dataset:
    name: str  # in tables: "Set5", "DIV2K_valid", ...
    root: Path  # the folder the layout was recognised in
    layout: str  # "benchmark", "div2k", "basicsr" or "hr-only"
    hr_dir: Path
    lr_dir: Path | None  # None: LR made from HR
    lr_source: str  # for people: where the LR comes from
    pairs: tuple[Pair, ...]


def natural_key(name: str) -> list:
    """Sort key that orders numbers by value: Set5 before Set14, img_2 before img_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _visible(folder: Path) -> list[Path]:
    """The folder's entries without hidden ones, in natural name order."""
    try:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                      key=lambda p: (natural_key(p.name), p.name))
    except PermissionError:
        raise DatasetError(f"{folder}: permission denied") from None
    except OSError as e:
        raise DatasetError(f"{folder}: cannot list ({e.strerror or e})") from None


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _subdirs(folder: Path) -> dict[str, Path]:
    """Visible subfolders by lower-case name (the first in name order wins)."""
    out: dict[str, Path] = {}
    for p in _visible(folder):
        if p.is_dir():
            out.setdefault(p.name.lower(), p)
    return out


def _hr_images(hr_dir: Path) -> list[Path]:
    files = [p for p in _visible(hr_dir) if _is_image(p)]
    if not files:
        raise DatasetError(f"{hr_dir}: no images (looked for {', '.join(IMAGE_SUFFIXES[:4])}, ... "
                           "directly in the folder)")
    return files


def _match_lr(hr_files: list[Path], lr_dir: Path, scale: int,
              forms: tuple[str, ...]) -> tuple[Pair, ...]:
    """Each HR file with its LR file in ``lr_dir``; ``forms`` are the stems to try
    (``"{stem}x{scale}"``, ``"{stem}"``) in order. A missing or doubled LR file is an error."""
    by_stem: dict[str, list[Path]] = {}
    for p in _visible(lr_dir):
        if _is_image(p):
            by_stem.setdefault(p.stem, []).append(p)
    pairs = []
    for hr in hr_files:
        for form in forms:
            found = by_stem.get(form.format(stem=hr.stem, scale=scale))
            if found:
                break
        else:
            want = " or ".join(form.format(stem=hr.stem, scale=scale) + ".png" for form in forms)
            raise DatasetError(f"{hr}: no LR file for it in {lr_dir} (looked for {want})")
        if len(found) > 1:
            raise DatasetError(f"{hr}: two LR files match it: {', '.join(p.name for p in found)}")
        pairs.append(Pair(hr.name, hr, found[0]))
    return tuple(pairs)


def _made(hr_files: list[Path]) -> tuple[Pair, ...]:
    return tuple(Pair(p.name, p, None) for p in hr_files)


def _with_lr(name, root, layout, hr_dir, lr_dir, lr_label, missing_why, scale, make_lr, forms):
    hr_files = _hr_images(hr_dir)
    if make_lr:
        return Dataset(name, root, layout, hr_dir, None, "made from HR with MATLAB bicubic (--make-lr)",
                       _made(hr_files))
    if lr_dir is None:
        return Dataset(name, root, layout, hr_dir, None,
                       f"made from HR with MATLAB bicubic ({missing_why})", _made(hr_files))
    return Dataset(name, root, layout, hr_dir, lr_dir, f"files in {lr_label}",
                   _match_lr(hr_files, lr_dir, scale, forms))


def _benchmark(root: Path, hr_dir: Path, scale: int, make_lr: bool) -> Dataset:
    lr_root = _subdirs(root).get("lr_bicubic")
    lr_dir = _subdirs(lr_root).get(f"x{scale}") if lr_root else None
    why = f"no LR_bicubic/X{scale} in the pack" if lr_root else "no LR_bicubic folder"
    return _with_lr(_name(root), root, "benchmark", hr_dir, lr_dir,
                    f"LR_bicubic/{lr_dir.name}" if lr_dir else "", why, scale, make_lr,
                    ("{stem}x{scale}", "{stem}"))


def _div2k(hr_dir: Path, scale: int, make_lr: bool) -> Dataset:
    prefix = hr_dir.name[:-3]  # "DIV2K_valid_HR" -> "DIV2K_valid"
    siblings = _subdirs(hr_dir.parent)
    lr_root = siblings.get(f"{prefix}_lr_bicubic".lower())
    lr_dir = _subdirs(lr_root).get(f"x{scale}") if lr_root else None
    why = (f"no {prefix}_LR_bicubic/X{scale}" if lr_root else f"no {prefix}_LR_bicubic beside it")
    return _with_lr(prefix or _name(hr_dir), hr_dir, "div2k", hr_dir, lr_dir,
                    f"{lr_root.name}/{lr_dir.name}" if lr_dir else "", why, scale, make_lr,
                    ("{stem}x{scale}", "{stem}"))


def _basicsr(root: Path, gt_dir: Path, scale: int, make_lr: bool) -> Dataset:
    lr_dir = _subdirs(root).get(f"lrbicx{scale}")
    return _with_lr(_name(root), root, "basicsr", gt_dir, lr_dir, lr_dir.name if lr_dir else "",
                    f"no LRbicx{scale} folder", scale, make_lr, ("{stem}", "{stem}x{scale}"))


def _name(folder: Path) -> str:
    return folder.name or Path(os.path.abspath(folder)).name or str(folder)


def _is_hr_folder_name(name: str) -> bool:
    return name.lower().endswith("_hr") and len(name) > 3


_LR_NAME = re.compile(r"(lr|lr_bicubic\w*|lrbicx\d+|x\d+(_sub)?|.*_lr_.*|.*_lr)")


def _looks_lr(name: str) -> bool:
    """LR folders of the packs (LR_bicubic, X2, LRbicx2, DIV2K_valid_LR_bicubic, ...): never
    taken for HR images, and passed over when a folder of data sets is searched."""
    return _LR_NAME.fullmatch(name.lower()) is not None


def _resolve(folder: Path, scale: int, make_lr: bool, depth: int, skipped: list) -> list[Dataset] | None:
    """The data sets in ``folder``, or None if it matches no layout (and holds none)."""
    subs = _subdirs(folder)
    if "hr" in subs:
        return [_benchmark(folder, subs["hr"], scale, make_lr)]
    if folder.name.lower() == "hr" and depth == 0:  # Set5/HR given: the pack is Set5
        return [_benchmark(folder.parent, folder, scale, make_lr)]
    if re.fullmatch(r"gtmod\d+", folder.name.lower()) and depth == 0:
        return [_basicsr(folder.parent, folder, scale, make_lr)]
    if _is_hr_folder_name(folder.name):
        return [_div2k(folder, scale, make_lr)]
    hr_subs = [p for name, p in subs.items() if _is_hr_folder_name(name)]
    if hr_subs:
        return [_div2k(p, scale, make_lr) for p in hr_subs]
    gt = subs.get(f"gtmod{scale}") or subs.get("gtmod12")
    if gt is not None:
        return [_basicsr(folder, gt, scale, make_lr)]
    images = [p for p in _visible(folder) if _is_image(p)]
    if images:
        return [Dataset(_name(folder), folder, "hr-only", folder, None,
                        "made from HR with MATLAB bicubic (a folder of HR images)", _made(images))]
    if depth >= MAX_DEPTH or not subs:
        return None
    found = []
    for sub in subs.values():
        if _looks_lr(sub.name):
            continue
        got = _resolve(sub, scale, make_lr, depth + 1, skipped)
        if got is None:
            skipped.append(sub)
        else:
            found += got
    return found or None


LAYOUTS_HELP = ("HR/ (+ LR_bicubic/X{s}/), *_HR/ (+ *_LR_bicubic/X{s}/), GTmod12/ (+ LRbicx{s}/), "
                "image files, or folders of these")


def find_datasets(folder, scale: int, make_lr: bool = False) -> tuple[list[Dataset], list[str]]:
    """The data sets in ``folder`` at ``scale`` and notes for people (subfolders of a folder
    of data sets that matched no layout). Raises DatasetError: no such folder, an empty
    folder, no layout matched, an HR folder without images, a missing LR file."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (image files go as INPUT, without --dataset)")
    if not _visible(folder):
        raise DatasetError(f"{folder}: empty folder")
    if _looks_lr(_name(folder)):
        raise DatasetError(f"{folder}: an LR folder; give the data set folder (the one that "
                           "holds HR/ or the *_HR folder)")
    skipped: list[Path] = []
    found = _resolve(folder, scale, make_lr, 0, skipped)
    if not found:
        raise DatasetError(f"{folder}: matches no data set layout (expected "
                           f"{LAYOUTS_HELP.format(s=scale)})")
    notes = [f"{p}: skipped (no images and no data set layout)" for p in skipped]
    return found, notes


def unique_names(datasets: list[Dataset]) -> list[Dataset]:
    """Drop repeats of the same HR folder; make clashing names unique with their paths."""
    seen, out = set(), []
    for d in datasets:
        key = (os.path.realpath(d.hr_dir), d.lr_dir and os.path.realpath(d.lr_dir))
        if key not in seen:
            seen.add(key)
            out.append(d)
    counts: dict[str, int] = {}
    for d in out:
        counts[d.name] = counts.get(d.name, 0) + 1
    return [d if counts[d.name] == 1 else replace(d, name=str(d.root)) for d in out]


# ------------------------------------------------------------------------------ pre-flight


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as ``iqlut_gpu.io.read_image`` returns it (EXIF
    orientation applied), from the header only. Raises ImageError."""
    from PIL import Image

    from .io import image_errors

    with image_errors(path, "read"), Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # transposed orientations
            w, h = h, w
        return h, w


def min_side(scale: int) -> int:
    """The smallest HR side the protocol can score: an r-pixel shave on each border leaves
    at least the 11-pixel SSIM window."""
    return 2 * scale + 11


def check_sizes(hr_shape, lr_shape, scale: int, hr: Path, lr: Path | None) -> None:
    """The protocol's size rules for one pair ((h, w) shapes); DatasetError names the files."""
    h, w = hr_shape[:2]
    if min(h, w) < min_side(scale):
        raise DatasetError(f"{hr}: too small for the protocol at x{scale} ({w}x{h}; "
                           f"needs {min_side(scale)} pixels a side)")
    if lr is None:
        return
    hc, wc = h - h % scale, w - w % scale
    lh, lw = lr_shape[:2]
    if (lh * scale, lw * scale) != (hc, wc):
        cropped = f" ({wc}x{hc} cropped to a multiple of {scale})" if (hc, wc) != (h, w) else ""
        raise DatasetError(f"LR/HR size mismatch: {lr} is {lw}x{lh}, x{scale} gives "
                           f"{lw * scale}x{lh * scale}, but {hr} is {w}x{h}{cropped}")


def preflight(datasets: list[Dataset], scale: int) -> None:
    """Read every header once before any work: unreadable files, images too small and LR/HR
    size mismatches are reported before an hour of upscaling, not after."""
    for d in datasets:
        for p in d.pairs:
            check_sizes(image_size(p.hr), image_size(p.lr) if p.lr else None, scale, p.hr, p.lr)
