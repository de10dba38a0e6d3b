"""``iqlut upscale INPUT... -o OUT``: upscale image files and folders of images.

Many files are processed in batches: up to ``--batch`` files (and about ``BATCH_PIXELS``
input pixels, so a batch of large photos stays small) are read in a reader thread while
the previous batch is being upscaled. The images flow through one ``Upscaler.frames``
stream, ordered so that files of the same size and channel count are consecutive and go
to the backend together (up to ``--batch`` files and ``BATCH_PIXELS`` pixels a call). A file that cannot be read or written is reported on one
line and the others continue; the exit code is 1 if any file failed. Each result is
written (encoded and saved atomically) in a writer thread while the next batch is
upscaled; at most one more result waits behind the one being written.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..png import DEFAULT_LEVEL as DEFAULT_PNG_LEVEL
from . import CLIError
from .cluster_run import add_cluster_arg
from .common import add_backend_args, add_color_arg, add_model_args, upscaler_from_args

DEFAULT_BATCH = 8
BATCH_PIXELS = 1 << 23  # input pixels read ahead per batch (8 M: ~24 MB of RGB in)


def add_parser(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images",
                       description="Upscale image files, or every image in the given folders. "
                       "One input file and an OUT that is not a folder: OUT is the output file. "
                       "Otherwise OUT is a folder (created if needed) and names are kept.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    add_model_args(p)
    add_color_arg(p)
    add_backend_args(p)
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="B",
                   help=f"files per batch (default {DEFAULT_BATCH}); same-size images of a batch "
                   "go to the backend in one call")
    p.add_argument("--png-level", type=int, default=None, choices=range(10), metavar="0-9",
                   help="PNG compression: 0 fastest and largest, 9 smallest and slowest "
                   f"(default {DEFAULT_PNG_LEVEL}, chosen by measurement: bench/README.md)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave output files that exist and do the rest (a rerun after a crash "
                   "goes on where it stopped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_cluster_arg(p)
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


def _read_batch(jobs, batch: int, overwrite: bool) -> list:
    """The next batch from the iterator ``jobs``: [(src, dst, image or ImageError)], at most
    ``batch`` files and, past the first, at most about BATCH_PIXELS input pixels (so read-ahead
    memory stays bounded for large photos). Runs in the reader thread."""
    from ..io import ImageError, read_image

    out, pixels = [], 0
    for src, dst in jobs:
        try:
            _check_target(src, dst, overwrite)
            image = read_image(src)
            pixels += image.shape[0] * image.shape[1]
            out.append((src, dst, image))
        except ImageError as e:
            out.append((src, dst, e))
        if len(out) >= batch or pixels >= BATCH_PIXELS:
            break
    return out


def _by_shape(items: list) -> list:
    """Items reordered so that images of one shape are consecutive (first-seen order), so
    that ``Upscaler.frames`` sends each shape to the backend in one call."""
    groups: dict = {}
    for item in items:
        groups.setdefault(item[2].shape, []).append(item)
    return [item for members in groups.values() for item in members]


def _result(future, poll: float = 0.005):
    """``future.result()`` without blocking in it: the main thread, where Ctrl-C lands,
    polls and sleeps instead, because a KeyboardInterrupt raised inside a condition
    variable's wait can surface as ``RuntimeError: release unlocked lock`` (the twin of
    ``video._drain``'s polling)."""
    while not future.done():
        time.sleep(poll)
    return future.result()


def run(args) -> int:
    from collections import deque

    from ..io import ImageError, write_image

    if args.cluster:  # many workers, many machines: iqlut_gpu.cluster
        from . import cluster_run

        return cluster_run.upscale(args)
    if args.batch < 1:
        raise CLIError(f"--batch must be at least 1, got {args.batch}")
    if args.overwrite and args.skip_existing:
        raise CLIError("--overwrite and --skip-existing exclude each other")
    upscaler = upscaler_from_args(args)
    scale, backend = upscaler.scale, upscaler.backend
    jobs = collect_jobs(args.inputs, args.output)
    if not jobs:
        raise CLIError("no image files found in the inputs")
    if args.skip_existing:
        jobs = [(src, dst) for src, dst in jobs if not dst.exists()]
        if not jobs:
            if not args.quiet:
                print(f"nothing to do: every output exists in {args.output}", file=sys.stderr)
            return 0
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

    def report(e):
        nonlocal failed
        failed += 1
        msg = f"iqlut upscale: error: {e}"
        (progress.write(msg, file=sys.stderr) if progress else print(msg, file=sys.stderr))
        if progress:
            progress.update(1)

    todo = iter(jobs)  # consumed by the one reader thread only, a batch at a time
    queued: deque = deque()  # (src, dst, input image, when it was handed to the upscaler)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iqlut-read") as reader:

        def images():
            ahead = reader.submit(_read_batch, todo, args.batch, args.overwrite)
            while True:
                items = _result(ahead)
                if not items:
                    return
                # read the next batch while this one is upscaled
                ahead = reader.submit(_read_batch, todo, args.batch, args.overwrite)
                for src, dst, image in items:
                    if isinstance(image, ImageError):
                        report(image)
                for src, dst, image in _by_shape([it for it in items
                                                  if not isinstance(it[2], ImageError)]):
                    queued.append((src, dst, image, time.perf_counter()))
                    yield image

        def written(job):
            future, dst, (h, w), shape, seconds = job
            try:
                _result(future)
            except ImageError as e:
                report(e)
                return
            if not args.quiet and progress is None:
                print(f"{dst}: {w}x{h} -> {shape[1]}x{shape[0]} (x{scale}, "
                      f"backend {backend}, {seconds * 1000:.1f} ms)")
            if progress:
                progress.update(1)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iqlut-write") as writer:
            writing: deque = deque()
            for result in upscaler.frames(images(), batch=args.batch, max_pixels=BATCH_PIXELS):
                src, dst, image, t0 = queued.popleft()
                seconds = time.perf_counter() - t0
                writing.append((writer.submit(write_image, dst, result, args.png_level), dst,
                                image.shape[:2], result.shape, seconds))
                while len(writing) > 1:
                    written(writing.popleft())
            while writing:
                written(writing.popleft())
    if progress:
        progress.close()
        print(f"{len(jobs) - failed} of {len(jobs)} images written to {args.output} "
              f"(backend {backend})", file=sys.stderr)
    return 1 if failed else 0
