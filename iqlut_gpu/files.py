"""Image files in, image files out: the pipeline behind ``iqlut upscale``, in this process
and on every worker of a cluster (``iqlut_gpu.cluster``).

``image_jobs`` turns inputs (files and folders) and an output (file or folder) into
(input, output) pairs. ``process_files`` runs pairs through an ``Upscaler``:

- a reader thread reads the next batch of up to ``batch`` files (and, past the first, about
  ``BATCH_PIXELS`` input pixels, so that read-ahead stays small for large photos) while
  the current one is upscaled;
- the images flow through one ``Upscaler.frames`` stream, ordered so that files of one
  size and channel count are consecutive and go to the backend together (up to ``batch``
  files and ``BATCH_PIXELS`` pixels a call);
- a writer thread encodes and writes each result atomically (``io.write_image``) while the
  next batch is upscaled; at most one more result waits behind the one being written.

Each file gets a ``FileResult``; a file that cannot be read or written fails alone.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .io import IMAGE_SUFFIXES, ImageError, read_image, write_image

BATCH_PIXELS = 1 << 23  # input pixels read ahead, and upscaled per call (8 M: ~24 MB of RGB in)


@dataclass
class FileResult:
    """One file: ``error`` (one line) is None when ``dst`` was written."""

    src: Path
    dst: Path
    error: str | None = None
    in_size: tuple[int, int] | None = None   # (W, H)
    out_size: tuple[int, int] | None = None
    seconds: float = 0.0                     # from handing the image over to its result
    skipped: bool = False                    # skip-existing: dst was already there


def image_jobs(inputs: Iterable, output) -> list[tuple[Path, Path]]:
    """Pairs (input file, output file). One input file and an ``output`` that is not a
    folder (nor ends with a separator): that file. Otherwise every image of the given
    folders and files goes into the folder ``output`` under its own name. ValueError for a
    missing input or two inputs that would be written to one output."""
    text, out = str(output), Path(output)
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise ValueError(f"{p}: no such file or folder")
    if (len(paths) == 1 and paths[0].is_file() and not out.is_dir()
            and not text.endswith(("/", "\\"))):
        return [(paths[0], out)]
    jobs = []
    for p in paths:
        if p.is_dir():
            jobs += [(f, out / f.name) for f in sorted(p.iterdir())
                     if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            jobs.append((p, out / p.name))
    seen: dict = {}
    for src, dst in jobs:
        if dst in seen:
            raise ValueError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
    return jobs


def _is_input(src: Path, dst: Path) -> bool:
    """Whether ``dst`` exists and is the input file ``src`` itself."""
    dst = Path(dst)
    return dst.exists() and Path(src).resolve() == dst.resolve()


def target_error(src: Path, dst: Path, overwrite: bool) -> str | None:
    """Why ``dst`` may not be written for ``src`` (one line), or None."""
    if _is_input(src, dst):
        return f"{dst}: output is the input file itself; choose another output"
    if dst.exists() and not overwrite:
        return f"{dst}: exists (use --overwrite to replace it)"
    if not dst.parent.is_dir():
        return f"{dst.parent}: output folder does not exist"
    return None


def skips(src: Path, dst: Path) -> bool:
    """``--skip-existing``'s rule, in-process and on a cluster: leave ``dst`` alone when it
    exists, unless it is the input itself (never an earlier run's output: ``target_error``
    then says so)."""
    return Path(dst).exists() and not _is_input(src, dst)


def read_batch(jobs: Iterator, batch: int, check: Callable | None = None) -> list:
    """The next batch from the iterator ``jobs``: [(src, dst, image or ImageError)], at most
    ``batch`` files and, past the first, at most about BATCH_PIXELS input pixels. ``check``:
    ``check(src, dst)`` -> a reason not to do this file, or None. Runs in the reader thread."""
    out, pixels = [], 0
    for src, dst in jobs:
        try:
            why = check(src, dst) if check is not None else None
            if why:
                raise ImageError(why)
            image = read_image(src)
            pixels += image.shape[0] * image.shape[1]
            out.append((src, dst, image))
        except ImageError as e:
            out.append((src, dst, e))
        if len(out) >= batch or pixels >= BATCH_PIXELS:
            break
    return out


def by_shape(items: list) -> list:
    """Items (src, dst, image) reordered so that images of one shape are consecutive
    (first-seen order), so that ``Upscaler.frames`` sends each shape to the backend in one
    call."""
    groups: dict = {}
    for item in items:
        groups.setdefault(item[2].shape, []).append(item)
    return [item for members in groups.values() for item in members]


def wait(future, poll: float = 0.005):
    """``future.result()`` without blocking in it: the main thread, where Ctrl-C lands,
    polls and sleeps instead, because a KeyboardInterrupt raised inside a condition
    variable's wait can surface as ``RuntimeError: release unlocked lock`` (the twin of
    ``video._drain``'s polling)."""
    while not future.done():
        time.sleep(poll)
    return future.result()


def process_files(upscaler, jobs: Iterable[tuple[Path, Path]], *, batch: int = 8,
                  png_level: int | None = None, check: Callable | None = None,
                  on_upscaled: Callable | None = None) -> Iterator[FileResult]:
    """Upscale ``jobs`` ([(src, dst)]) with ``upscaler`` (see the module doc); yields each
    file's ``FileResult`` as it is done (failures as they are found, outputs once written).
    ``check(src, dst)``: a reason not to do a file (e.g. ``target_error``), or None.
    ``on_upscaled()``: called once when the upscaler has done every file and only writing
    is left (a cluster task then lets its worker start the next task). An error of the
    upscaler itself (backend, memory) propagates."""
    todo = iter([(Path(s), Path(d)) for s, d in jobs])  # read by the one reader thread only
    queued: deque = deque()  # (src, dst, input shape, when it was handed to the upscaler)
    failures: deque = deque()  # read failures, yielded between results
    with ThreadPoolExecutor(1, thread_name_prefix="iqlut-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="iqlut-write") as writer:

        def images():
            ahead = reader.submit(read_batch, todo, batch, check)
            while True:
                items = wait(ahead)
                if not items:
                    return
                ahead = reader.submit(read_batch, todo, batch, check)  # while this one runs
                failures.extend(FileResult(s, d, str(img)) for s, d, img in items
                                if isinstance(img, ImageError))
                for src, dst, image in by_shape([it for it in items
                                                 if not isinstance(it[2], ImageError)]):
                    queued.append((src, dst, image.shape, time.perf_counter()))
                    yield image

        def written(job) -> FileResult:
            future, src, dst, shape, out_shape, seconds = job
            try:
                wait(future)
            except ImageError as e:
                return FileResult(src, dst, str(e))
            return FileResult(src, dst, None, (shape[1], shape[0]), (out_shape[1], out_shape[0]),
                              seconds)

        writing: deque = deque()
        try:
            for result in upscaler.frames(images(), batch=batch, max_pixels=BATCH_PIXELS):
                while failures:
                    yield failures.popleft()
                src, dst, shape, t0 = queued.popleft()
                writing.append((writer.submit(write_image, dst, result, png_level), src, dst,
                                shape, result.shape, time.perf_counter() - t0))
                while len(writing) > 1:
                    yield written(writing.popleft())
        except Exception:  # the upscaler failed: what was written still counts, then raise
            while writing:
                yield written(writing.popleft())
            raise
        if on_upscaled is not None:
            on_upscaled()
        while writing:
            yield written(writing.popleft())
        while failures:
            yield failures.popleft()
