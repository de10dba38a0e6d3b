"""The benchmark registry: every case the runner knows, and how to set each one up.

A case is a frozen ``Case`` (name, group, backend, mode, scale, input size, batch of RGB
frames, layer). ``setup(case)`` builds its inputs once and returns a ``Prepared`` run:
``run()`` does the timed work, ``sync()`` waits for it (CUDA), ``check()`` compares the
timed output with the NumPy reference on a crop (see ``_crop_check``).

Groups:

- ``model``: the whole model, x2/x3/x4, 320x180 RGB, each backend and mode;
- ``layer``: each layer kernel of the x4 starting architecture alone, both modes;
- ``size``: x4 whole model over input sizes 64x64 .. 3840x2160 (scaling with pixels);
- ``batch``: x4, 320x180, batches of 1..8 frames (1..32 on a GPU);
- ``baseline``: OpenCV bicubic resize, the PyTorch training forward of the same model
  (CPU, and GPU when present), and the NumPy reference, at the sizes the goals use.

Models: ``bench_model(scale)`` is the shipped default model of that scale (the goals are
stated "with the default model"), or, while a shipped model is untrained (zero tables,
which would make the error check trivial), a random model of
``iqlut_gpu.model.DEFAULT_ARCH`` with a fixed seed. The table values matter for speed:
trained tables turn a photo into smooth code planes whose table reads hit the cache,
random tables into random codes (x4 320x180 RGB on the 2-core CPU, one run: 37 vs 46 ms
expanded, 62 vs 69 ms interp, shipped vs random).
Inputs: the bundled photo resized to the case's size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iqlut_gpu.planes import to_planes
from iqlut_gpu.upscaler import Upscaler

MODES = ("interp", "expanded")
SCALES = (2, 3, 4)
# input sizes (W, H)
SIZES = ((64, 64), (128, 128), (256, 256), (320, 180), (512, 512), (640, 360), (1280, 720),
         (1920, 1080), (3840, 2160))
QUICK_SIZES = ((64, 64), (256, 256), (320, 180), (640, 360))
BATCHES_CPU = (1, 2, 4, 8)
BATCHES_GPU = (1, 2, 4, 8, 16, 32)
GOAL_SIZE = (320, 180)  # the goals: x4, 320x180 -> 1280x720 RGB
BENCH_SEED = 20260407


@dataclass(frozen=True)
class Case:
    group: str
    backend: str  # cpu | cuda | reference | opencv | torch-cpu | torch-cuda
    mode: str | None
    scale: int
    size: tuple  # (W, H) of the input
    batch: int = 1  # RGB frames: 3 * batch planes
    layer: int | None = None  # None: the whole model
    quick: bool = False
    heavy: bool = False  # long on a CPU: fewer repeats

    @property
    def name(self) -> str:
        parts = [self.group, self.backend]
        if self.mode:
            parts.append(self.mode)
        if self.layer is not None:
            parts.append(f"layer{self.layer}")
        parts += [f"x{self.scale}", f"{self.size[0]}x{self.size[1]}", f"b{self.batch}"]
        return "/".join(parts)

    @property
    def planes(self) -> int:
        return 3 * self.batch

    @property
    def out_pixels(self) -> int:
        """HR RGB pixels produced (per frame times frames)."""
        return self.batch * self.size[0] * self.size[1] * self.scale * self.scale

    @property
    def device(self) -> str:
        return "gpu" if self.backend in ("cuda", "torch-cuda") else "cpu"


def registry() -> list[Case]:
    cases: list[Case] = []
    for backend in ("cpu", "cuda"):
        for mode in MODES:
            for scale in SCALES:
                cases.append(Case("model", backend, mode, scale, GOAL_SIZE, quick=scale == 4))
            for layer in range(4):
                cases.append(Case("layer", backend, mode, 4, GOAL_SIZE, layer=layer, quick=True))
            for size in SIZES:
                if size == GOAL_SIZE:
                    continue  # the model group has it
                cases.append(Case("size", backend, mode, 4, size,
                                  quick=size in QUICK_SIZES,
                                  heavy=backend == "cpu" and size[0] * size[1] > 1280 * 720))
            for batch in BATCHES_CPU if backend == "cpu" else BATCHES_GPU:
                if batch == 1:
                    continue
                cases.append(Case("batch", backend, mode, 4, GOAL_SIZE, batch=batch,
                                  quick=batch == 4))
    for size in SIZES:
        cases.append(Case("baseline", "opencv", None, 4, size,
                          quick=size in QUICK_SIZES or size == GOAL_SIZE))
    for batch in BATCHES_CPU[1:]:
        cases.append(Case("baseline", "opencv", None, 4, GOAL_SIZE, batch=batch, quick=batch == 4))
    for backend in ("torch-cpu", "torch-cuda"):
        cases.append(Case("baseline", backend, None, 4, GOAL_SIZE, quick=True))
        cases.append(Case("baseline", backend, None, 4, (64, 64), quick=True))
    cases.append(Case("baseline", "reference", None, 4, (64, 64), quick=True))
    cases.append(Case("baseline", "reference", None, 4, GOAL_SIZE, heavy=True))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


# ----------------------------------------------------------------------------- inputs


@functools.lru_cache(maxsize=None)
def bench_model(scale: int):
    """The shipped default model, or a random one of its architecture while it is untrained."""
    from iqlut_gpu.model import default_model

    shipped = default_model(scale)
    return shipped if shipped.trained else random_model(scale)


@functools.lru_cache(maxsize=None)
def random_model(scale: int):
    """A random model of the starting architecture (fixed seed): int8 tables, shifts 9."""
    from iqlut_gpu.model import DEFAULT_ARCH, Layer, Model, uniform_knots

    rng = np.random.default_rng(BENCH_SEED + scale)
    layers, c = [], 1
    for spec in DEFAULT_ARCH:
        c_out = spec["c_out"] or scale * scale
        L, k = spec["L"], spec["k"]
        table = rng.integers(-40, 41, size=(c, L, k, k, c_out)).astype(np.int8)
        layers.append(Layer(knots=uniform_knots(c, L), table=table,
                            bias=rng.integers(-2000, 2000, size=c_out).astype(np.int32),
                            shift=9, residual=spec["residual"]))
        c = c_out
    return Model(scale=scale, upsample="bicubic", layers=tuple(layers), trained=False,
                 provenance={"note": f"bench: random tables, seed {BENCH_SEED + scale}"})


@functools.lru_cache(maxsize=8)
def bench_frames(size: tuple, batch: int) -> np.ndarray:
    """uint8 [batch, H, W, 3]: the bundled photo resized to ``size`` (W, H), shifted per frame."""
    import cv2

    from iqlut_gpu.io import read_image

    photo = read_image(Path(__file__).resolve().parents[1] / "iqlut_gpu" / "data" / "astronaut_256.png")
    photo = np.ascontiguousarray(photo[..., :3]) if photo.ndim == 3 else np.stack([photo] * 3, -1)
    frames = []
    for f in range(batch):
        rolled = np.roll(photo, 7 * f, axis=1)
        frames.append(cv2.resize(rolled, size, interpolation=cv2.INTER_AREA))
    return np.ascontiguousarray(np.stack(frames))


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    run: callable
    sync: callable = lambda: None
    check: callable = lambda out: None  # -> dict of error figures, or None
    device_timer: str | None = None  # "cupy" | "torch": time with CUDA events
    stream: object = None  # the cupy stream the work is queued on (events are recorded on it)
    notes: dict = field(default_factory=dict)


def _crop_window(H, W, halo, size=32):
    """Central region [y0, y1) x [x0, x1) and its input window with ``halo`` (clipped)."""
    h, w = min(size, H), min(size, W)
    y0, x0 = (H - h) // 2, (W - w) // 2
    y1, x1 = y0 + h, x0 + w
    return (y0, y1, x0, x1), (max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo))


def _compare(got: np.ndarray, want: np.ndarray) -> dict:
    d = np.abs(got.astype(np.int32) - want.astype(np.int32))
    return {"checked_values": int(d.size), "max_abs_err": int(d.max()), "mismatches": int((d > 0).sum())}


def _model_crop_check(model, planes: np.ndarray, out_of, r: int):
    """Compare the timed output with the reference on a central crop: the reference runs on
    the crop plus a halo wider than the receptive field, so the crop's interior must match
    bit for bit. Planes checked: the first and the last."""
    from iqlut_gpu import reference

    def check(out):
        out = out_of(out)
        _, H, W = planes.shape
        (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = _crop_window(H, W, model.receptive_radius + 2)
        res = []
        for p in sorted({0, planes.shape[0] - 1}):
            ref = reference.upscale_planes(model, np.ascontiguousarray(planes[p:p + 1, cy0:cy1, cx0:cx1]))[0]
            want = ref[(y0 - cy0) * r:(y1 - cy0) * r, (x0 - cx0) * r:(x1 - cx0) * r]
            got = np.asarray(out[p, y0 * r:y1 * r, x0 * r:x1 * r])
            res.append(_compare(got, want))
        return {"checked_values": sum(x["checked_values"] for x in res),
                "max_abs_err": max(x["max_abs_err"] for x in res),
                "mismatches": sum(x["mismatches"] for x in res), "on": "central crop vs reference"}

    return check


def layer_inputs(prepared, planes: np.ndarray, mode: str = "interp", upto: int | None = None) -> list:
    """The codes entering each layer of ``prepared``'s model (layers 0..``upto``, default
    all) on ``planes``: the model run once through the Numba launchers (``mode``'s)."""
    from iqlut_gpu.kernels import numba_cpu

    P, H, W = planes.shape
    x = np.ascontiguousarray(planes[:, None])
    xs = [x]
    layers = prepared.layers[:-1] if upto is None else prepared.layers[:upto]
    for i, layer in enumerate(layers):
        out = np.empty((P, layer.c_out, H, W), np.uint8)
        numba_cpu.launch_hidden(x, prepared.lut(i, mode), layer.bias, layer.shift, layer.residual,
                                out, mode)
        x = out
        xs.append(x)
    return xs


def _layer_inputs(model, n: int, planes: np.ndarray) -> np.ndarray:
    """Codes entering layer ``n`` (computed with the Numba kernels, interp mode)."""
    from iqlut_gpu import backends

    return layer_inputs(backends.prepare(model), planes, upto=n)[n]


def _layer_check(model, n, x, planes, out_of):
    from iqlut_gpu import reference

    layer = model.layers[n]
    last = n == len(model.layers) - 1
    r = model.scale

    def check(out):
        out = out_of(out)
        _, _, H, W = x.shape
        (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = _crop_window(H, W, layer.k // 2 + 3)
        xc = np.ascontiguousarray(x[0, :, cy0:cy1, cx0:cx1])
        if last:
            ref = reference.last_layer(layer, xc, np.ascontiguousarray(planes[0, cy0:cy1, cx0:cx1]),
                                       r, model.upsample)
            want = ref[(y0 - cy0) * r:(y1 - cy0) * r, (x0 - cx0) * r:(x1 - cx0) * r]
            got = np.asarray(out[0, y0 * r:y1 * r, x0 * r:x1 * r])
        else:
            ref = reference.hidden_layer(layer, xc)
            want = ref[:, y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
            got = np.asarray(out[0, :, y0:y1, x0:x1])
        return {**_compare(got, want), "on": "central crop of plane 0 vs reference"}

    return check


def setup(case: Case) -> Run:
    """Inputs and the timed callable for ``case``. Raises ``Skip`` when it cannot run here."""
    frames = bench_frames(tuple(case.size), case.batch)
    planes = to_planes(frames)[0]
    r = case.scale
    if case.backend == "opencv":
        import cv2

        W, H = case.size

        def run():
            return [cv2.resize(f, (W * r, H * r), interpolation=cv2.INTER_CUBIC) for f in frames]

        return Run(run, notes={"cv2_threads": cv2.getNumThreads(),
                               "error": "not applicable: a different (non-learned) upscaler"})

    model = bench_model(r)
    if case.backend == "reference":
        from iqlut_gpu import reference

        return Run(lambda: reference.upscale_planes(model, planes),
                   notes={"error": "is the reference"})

    if case.backend in ("torch-cpu", "torch-cuda"):
        return _setup_torch(case, model, planes)

    from iqlut_gpu import backends

    reason = backends.probe(case.backend)
    if reason:
        raise Skip(reason)
    prep = backends.prepare(model)
    if case.backend == "cpu":
        from iqlut_gpu.kernels import numba_cpu

        if case.layer is None:  # the whole model as the API runs it, in one tile
            up = Upscaler(model=model, backend="cpu", mode=case.mode, tile=max(planes.shape))
            return Run(lambda: up.run_planes(planes),
                       check=_model_crop_check(model, planes, np.asarray, r))
        n = case.layer
        layer = model.layers[n]
        x = _layer_inputs(model, n, planes)
        P, _, H, W = x.shape
        if n < len(model.layers) - 1:
            out = np.empty((P, layer.c_out, H, W), np.uint8)

            def run():
                return numba_cpu.launch_hidden(x, prep.lut(n, case.mode), layer.bias, layer.shift,
                                               layer.residual, out, case.mode)
        else:
            out = np.empty((P, H * r, W * r), np.uint8)

            def run():
                return numba_cpu.launch_last(x, prep.lut(n, case.mode), layer.bias, layer.shift,
                                             planes, prep.up_off, prep.up_w, prep.up_den, out,
                                             case.mode)

        return Run(run, check=_layer_check(model, n, x, planes, np.asarray))
    return _setup_cuda(case, model, prep, planes)


class Skip(Exception):
    """The case cannot run on this machine; the message says why (recorded in the results)."""


def _setup_cuda(case, model, prep, planes) -> Run:
    import cupy

    from iqlut_gpu.kernels import cuda_backend

    r = case.scale
    stream = cupy.cuda.Stream(non_blocking=True)
    dev_planes = cupy.asarray(planes)
    tables = cuda_backend.device_tables(prep, case.mode)
    sync = stream.synchronize
    cupy.cuda.runtime.deviceSynchronize()  # uploads (null stream) done before the timed stream
    if case.layer is None:
        def run():
            return cuda_backend.run_planes(prep, dev_planes, case.mode, stream=stream)

        return Run(run, sync=sync, check=_model_crop_check(model, planes, cupy.asnumpy, r),
                   device_timer="cupy", stream=stream, notes={"stream": "non-blocking"})
    n = case.layer
    layer = model.layers[n]
    x_host = _layer_inputs(model, n, planes)
    x = cupy.asarray(x_host)
    P, _, H, W = x.shape
    if n < len(model.layers) - 1:
        out = cupy.empty((P, layer.c_out, H, W), cupy.uint8)

        def run():
            return cuda_backend.launch_hidden(x, tables(n), tables.bias(n), layer.shift,
                                              layer.residual, out, case.mode, stream=stream)
    else:
        out = cupy.empty((P, H * r, W * r), cupy.uint8)
        up_off, up_w = tables.up

        def run():
            return cuda_backend.launch_last(x, tables(n), tables.bias(n), layer.shift, dev_planes,
                                            up_off, up_w, prep.up_den, out, case.mode,
                                            stream=stream)

    cupy.cuda.runtime.deviceSynchronize()
    return Run(run, sync=sync, check=_layer_check(model, n, x_host, planes, cupy.asnumpy),
               device_timer="cupy", stream=stream)


def _setup_torch(case, model, planes) -> Run:
    try:
        import torch

        from iqlut_gpu.train.torch_forward import module_from_model
    except ImportError as e:
        raise Skip(f"PyTorch training forward not importable: {e}") from e
    device = "cuda" if case.backend == "torch-cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} sees no CUDA device")
    module = module_from_model(model, dtype=torch.float32).to(device)
    inp = torch.from_numpy(planes[:, None].astype(np.float32)).to(device)

    def run():
        with torch.inference_mode():
            return module(inp)

    def out_of(out):
        return np.rint(out[:, 0].float().cpu().numpy()).clip(0, 255).astype(np.uint8)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Run(run, sync=sync, check=_model_crop_check(model, planes, out_of, case.scale),
               device_timer="torch" if device == "cuda" else None,
               notes={"forward": "iqlut_gpu.train.torch_forward.module_from_model, float32",
                      "torch_threads": torch.get_num_threads()})
