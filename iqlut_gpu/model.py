"""The IQ-LUT model and its file format.

A model is a chain of IQ-Blocks (see ``iqlut_gpu.reference`` for the arithmetic):

- layer 0 reads one 8-bit plane (``c_in == 1``);
- hidden layers write 8-bit code planes, optionally residual (``c_in == c_out``);
- the last layer writes ``scale**2`` residual planes that are added, pixel-shuffled, to a
  fixed integer upsample (``nearest``, ``bilinear`` or ``bicubic``) of the input plane.

File format (version 1, or 2 for a model with a self-ensemble): a safetensors file. No
pickle anywhere.

Tensors, for each layer ``i``::

    layers.{i}.knots  uint8  [c_in, L]              strictly increasing, 0 first, 255 last
    layers.{i}.table  int8   [c_in, L, k, k, c_out]
    layers.{i}.bias   int32  [c_out]

String metadata::

    format          "iqlut"
    format_version  "1"
    scale           "2" | "3" | "4"
    upsample        "nearest" | "bilinear" | "bicubic"
    layers          JSON list of {"c_in", "c_out", "k", "L", "shift", "residual"}
    trained         "true" | "false"
    provenance      optional JSON object (how the model was made; free-form)
    ensemble        optional, "2" | "4" | "8" (``iqlut_gpu.ensemble``: the output is the mean
                    over that many rotated/flipped passes); only in version 2 files, which
                    are written only for such models (a reader of version 1 refuses them
                    rather than computing something else). Absent: "1", one pass.

``load_model`` validates every field and raises ``ModelError`` (one clear line) on
anything wrong; nothing else in the package reads model files.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ensemble import ENSEMBLES
from .ensemble import check as check_ensemble
from .memo import IdentityMemo

FORMAT_NAME = "iqlut"
FORMAT_VERSION = 2  # the newest this build reads and writes
READS_VERSIONS = ("1", "2")
SCALES = (2, 3, 4)
UPSAMPLES = ("nearest", "bilinear", "bicubic")
MAX_CHANNELS = 64
MAX_K = 9
MAX_SHIFT = 24
MAX_ABS_BIAS = 1 << 24  # keeps every accumulator inside int32 (see Layer.__post_init__)
_MAX_HEADER = 1 << 20


_VARIANTS = IdentityMemo()  # Model.with_ensemble's memo: (base, n) -> variant


class ModelError(ValueError):
    """A model file or model object is invalid; the message says what and where."""


@dataclass(frozen=True, eq=False)
class Layer:
    """One IQ-Block: interpolated non-uniform lookup, expanded convolution, requantisation."""

    knots: np.ndarray  # uint8 [c_in, L]
    table: np.ndarray  # int8  [c_in, L, k, k, c_out]
    bias: np.ndarray  # int32 [c_out]
    shift: int = 0
    residual: bool = False

    @property
    def c_in(self) -> int:
        return int(self.table.shape[0])

    @property
    def L(self) -> int:  # noqa: N802 - the paper's name
        return int(self.table.shape[1])

    @property
    def k(self) -> int:
        return int(self.table.shape[2])

    @property
    def c_out(self) -> int:
        return int(self.table.shape[4])

    def spec(self) -> dict:
        return {"c_in": self.c_in, "c_out": self.c_out, "k": self.k, "L": self.L,
                "shift": int(self.shift), "residual": bool(self.residual)}

    def storage_bytes(self) -> int:
        """int8 table + uint8 knots + int32 bias."""
        return self.table.size + self.knots.size + 4 * self.c_out

    def ecnn_storage_bytes(self) -> int:
        """The same layer as ECNN stores it: 256 uniform knots (implicit), plain lookup."""
        return self.c_in * 256 * self.k * self.k * self.c_out + 4 * self.c_out


@dataclass(frozen=True, eq=False)
class Model:
    scale: int
    upsample: str
    layers: tuple[Layer, ...]
    trained: bool = False
    provenance: dict = field(default_factory=dict)
    ensemble: int = 1  # passes averaged over rotations/flips (iqlut_gpu.ensemble)

    def __post_init__(self):
        validate(self)

    def with_ensemble(self, n: int | None) -> "Model":
        """This model run as an n-pass self-ensemble (``None``: as it is). Memoised, so
        the backends' per-model preparation (tables, compiled kernels) happens once."""
        if n is None:
            return self
        n = check_ensemble(n)
        if n == self.ensemble:
            return self
        return _VARIANTS.get(self, lambda: Model(
            scale=self.scale, upsample=self.upsample, layers=self.layers, trained=self.trained,
            provenance=self.provenance, ensemble=n), n)

    @property
    def format_version(self) -> int:
        return 1 if self.ensemble == 1 else 2

    def storage_bytes(self) -> int:
        return sum(layer.storage_bytes() for layer in self.layers)

    def ecnn_storage_bytes(self) -> int:
        return sum(layer.ecnn_storage_bytes() for layer in self.layers)

    @property
    def receptive_radius(self) -> int:
        """How far (in input pixels) an output pixel can see: the tiling halo."""
        return sum(layer.k // 2 for layer in self.layers) + 2  # +2 for the bicubic base

    def describe(self) -> dict:
        return {
            "format_version": self.format_version,
            "scale": self.scale,
            "upsample": self.upsample,
            "trained": self.trained,
            "ensemble": self.ensemble,
            "layers": [layer.spec() for layer in self.layers],
            "knots": [[int(v) for v in layer.knots[0]] if layer.c_in == 1 else
                      [[int(v) for v in row] for row in layer.knots] for layer in self.layers],
            "storage_bytes": self.storage_bytes(),
            "ecnn_storage_bytes": self.ecnn_storage_bytes(),
            "ecnn_ratio": round(self.ecnn_storage_bytes() / self.storage_bytes(), 2),
            "provenance": self.provenance,
        }


# ---------------------------------------------------------------------------- validation


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelError(msg)


def validate(model: Model) -> None:
    """Raise ModelError unless ``model`` is a well-formed IQ-LUT model."""
    _check(model.scale in SCALES, f"scale must be one of {SCALES}, got {model.scale!r}")
    _check(model.upsample in UPSAMPLES,
           f"upsample must be one of {UPSAMPLES}, got {model.upsample!r}")
    _check(isinstance(model.ensemble, int) and not isinstance(model.ensemble, bool)
           and model.ensemble in ENSEMBLES,
           f"ensemble must be one of {ENSEMBLES}, got {model.ensemble!r}")
    _check(len(model.layers) >= 1, "a model needs at least one layer")
    _check(len(model.layers) <= 32, "a model has at most 32 layers")
    prev_c = 1
    for n, layer in enumerate(model.layers):
        where = f"layer {n}"
        for name, arr, dtype, ndim in (("knots", layer.knots, np.uint8, 2),
                                       ("table", layer.table, np.int8, 5),
                                       ("bias", layer.bias, np.int32, 1)):
            _check(isinstance(arr, np.ndarray), f"{where}: {name} must be a numpy array")
            _check(arr.dtype == dtype,
                   f"{where}: {name} must be {np.dtype(dtype).name}, got {arr.dtype}")
            _check(arr.ndim == ndim, f"{where}: {name} must have {ndim} dimensions, "
                   f"got shape {arr.shape}")
        c_in, L, k, k2, c_out = layer.table.shape
        _check(1 <= c_in <= MAX_CHANNELS and 1 <= c_out <= MAX_CHANNELS,
               f"{where}: channels must be 1..{MAX_CHANNELS}, got {c_in}->{c_out}")
        _check(k == k2 and k % 2 == 1 and 1 <= k <= MAX_K,
               f"{where}: window must be square and odd, 1..{MAX_K}, got {k}x{k2}")
        _check(2 <= L <= 256, f"{where}: L must be 2..256 knots, got {L}")
        _check(layer.knots.shape == (c_in, L),
               f"{where}: knots shape {layer.knots.shape} != ({c_in}, {L})")
        _check(layer.bias.shape == (c_out,),
               f"{where}: bias shape {layer.bias.shape} != ({c_out},)")
        _check(c_in == prev_c, f"{where}: c_in is {c_in} but the previous layer gives {prev_c}")
        kn = layer.knots.astype(np.int32)
        _check(bool(np.all(kn[:, 0] == 0)) and bool(np.all(kn[:, -1] == 255)),
               f"{where}: knots must start at 0 and end at 255")
        _check(bool(np.all(np.diff(kn, axis=1) > 0)), f"{where}: knots must be strictly increasing")
        _check(isinstance(layer.shift, (int, np.integer)) and 0 <= layer.shift <= MAX_SHIFT,
               f"{where}: shift must be an integer 0..{MAX_SHIFT}, got {layer.shift!r}")
        _check(isinstance(layer.residual, (bool, np.bool_)),
               f"{where}: residual must be a bool, got {layer.residual!r}")
        _check(not layer.residual or c_in == c_out,
               f"{where}: a residual layer needs c_in == c_out, got {c_in}->{c_out}")
        _check(bool(np.all(np.abs(layer.bias.astype(np.int64)) <= MAX_ABS_BIAS)),
               f"{where}: |bias| must be <= {MAX_ABS_BIAS}")
        prev_c = c_out
    last = model.layers[-1]
    r2 = model.scale * model.scale
    _check(last.c_out == r2, f"the last layer must have scale**2 = {r2} outputs, got {last.c_out}")
    _check(not last.residual, "the last layer cannot be residual (it adds to the upsample)")


# ---------------------------------------------------------------------------- file I/O


def _meta(model: Model) -> dict[str, str]:
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(model.format_version),
        "scale": str(model.scale),
        "upsample": model.upsample,
        "layers": json.dumps([layer.spec() for layer in model.layers]),
        "trained": "true" if model.trained else "false",
        "provenance": json.dumps(model.provenance, sort_keys=True),
    }
    if model.ensemble != 1:
        meta["ensemble"] = str(model.ensemble)
    return meta


