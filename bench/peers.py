"""The peers: what a user would run instead of iqlut, timed beside it in the same rounds.

OpenCV's ``dnn_superres`` module (opencv-contrib) runs ESPCN, FSRCNN and FSRCNN-small
from frozen TensorFlow graphs (Apache-2.0; the project's shared folder has them, users
bring their own: ``--peers DIR`` with files named ``ESPCN_x4.pb``, ``FSRCNN_x2.pb``,
``FSRCNN-small_x3.pb``, ...). ``dnn_superres`` puts only the luma through the network and
resizes the chroma bicubically, so iqlut is timed in both of its colour modes.

``python -m bench.peers [--peers DIR] [--scale N ...] [--rounds R] [--quality]
[--ensemble N ...] [--json PATH]``

- speed: for each scale, a frame of the bundled photo whose output is 1280x720 (x3:
  1278x720), RGB; iqlut RGB, iqlut luma (the CPU backend, one pass), each peer and OpenCV's
  bicubic resize run one after the other in ``R`` rounds, order rotated per round; each
  one's time over ESPCN's is taken within a round (the machine may be shared), and the
  median over rounds is reported, with the issue's goals checked;
- ``--quality``: Y-PSNR / SSIM on the validation split (``iqlut_gpu.train.data``, the
  protocol of ``iqlut_gpu.evaluate``) for the same contenders and bicubic;
- ``--ensemble N ...``: iqlut as an N-pass self-ensemble joins the contenders, in both
  colour modes (``iqlut-rgb-eN``, ``iqlut-luma-eN``): what the passes cost and gain.

OpenCV and Numba both use every core (``cv2.getNumThreads()``, Numba's default), so the
two sides are timed with the same thread count. Needs ``opencv-contrib-python-headless``
below 5 (OpenCV 5 no longer reads these graphs); contenders that cannot run are skipped
with the reason.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS = {"ESPCN": "espcn", "FSRCNN": "fsrcnn", "FSRCNN-small": "fsrcnn"}
OUTPUT = (1280, 720)  # the goal frame's output size (W, H)
# issue #22's goals: iqlut's time over ESPCN's at the same scale
GOALS = {(4, "iqlut-luma"): 0.35, (4, "iqlut-rgb"): 0.8, (2, "iqlut-rgb"): 0.6}


def default_dir() -> Path | None:
    """The shared copy beside the checkout (CI and tests), if there is one."""
    shared = ROOT.parent / "shared" / "peers"
    return shared if shared.is_dir() else None


def input_size(scale: int) -> tuple[int, int]:
    """(W, H) of the input whose output is about OUTPUT."""
    return OUTPUT[0] // scale, OUTPUT[1] // scale


def load(peers_dir, name: str, scale: int):
    """A ready ``cv2.dnn_superres`` object for peer ``name`` at ``scale``; raises
    ``registry.Skip`` with the reason when it cannot run here."""
    from .registry import Skip

    if peers_dir is None:
        raise Skip("no peer graphs (give --peers DIR)")
    path = Path(peers_dir) / f"{name}_x{scale}.pb"
    if not path.is_file():
        raise Skip(f"{path} not found")
    try:
        import cv2

        sr = cv2.dnn_superres.DnnSuperResImpl_create()
        sr.readModel(str(path))
        sr.setModel(PEERS[name], scale)
        sr.upsample(np.zeros((8, 8, 3), np.uint8))  # readModel is lazy about some errors
    except AttributeError:
        raise Skip("this OpenCV has no dnn_superres (install opencv-contrib-python-headless<5)") from None
    except Exception as e:  # cv2.error: OpenCV 5 cannot read these graphs
        msg = str(e).strip().splitlines()
        raise Skip(f"OpenCV {cv2.__version__} cannot run {path.name}: "
                   f"{msg[-1] if msg else type(e).__name__}") from None
    return sr


def _run_peer(sr, img: np.ndarray) -> np.ndarray:
    """dnn_superres on an RGB image (it works in BGR; the flips are part of what a user
    pays) or a gray one (given as three equal channels: its luma is the gray itself)."""
    if img.ndim == 2:
        return np.ascontiguousarray(sr.upsample(np.stack([img] * 3, -1))[..., 1])
    return np.ascontiguousarray(sr.upsample(img[..., ::-1])[..., ::-1])


def contenders(scale: int, peers_dir, log=lambda m: None, ensembles=()) -> dict:
    """name -> callable(rgb uint8 image) -> upscaled image, for every contender that runs;
    ``ensembles``: also iqlut as an N-pass self-ensemble (``iqlut-rgb-eN``, ``iqlut-luma-eN``)."""
    import cv2

    from iqlut_gpu import Upscaler

    out = {"iqlut-rgb": Upscaler(scale, backend="cpu", ensemble=1),
           "iqlut-luma": Upscaler(scale, backend="cpu", ensemble=1, color="luma")}
    for n in ensembles:
        for color in ("rgb", "luma"):
            out[f"iqlut-{color}-e{n}"] = Upscaler(scale, backend="cpu", ensemble=n, color=color)
    for name in PEERS:
        try:
            sr = load(peers_dir, name, scale)
        except Exception as e:  # registry.Skip
            log(f"{name} x{scale}: skipped ({e})")
            continue
        out[name] = lambda img, sr=sr: _run_peer(sr, img)

    def bicubic(img):
        return cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale),
                          interpolation=cv2.INTER_CUBIC)

    out["opencv-bicubic"] = bicubic
    return out


def speed(scale: int, peers_dir, rounds: int = 7, log=lambda m: None, ensembles=()) -> dict:
    """Interleaved timing of every contender on the goal frame at ``scale``."""
    from . import registry, timing

    frame = registry.bench_frames(input_size(scale), 1)[0]
    fns = contenders(scale, peers_dir, log, ensembles)
    runs = {name: registry.Run(lambda fn=fn: fn(frame)) for name, fn in fns.items()}
    calls = {name: 5 if name == "opencv-bicubic" else 1 for name in runs}
    per_round = timing.interleaved_rounds(runs, rounds, calls)
    res = {"scale": scale, "input": "{}x{}".format(*input_size(scale)), "rounds": rounds,
           "median_ms": {k: round(statistics.median(r[k] for r in per_round) * 1e3, 3)
                         for k in runs}}
    if "ESPCN" in runs:
        res["time_vs_espcn"] = {k: round(statistics.median(r[k] / r["ESPCN"] for r in per_round), 3)
                                for k in runs}
        res["goals"] = {f"{k} <= {v}x ESPCN": res["time_vs_espcn"][k] <= v
                        for (s, k), v in GOALS.items() if s == scale}
    return res


def quality(scale: int, peers_dir, crop: int = 384, log=lambda m: None, ensembles=()) -> dict:
    """Mean Y-PSNR / SSIM of every contender (and MATLAB bicubic) on the validation split."""
    from iqlut_gpu.evaluate import bicubic_upscale, degrade, y_metrics
    from iqlut_gpu.train import data

    images = data.validation_images(crop)
    fns = dict(contenders(scale, peers_dir, log, ensembles))
    fns.pop("opencv-bicubic")
    fns["bicubic"] = lambda lr: bicubic_upscale(lr, scale)
    sums = {k: [0.0, 0.0] for k in fns}
    for name, img in sorted(images.items()):
        hr, lr = degrade(img, scale)
        for k, fn in fns.items():
            p, s = y_metrics(fn(lr), hr, scale)
            sums[k][0] += p
            sums[k][1] += s
    n = len(images)
    return {"scale": scale, "images": n, "crop": crop,
            "y_psnr_ssim": {k: [round(v[0] / n, 4), round(v[1] / n, 5)] for k, v in sums.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, default=default_dir(), metavar="DIR",
                   help="folder with ESPCN_xN.pb, FSRCNN_xN.pb, FSRCNN-small_xN.pb "
                   "(default: ../shared/peers beside the checkout, if present)")
    p.add_argument("--scale", type=int, nargs="+", default=[2, 3, 4], choices=(2, 3, 4))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quality", action="store_true", help="also Y-PSNR/SSIM on the validation split")
    p.add_argument("--ensemble", type=int, nargs="+", default=[], choices=(2, 4, 8), metavar="N",
                   help="also iqlut as an N-pass self-ensemble, RGB and luma (iqlut-rgb-eN, ...)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results here too")
    args = p.parse_args(argv)

    def log(m):
        print(m, file=sys.stderr)

    from .machine import describe

    out = {"machine": describe(), "peers_dir": str(args.peers) if args.peers else None,
           "speed": [], "quality": []}
    for s in args.scale:
        r = speed(s, args.peers, args.rounds, log, args.ensemble)
        out["speed"].append(r)
        print(f"x{s}, {r['input']} RGB in, median of {r['rounds']} interleaved rounds:")
        for k, ms in r["median_ms"].items():
            rel = r.get("time_vs_espcn", {}).get(k)
            print(f"  {k:<15} {ms:9.2f} ms" + (f"   {rel:6.3f}x ESPCN" if rel is not None else ""))
        for goal, ok in r.get("goals", {}).items():
            print(f"  goal {goal}: {'met' if ok else 'MISSED'}")
        if args.quality:
            q = quality(s, args.peers, log=log, ensembles=args.ensemble)
            out["quality"].append(q)
            print(f"  Y-PSNR / SSIM on the validation split ({q['images']} images):")
            for k, (psnr, ssim) in q["y_psnr_ssim"].items():
                print(f"  {k:<15} {psnr:8.3f} dB  {ssim:.4f}")
    if args.json:
        from .timing import write_json

        write_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
