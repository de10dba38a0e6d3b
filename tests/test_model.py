"""The model file: round trip, storage figures, and the loader's clear errors."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

import cases
from iqlut_gpu import ModelError, load_model, save_model
from iqlut_gpu.model import DEFAULT_ARCH, Layer, Model, model_from_bytes, model_to_bytes, zero_model


def split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def with_meta(data: bytes, **changes) -> bytes:
    header, body = split(data)
    header["__metadata__"].update(changes)
    return join(header, body)


def with_layer_spec(data: bytes, n: int, **changes) -> bytes:
    header, body = split(data)
    specs = json.loads(header["__metadata__"]["layers"])
    specs[n].update(changes)
    header["__metadata__"]["layers"] = json.dumps(specs)
    return join(header, body)


def tensors_of(model):
    out = {}
    for n, layer in enumerate(model.layers):
        out.update({f"layers.{n}.knots": layer.knots, f"layers.{n}.table": layer.table,
                    f"layers.{n}.bias": layer.bias})
    return out


def rebuild(data: bytes, **tensor_changes) -> bytes:
    """Same metadata, some tensors replaced (as a writer that does not validate would)."""
    header, _ = split(data)
    model = model_from_bytes(data)
    tensors = tensors_of(model)
    tensors.update(tensor_changes)
    return save(tensors, metadata=header["__metadata__"])


@pytest.fixture
def valid():
    rng = np.random.default_rng()
    return model_to_bytes(cases.random_model(rng, scale=2))


def test_round_trip_is_exact(tmp_path):
    for seed, rng in cases.case_rngs(5, salt=3):
        model = cases.random_model(rng)
        path = tmp_path / "m.safetensors"
        save_model(model, path)
        back = load_model(path)
        assert (back.scale, back.upsample) == (model.scale, model.upsample), seed
        for a, b in zip(model.layers, back.layers):
            assert a.spec() == b.spec(), seed
            for name in ("knots", "table", "bias"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), (seed, name)
        assert not list(tmp_path.glob(".*part*")), "temporary file left behind"


def test_storage_matches_design_figures():
    # docs/design.md, "Starting architecture" (L = 17 everywhere) at x4: 43,153 B vs ECNN 641,184 B
    all17 = tuple(dict(spec, L=17) for spec in DEFAULT_ARCH)
    model = zero_model(4, arch=all17)
    assert model.storage_bytes() == 43_153
    assert model.ecnn_storage_bytes() == 641_184
    # the shipped architecture (L = 17, 16, 16, 16) is at least 15x smaller than ECNN
    for scale in (2, 3, 4):
        shipped = zero_model(scale)
        assert shipped.ecnn_storage_bytes() >= 15 * shipped.storage_bytes()
    assert zero_model(4).storage_bytes() == 40_825 <= 64 * 1024


def test_valid_bytes_load(valid):
    assert model_from_bytes(valid).scale == 2


@pytest.mark.parametrize("change,fragment", [
    (dict(format_version="3"), "unsupported format version '3'"),
    (dict(format="other"), "not an IQ-LUT model"),
    (dict(scale="5"), "scale must be one of"),
    (dict(scale="x"), "bad scale"),
    (dict(upsample="lanczos"), "upsample must be one of"),
    (dict(trained="maybe"), "'trained' must be true or false"),
    (dict(layers="[not json"), "not valid JSON"),
    (dict(layers="[]"), "1..32 layers"),
])
def test_bad_metadata(valid, change, fragment):
    with pytest.raises(ModelError, match=fragment.replace("(", r"\(")):
        model_from_bytes(with_meta(valid, **change))


def test_wrong_version_message_is_one_clear_line(valid):
    with pytest.raises(ModelError) as e:
        model_from_bytes(with_meta(valid, format_version="99"), source="m.safetensors")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("m.safetensors:") and "reads 1" in msg


def test_bad_shapes_in_spec(valid):
    k = model_from_bytes(valid).layers[0].k
    with pytest.raises(ModelError, match="shape must be"):
        model_from_bytes(with_layer_spec(valid, 0, k=k + 2))
    with pytest.raises(ModelError, match="sizes out of range"):
        model_from_bytes(with_layer_spec(valid, 0, k=0))
    with pytest.raises(ModelError, match="must be an integer"):
        model_from_bytes(with_layer_spec(valid, 0, shift="3"))


def test_bad_shift_and_residual_fields(valid):
    with pytest.raises(ModelError, match="shift must be an integer 0..24"):
        model_from_bytes(with_layer_spec(valid, 0, shift=99))
    with pytest.raises(ModelError, match="'residual' must be true or false"):
        model_from_bytes(with_layer_spec(valid, 0, residual="yes"))


def test_non_increasing_knots(valid):
    model = model_from_bytes(valid)
    knots = model.layers[0].knots.copy()
    if knots.shape[1] > 2:
        knots[0, 1] = knots[0, 2]
    else:
        knots[0, 0] = 1
    with pytest.raises(ModelError, match="knots must (be strictly increasing|start at 0)"):
        model_from_bytes(rebuild(valid, **{"layers.0.knots": knots}))
    bad_end = model.layers[0].knots.copy()
    bad_end[:, -1] = 254
    with pytest.raises(ModelError, match="start at 0 and end at 255"):
        model_from_bytes(rebuild(valid, **{"layers.0.knots": bad_end}))


def test_wrong_dtypes(valid):
    model = model_from_bytes(valid)
    with pytest.raises(ModelError, match="dtype must be I8"):
        model_from_bytes(rebuild(valid, **{"layers.0.table": model.layers[0].table.astype(np.int16)}))
    with pytest.raises(ModelError, match="dtype must be U8"):
        model_from_bytes(rebuild(valid, **{"layers.0.knots": model.layers[0].knots.astype(np.float32)}))
    with pytest.raises(ModelError, match="dtype must be I32"):
        model_from_bytes(rebuild(valid, **{"layers.0.bias": model.layers[0].bias.astype(np.int64)}))


def test_missing_and_extra_tensors(valid):
    header, body = split(valid)
    del header["layers.0.bias"]
    with pytest.raises(ModelError, match="do not match the layer list"):
        model_from_bytes(join(header, body))
    with pytest.raises(ModelError, match="do not match the layer list"):
        model_from_bytes(rebuild(valid, extra=np.zeros(3, np.uint8)))


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1, -100])
def test_truncated_files(valid, cut, tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(valid[:cut] if cut >= 0 else valid[:len(valid) + cut])
    with pytest.raises(ModelError) as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_not_a_model_and_missing_file(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ModelError):
        load_model(p)
    with pytest.raises(ModelError, match="cannot read model"):
        load_model(tmp_path / "missing.safetensors")


def _layer(c_in, c_out, residual=False, k=1, L=2):
    return Layer(knots=np.tile(np.array([0, 255], np.uint8), (c_in, 1))[:, :L],
                 table=np.zeros((c_in, L, k, k, c_out), np.int8), bias=np.zeros(c_out, np.int32),
                 shift=0, residual=residual)


def test_residual_needs_equal_channels():
    with pytest.raises(ModelError, match="residual layer needs c_in == c_out"):
        Model(scale=2, upsample="bicubic", layers=(_layer(1, 3, residual=True), _layer(3, 4)))


def test_residual_with_unequal_channels_in_a_file():
    data = model_to_bytes(zero_model(2))  # layer 0 is 1 -> 8
    with pytest.raises(ModelError, match="layer 0: a residual layer needs c_in == c_out"):
        model_from_bytes(with_layer_spec(data, 0, residual=True))


def test_chain_and_last_layer_rules():
    with pytest.raises(ModelError, match="c_in is 2 but the previous layer gives 1"):
        Model(scale=2, upsample="bicubic", layers=(_layer(2, 4),))
    with pytest.raises(ModelError, match="scale\\*\\*2 = 9 outputs"):
        Model(scale=3, upsample="bicubic", layers=(_layer(1, 4),))
    with pytest.raises(ModelError, match="must be int8"):
        Model(scale=2, upsample="bicubic", layers=(Layer(
            knots=np.array([[0, 255]], np.uint8), table=np.zeros((1, 2, 1, 1, 4), np.int16),
            bias=np.zeros(4, np.int32)),))
