"""``iqlut upscale INPUT... -o OUT``: upscale image files and folders of images."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import CLIError
from .common import add_backend_args, add_model_args, resolve_model


def add_parser(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images",
                       description="Upscale image files, or every image in the given folders. "
                       "One input file and an OUT that is not a folder: OUT is the output file. "
                       "Otherwise OUT is a folder (created if needed) and names are kept.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    add_model_args(p)
    add_backend_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def collect_jobs(inputs: list[str], output: str) -> list[tuple[Path, Path]]:
    """Pairs (input file, output file). Raises CLIError for a missing input."""
    from ..io import IMAGE_SUFFIXES

    out = Path(output)
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise CLIError(f"{p}: no such file or folder")
    single = len(paths) == 1 and paths[0].is_file() and not out.is_dir() and not output.endswith(("/", "\\"))
    if single:
        return [(paths[0], out)]
    jobs = []
    for p in paths:
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            jobs += [(f, out / f.name) for f in files]
        else:
            jobs.append((p, out / p.name))
    seen = {}
    for src, dst in jobs:
        if dst in seen:
            raise CLIError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
    return jobs


def _check_target(src: Path, dst: Path, overwrite: bool) -> None:
    from ..io import ImageError

    if dst.exists() and src.resolve() == dst.resolve():
        raise ImageError(f"{dst}: output is the input file itself; choose another output")
    if dst.exists() and not overwrite:
        raise ImageError(f"{dst}: exists (use --overwrite to replace it)")
    if not dst.parent.is_dir():
        raise ImageError(f"{dst.parent}: output folder does not exist")


def run(args) -> int:
    from ..api import upscale
    from ..backends import resolve
    from ..io import ImageError, read_image, write_image

    model = resolve_model(args)
    backend = resolve(args.backend)
    jobs = collect_jobs(args.inputs, args.output)
    if not jobs:
        raise CLIError("no image files found in the inputs")
    single = len(jobs) == 1 and jobs[0][1] == Path(args.output)
    if not single:
        try:
            Path(args.output).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"{args.output}: cannot create output folder ({e.strerror or e})") from None
    progress = None
    if not args.quiet and len(jobs) > 1:
        from tqdm import tqdm

        progress = tqdm(total=len(jobs), unit="img", file=sys.stderr)
    failed = 0
    for src, dst in jobs:
        try:
            _check_target(src, dst, args.overwrite)
            image = read_image(src)
            t0 = time.perf_counter()
            result = upscale(image, model.scale, model=model, backend=backend, mode=args.mode)
            seconds = time.perf_counter() - t0
            write_image(dst, result)
            if not args.quiet and progress is None:
                h, w = image.shape[:2]
                print(f"{dst}: {w}x{h} -> {result.shape[1]}x{result.shape[0]} (x{model.scale}, "
                      f"backend {backend}, {seconds * 1000:.1f} ms)")
        except ImageError as e:
            failed += 1
            msg = f"iqlut upscale: error: {e}"
            (progress.write(msg, file=sys.stderr) if progress else print(msg, file=sys.stderr))
        if progress:
            progress.update(1)
    if progress:
        progress.close()
        print(f"{len(jobs) - failed} of {len(jobs)} images written to {args.output} "
              f"(backend {backend})", file=sys.stderr)
    return 1 if failed else 0