def model_to_bytes(model: Model) -> bytes:
    from safetensors.numpy import save

    tensors = {}
    for n, layer in enumerate(model.layers):
        tensors[f"layers.{n}.knots"] = np.ascontiguousarray(layer.knots)
        tensors[f"layers.{n}.table"] = np.ascontiguousarray(layer.table)
        tensors[f"layers.{n}.bias"] = np.ascontiguousarray(layer.bias)
    return save(tensors, metadata=_meta(model))


def save_model(model: Model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (temporary file, then rename)."""
    from .io import atomic_write_bytes

    atomic_write_bytes(Path(path), model_to_bytes(model))


def _parse_header(data: bytes) -> dict:
    _check(len(data) >= 8, "file too short to be a model (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    _check(0 < n <= _MAX_HEADER and 8 + n <= len(data),
           "bad safetensors header length (truncated or not a model file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError("safetensors header is not valid JSON (corrupt file?)") from None
    _check(isinstance(header, dict), "safetensors header is not a JSON object")
    return header


def _int_field(spec: dict, key: str, where: str) -> int:
    v = spec.get(key)
    _check(isinstance(v, int) and not isinstance(v, bool), f"{where}: '{key}' must be an integer")
    return v


def model_from_bytes(data: bytes, source: str = "<bytes>") -> Model:
    """Parse and validate a model file's bytes. Raises ModelError on anything wrong."""
    try:
        return _model_from_bytes(data)
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from None


def _model_from_bytes(data: bytes) -> Model:
    header = _parse_header(data)
    meta = header.get("__metadata__")
    _check(isinstance(meta, dict), "no metadata: not an IQ-LUT model file")
    _check(meta.get("format") == FORMAT_NAME, "not an IQ-LUT model file (metadata 'format')")
    version = meta.get("format_version")
    _check(version in READS_VERSIONS, f"unsupported format version {version!r} "
           f"(this build reads {', '.join(READS_VERSIONS)})")
    ens = meta.get("ensemble", "1")
    _check(ens in [str(n) for n in ENSEMBLES], f"'ensemble' must be one of {ENSEMBLES}, got {ens!r}")
    _check(ens == "1" or version != "1", "'ensemble' needs format version 2")
    try:
        scale = int(meta.get("scale", ""))
    except ValueError:
        raise ModelError(f"bad scale {meta.get('scale')!r}") from None
    trained = meta.get("trained", "false")
    _check(trained in ("true", "false"), f"'trained' must be true or false, got {trained!r}")
    try:
        specs = json.loads(meta.get("layers", ""))
        provenance = json.loads(meta.get("provenance", "{}"))
    except json.JSONDecodeError:
        raise ModelError("metadata 'layers' or 'provenance' is not valid JSON") from None
    _check(isinstance(specs, list) and 1 <= len(specs) <= 32, "'layers' must list 1..32 layers")
    _check(isinstance(provenance, dict), "'provenance' must be a JSON object")

    expected = {}
    for n, spec in enumerate(specs):
        where = f"layer {n}"
        _check(isinstance(spec, dict), f"{where}: spec must be an object")
        c_in, c_out, k, L = (_int_field(spec, key, where) for key in ("c_in", "c_out", "k", "L"))
        _check(1 <= c_in <= MAX_CHANNELS and 1 <= c_out <= MAX_CHANNELS and 1 <= k <= MAX_K
               and 2 <= L <= 256, f"{where}: sizes out of range {spec}")
        expected[f"layers.{n}.knots"] = ("U8", [c_in, L])
        expected[f"layers.{n}.table"] = ("I8", [c_in, L, k, k, c_out])
        expected[f"layers.{n}.bias"] = ("I32", [c_out])
    names = set(header) - {"__metadata__"}
    _check(names == set(expected), f"tensors {sorted(names)} do not match the layer list "
           f"(expected {sorted(expected)})")
    for name, (dtype, shape) in expected.items():
        info = header[name]
        _check(isinstance(info, dict), f"{name}: bad tensor entry")
        _check(info.get("dtype") == dtype, f"{name}: dtype must be {dtype}, got {info.get('dtype')}")
        _check(info.get("shape") == shape, f"{name}: shape must be {shape}, got {info.get('shape')}")

    try:
        from safetensors.numpy import load

        arrays = load(data)
    except Exception as e:  # safetensors raises its own error type on corrupt data
        raise ModelError(f"corrupt tensor data ({str(e).splitlines()[0][:200]})") from None

    layers = []
    for n, spec in enumerate(specs):
        shift = _int_field(spec, "shift", f"layer {n}")
        residual = spec.get("residual")
        _check(isinstance(residual, bool), f"layer {n}: 'residual' must be true or false")
        layers.append(Layer(knots=arrays[f"layers.{n}.knots"], table=arrays[f"layers.{n}.table"],
                            bias=arrays[f"layers.{n}.bias"], shift=shift, residual=residual))
    return Model(scale=scale, upsample=meta.get("upsample", ""), layers=tuple(layers),
                 trained=trained == "true", provenance=provenance, ensemble=int(ens))


def load_model(path: str | os.PathLike) -> Model:
    """Read and validate a model file; raises ModelError with the path on any problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        _check(size <= 256 << 20, f"{path}: too large for a model file ({size} bytes)")
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model {path}: {e.strerror or e}") from None
    return model_from_bytes(data, source=str(path))


# ---------------------------------------------------------------------------- defaults


def default_model_path(scale: int) -> Path:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return Path(__file__).with_name("models") / f"iqlut_x{scale}.safetensors"


_DEFAULT_CACHE: dict[int, Model] = {}


def default_model(scale: int = 4) -> Model:
    """The shipped default model for ``scale`` (2, 3 or 4)."""
    if scale not in _DEFAULT_CACHE:
        _DEFAULT_CACHE[scale] = load_model(default_model_path(scale))
    return _DEFAULT_CACHE[scale]


# The shipped models' architecture: the starting point of docs/design.md, "Starting
# architecture": 1->8 (k=5), 8->8 (k=3, residual) x2, 8->r*r (k=3), with L = 17 knots in
# the first layer and 16 in the others
# (all-17 is 14.9x smaller than ECNN; 17/16/16/16 is 15.6-15.7x, past the 15x goal).
DEFAULT_ARCH = (
    dict(c_in=1, c_out=8, k=5, L=17, residual=False),
    dict(c_in=8, c_out=8, k=3, L=16, residual=True),
    dict(c_in=8, c_out=8, k=3, L=16, residual=True),
    dict(c_in=8, c_out=None, k=3, L=16, residual=False),  # c_out = scale**2
)


def uniform_knots(c_in: int, L: int) -> np.ndarray:
    """L knots spread evenly over 0..255 (rounded), the same for every channel."""
    row = np.round(np.linspace(0, 255, L)).astype(np.uint8)
    return np.tile(row, (c_in, 1))


def zero_model(scale: int, arch=DEFAULT_ARCH, upsample: str = "bicubic", shift: int = 8) -> Model:
    """An untrained model with zero tables: its output is exactly the fixed upsample."""
    layers = []
    for spec in arch:
        c_out = spec["c_out"] or scale * scale
        layers.append(Layer(knots=uniform_knots(spec["c_in"], spec["L"]),
                            table=np.zeros((spec["c_in"], spec["L"], spec["k"], spec["k"], c_out),
                                           np.int8),
                            bias=np.zeros(c_out, np.int32), shift=shift,
                            residual=spec["residual"]))
    return Model(scale=scale, upsample=upsample, layers=tuple(layers), trained=False,
                 provenance={"note": "untrained: zero tables, output equals the fixed upsample"})
