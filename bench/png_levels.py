"""The PNG writer's levels and libraries beside Pillow, on a large upscaled photo.

``python -m bench.png_levels [--size WxH] [--scale N] [--rounds R] [--json PATH]``

The bundled photo resized to ``--size`` (default 1920x1080) is upscaled once (x4: a
7680x4320 RGB image, as ``iqlut upscale`` writes it); then, in ``R`` interleaved rounds
(order rotated per round), it is encoded by:

- ``ours L``: ``png.encode`` at each level L 0-9 (the library each level uses where all
  are installed: ISA-L at 1-2, zlib-ng at 3-9, stored at 0);
- ``zlib-ng L`` for L 1-2: the same writer with ISA-L hidden (what levels 1-2 were before
  ISA-L, and what they are where it is not installed);
- ``pillow L``: Pillow's ``save`` at its default (6, adaptive filter) and at level 1.

Reported: each one's median wall time and its size (MB and bytes), and each time over the default
level's within a round (ratios: the machine may be shared). Level 9 is left out unless
``--with-9`` (tens of seconds).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

from .model_ab import parse_size


def measure(size=(1920, 1080), scale: int = 4, rounds: int = 3, with_9: bool = False,
            log=lambda m: None) -> dict:
    from PIL import Image

    from iqlut_gpu import Upscaler, png
    from iqlut_gpu.planes import from_planes, to_planes

    from .machine import describe
    from .registry import bench_frames

    machine = describe()  # the load at the start
    image = bench_frames(tuple(size), 1)[0]
    planes, layout = to_planes(image)
    result = from_planes(Upscaler(scale, backend="cpu", ensemble=1).run_planes(planes), layout)

    def ours(level, hide_isal=False):
        def run():
            saved = png._isal
            if hide_isal:
                png._isal = None
            try:
                return len(png.encode(result, level))
            finally:
                png._isal = saved
        return run

    def pillow(**kw):
        def run():
            buf = io.BytesIO()
            Image.fromarray(result).save(buf, format="PNG", **kw)
            return buf.tell()
        return run

    jobs = {f"ours {lv}": ours(lv) for lv in range(10 if with_9 else 9)}
    if png._isal is not None:
        jobs.update({f"zlib-ng {lv}": ours(lv, hide_isal=True) for lv in png.ISAL_LEVEL})
    jobs.update({"pillow 6": pillow(), "pillow 1": pillow(compress_level=1)})
    sizes = {k: fn() for k, fn in jobs.items()}  # warm up, and the sizes (fixed per job)
    keys = list(jobs)
    per_round = []
    for i in range(rounds):
        t = {}
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            t0 = time.perf_counter()
            jobs[k]()
            t[k] = time.perf_counter() - t0
        per_round.append(t)
        log(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    med = statistics.median
    default = f"ours {png.DEFAULT_LEVEL}"
    return {"machine": machine, "image": "{}x{} RGB".format(*result.shape[1::-1]),
            "scale": scale, "rounds": rounds,
            "default_level": png.DEFAULT_LEVEL, "isal": png._isal is not None,
            "median_s": {k: round(med(t[k] for t in per_round), 3) for k in keys},
            "mb": {k: round(v / 1e6, 2) for k, v in sizes.items()}, "bytes": sizes,
            "over_default": {k: round(med(t[k] / t[default] for t in per_round), 2)
                             for k in keys}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.png_levels", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=parse_size, default=(1920, 1080), help="input WxH")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--with-9", action="store_true", help="time level 9 too (slow)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    from .timing import emit

    emit(measure(args.size, args.scale, args.rounds, args.with_9,
                 log=lambda m: print(m, file=sys.stderr)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
