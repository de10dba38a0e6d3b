"""Golden outputs: the shipped models on the bundled photo, pinned by SHA-256.

Every other test compares backends with the reference on the same run; these pin the
outputs themselves across refactors (the pipeline, the kernels, tiling, the ensemble), so
that "bit-identical to before" is checked, not assumed. A deliberate change of the
arithmetic or of a shipped model's tables regenerates them:
``python tests/test_golden.py --write`` (and says why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("data") / "golden_outputs.json"
PHOTO = ROOT / "iqlut_gpu" / "data" / "astronaut_256.png"


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return f"{hashlib.sha256(a.tobytes()).hexdigest()[:32]} {'x'.join(map(str, a.shape))}"


def _cases():
    """name -> (scale, image, ensemble, tile): colour and gray crops, one and four passes,
    and a tiled run."""
    from iqlut_gpu.io import read_image

    photo = read_image(PHOTO)[..., :3]
    rgb = np.ascontiguousarray(photo[40:112, 60:156])
    gray = np.ascontiguousarray(rgb[..., 1])
    out = {}
    for s in (2, 3, 4):
        out[f"x{s} rgb 1 pass"] = (s, rgb, 1, None)
        out[f"x{s} gray 1 pass"] = (s, gray, 1, None)
        out[f"x{s} rgb 4 passes"] = (s, rgb, 4, None)
        out[f"x{s} rgb 1 pass tiled"] = (s, rgb, 1, 40)
    return out


def outputs(backend: str = "cpu") -> dict:
    from iqlut_gpu import Upscaler

    return {name: _digest(Upscaler(s, backend=backend, ensemble=n, tile=tile)(img))
            for name, (s, img, n, tile) in _cases().items()}


@pytest.mark.parametrize("mode", ["interp", "expanded"])
def test_shipped_models_give_the_golden_outputs(mode):
    from iqlut_gpu import Upscaler

    want = json.loads(GOLDEN.read_text())
    assert set(want) == set(_cases())
    for name, (s, img, n, tile) in _cases().items():
        got = _digest(Upscaler(s, backend="cpu", mode=mode, ensemble=n, tile=tile)(img))
        assert got == want[name], f"{name} ({mode}): output changed"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write   (regenerates the golden outputs)")
    GOLDEN.write_text(json.dumps(outputs(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
