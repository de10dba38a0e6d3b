"""Fuzz the model loader: truncations, byte flips and random metadata always give ModelError."""

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iqlut_gpu
from iqlut_gpu import ModelError
from iqlut_gpu.model import model_from_bytes, model_to_bytes

VALID = model_to_bytes(iqlut_gpu.default_model(2))
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def load_or_model_error(data: bytes):
    """The only acceptable outcomes: a valid Model, or ModelError."""
    try:
        model = model_from_bytes(data)
    except ModelError as e:
        assert str(e) and "\n" not in str(e)
        return None
    return model


@FUZZ
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_truncation(cut):
    assert load_or_model_error(VALID[:cut]) is None


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_byte_flips(flips):
    data = bytearray(VALID)
    for pos, mask in flips:
        data[pos] ^= mask
    model = load_or_model_error(bytes(data))
    if model is not None:  # flips inside the tables can still leave a valid model: it must run
        iqlut_gpu.upscale(np.zeros((2, 3), np.uint8), 2, model=model, backend="reference")


def _header(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)


@FUZZ
@given(st.sampled_from(["format", "format_version", "scale", "upsample", "layers", "trained", "provenance"]),
       json_values, st.booleans())
def test_random_metadata(key, value, as_json_text):
    header, body = _header(VALID)
    meta = header["__metadata__"]
    meta[key] = json.dumps(value) if as_json_text else (value if isinstance(value, str) else json.dumps(value))
    raw = json.dumps(header).encode()
    load_or_model_error(struct.pack("<Q", len(raw)) + raw + body)


@FUZZ
@given(st.integers(0, 5), st.sampled_from(["c_in", "c_out", "k", "L", "shift", "residual"]), json_values)
def test_random_layer_fields(n, key, value):
    header, body = _header(VALID)
    specs = json.loads(header["__metadata__"]["layers"])
    specs[n % len(specs)][key] = value
    header["__metadata__"]["layers"] = json.dumps(specs)
    raw = json.dumps(header).encode()
    load_or_model_error(struct.pack("<Q", len(raw)) + raw + body)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data):
    assert load_or_model_error(data) is None


@pytest.mark.parametrize("length", [0, 1 << 62, len(VALID)])
def test_absurd_header_lengths(length):
    data = struct.pack("<Q", length) + VALID[8:]
    assert load_or_model_error(data) is None


def test_no_pickle_in_the_package():
    """Model files are safetensors only; nothing in the package (training included) unpickles."""
    import pathlib

    import iqlut_gpu.kernels
    import iqlut_gpu.train

    roots = {pathlib.Path(m.__file__).parent for m in (iqlut_gpu, iqlut_gpu.kernels, iqlut_gpu.train)}
    for root in roots:
        for path in root.rglob("*.py"):
            text = path.read_text()
            for bad in ("import pickle", "pickle.load", "weights_only=False"):
                assert bad not in text, f"{path}: {bad}"
