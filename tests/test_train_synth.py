"""The synthetic screen-content generator of the fine-tuning example (train/synth_screen.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from iqlut_gpu.train import synth_screen


def test_screens_are_a_function_of_seed_and_number(tmp_path):
    a = synth_screen.screen(5, 0, 320, 200)
    assert a.shape == (200, 320, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, synth_screen.screen(5, 0, 320, 200))
    assert not np.array_equal(a, synth_screen.screen(5, 1, 320, 200))
    assert not np.array_equal(a, synth_screen.screen(6, 0, 320, 200))
    # screen content: many exact repeats (flat UI) and sharp edges, anti-aliased text
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50
    assert np.abs(np.diff(a.astype(int), axis=1)).max() > 100
    paths = synth_screen.write(tmp_path / "out", 2, 5, 320, 200)
    assert [p.name for p in paths] == ["screen_000.png", "screen_001.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[0])), a)
    assert synth_screen.main([str(tmp_path / "cli"), "--count", "1", "--size", "200x150"]) == 0
    assert Image.open(tmp_path / "cli" / "screen_000.png").size == (200, 150)
