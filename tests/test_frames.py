"""upscale_frames: batching is invisible (each frame equals upscale(frame)), lazy, validated."""

import argparse

import numpy as np
import pytest

import cases
from iqlut_gpu import Upscaler, default_model, upscale, upscale_frames
from iqlut_gpu.frames import StreamRunner, SyncRunner, generate


def mixed_frames(rng, n):
    """Frames whose layouts change along the stream: batches must split at each change."""
    shapes = [(9, 13, 3), (9, 13, 3), (9, 13, 3), (9, 13), (9, 13), (5, 7, 4), (9, 13, 3),
              (5, 7, 1), (9, 13, 3), (9, 13, 3)]
    return [rng.integers(0, 256, size=shapes[i % len(shapes)], dtype=np.int64).astype(np.uint8)
            for i in range(n)]


@pytest.mark.parametrize("batch, backend", [(1, "reference"), (3, "reference"), (16, "reference"),
                                            (4, "cpu")])
def test_each_frame_equals_upscale(batch, backend):
    for seed, rng in cases.case_rngs(2, salt=500 + batch):
        model = cases.random_model(rng)
        frames = mixed_frames(rng, 12)
        got = list(upscale_frames(iter(frames), model.scale, model=model, backend=backend,
                                  batch=batch))
        assert len(got) == len(frames), f"seed {seed}"
        for i, (frame, out) in enumerate(zip(frames, got)):
            want = upscale(frame, model.scale, model=model, backend="reference")
            assert out.shape == want.shape and out.dtype == np.uint8, f"seed {seed} frame {i}"
            assert np.array_equal(out, want), f"seed {seed} frame {i} batch {batch}"


def test_lazy_and_bounded_read_ahead():
    pulled = []

    def source():
        rng = np.random.default_rng(1)
        for i in range(50):
            pulled.append(i)
            yield rng.integers(0, 256, size=(6, 5, 3), dtype=np.int64).astype(np.uint8)

    it = upscale_frames(source(), 2, backend="reference", batch=4)
    assert pulled == []  # nothing is read before the first frame is asked for
    next(it)
    assert len(pulled) == 4
    for _ in range(4):
        next(it)
    assert len(pulled) == 8  # one batch beyond the frames handed out, never the whole stream


def test_empty_stream_and_stats():
    assert list(upscale_frames([], 2, backend="cpu")) == []
    stats = {}
    frames = [np.full((8, 8, 3), 7, np.uint8)] * 5
    out = list(upscale_frames(frames, 2, backend="cpu", batch=5, stats=stats))
    assert len(out) == 5 and all(o.shape == (16, 16, 3) for o in out)
    assert set(stats) == {"upload", "kernels", "download"}
    assert all(v >= 0 for v in stats.values()) and stats["kernels"] > 0


@pytest.mark.parametrize("bad, err", [
    ([np.zeros((4, 4, 3), np.float32)], TypeError),
    ([[[1, 2], [3, 4]]], TypeError),
    ([np.zeros((4, 4, 2), np.uint8)], ValueError),
    ([np.zeros((2, 4, 4, 3), np.uint8)], ValueError),
    ([np.zeros((0, 4, 3), np.uint8)], ValueError),
])
def test_bad_frames(bad, err):
    good = np.zeros((4, 4, 3), np.uint8)
    it = upscale_frames([good, *bad], 2, backend="reference", batch=1)
    assert next(it).shape == (8, 8, 3)  # frames before the bad one come out
    with pytest.raises(err, match="frame 1"):
        next(it)


@pytest.mark.parametrize("kw", [dict(batch=0), dict(batch=1.5), dict(scale=5), dict(mode="fast"),
                                dict(backend="tpu")])
def test_bad_arguments_raise_at_call(kw):
    args = dict(scale=2, backend="cpu", batch=2) | kw
    with pytest.raises(ValueError):
        upscale_frames([], **args)


def test_non_contiguous_and_negative_stride_frames():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, size=(20, 30, 3), dtype=np.int64).astype(np.uint8)
    views = [base[::2, ::3], base[::-1], base[:, ::-1, ::-1]]
    got = list(upscale_frames(views, 2, backend="cpu", batch=3))
    for v, g in zip(views, got):
        assert np.array_equal(g, upscale(np.ascontiguousarray(v), 2, backend="reference"))


class HostStreamer:
    """Stands in for a device streamer: like the CUDA one it takes whole frames
    [N, H, W, C] and either lends an output block of its own (every other batch here) or
    writes into one of its reused output buffers, whose results must be copied out before
    the buffer is reused (``reused``; depth 2 in flight)."""

    depth = 2
    takes_frames = True

    def __init__(self, model):
        from iqlut_gpu import backends

        self.model, self.backends = model, backends
        self.buffers = [None, None]
        self.turn = 0
        self.timings = dict.fromkeys(("upload", "kernels", "download"), 0.0)
        self.in_flight = 0
        self.max_in_flight = 0
        self.oom_sizes = ()
        self.lent = []

    def submit(self, frames):
        from iqlut_gpu.planes import from_planes, to_planes

        assert frames.ndim == 4
        if frames.shape[0] * frames.shape[3] in self.oom_sizes:
            raise MemoryError("device out of memory (simulated)")
        slot = self.turn % 2
        self.turn += 1
        planes, layout = to_planes(frames)
        out = from_planes(self.backends.run_planes("reference", self.model, planes), layout)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.turn % 2:
            self.lent.append(out)
            return out
        if self.buffers[slot] is None or self.buffers[slot].shape != out.shape:
            self.buffers[slot] = np.empty_like(out)
        self.buffers[slot][...] = out
        return slot

    def collect(self, token):
        self.in_flight -= 1
        return token if isinstance(token, np.ndarray) else self.buffers[token]

    def reused(self, out):
        return any(b is not None and np.shares_memory(out, b) for b in self.buffers)


def test_two_batches_in_flight_with_reused_buffers():
    """The seam for a streaming device runner: with two batches in flight and buffers that
    are overwritten, every frame still comes out right (grayscale ones too, whose result
    could otherwise alias the buffer)."""
    model = default_model(2)
    streamer = HostStreamer(model)
    streamer.oom_sizes = (8,)  # batches of 8 planes (two RGBA frames) "do not fit the device"
    fallback = SyncRunner(Upscaler(model=model, backend="reference", mode="interp"))
    rng = np.random.default_rng(9)
    frames = mixed_frames(rng, 14) + [np.full((6, 6, 4), 200, np.uint8)] * 2
    got = list(generate(lambda: StreamRunner(streamer, fallback), iter(frames), 2, None))
    assert streamer.max_in_flight == 2
    assert fallback.timings["kernels"] > 0  # the simulated out-of-memory batch went through it
    for i, (f, g) in enumerate(zip(frames, got)):
        assert np.array_equal(g, upscale(f, 2, backend="reference")), f"frame {i}"
    # lent blocks are handed out as they are, reused buffers' frames as copies
    in_lent = [any(np.shares_memory(g, b) for b in streamer.lent) for g in got]
    assert any(in_lent) and not all(in_lent)
    assert not any(streamer.reused(g) for g in got)


@pytest.mark.gpu
def test_cuda_stream_runner_matches_reference():
    """On a CUDA device: the two-stream pinned-buffer runner gives the reference's frames."""
    from iqlut_gpu.backends import probe

    reason = probe("cuda")
    if reason:
        pytest.skip(reason)
    for seed, rng in cases.case_rngs(2, salt=777):
        model = cases.random_model(rng)
        frames = mixed_frames(rng, 15)
        stats = {}
        got = list(upscale_frames(frames, model.scale, model=model, backend="cuda", batch=2,
                                  stats=stats))
        for i, (f, g) in enumerate(zip(frames, got)):
            assert np.array_equal(g, upscale(f, model.scale, model=model, backend="reference")), \
                f"seed {seed} frame {i}"
        assert stats["kernels"] > 0 and stats["upload"] > 0 and stats["download"] > 0


# The CUDA streamer itself (kernels/cuda_stream.CudaStreamer) runs without a GPU in
# tests/test_cuda_async.py, through the asynchronous CuPy stand-in: every wait it needs,
# pinned-memory fallback and pool growth, frames split and joined on the device.


def test_the_cuda_streamer_times_the_stages_the_runners_report():
    from iqlut_gpu import frames
    from iqlut_gpu.kernels import cuda_stream

    assert cuda_stream.STAGES == frames.STAGES


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_every_batch_option_is_one_check_with_one_message(bad, tmp_path):
    """frames.check_batch serves the frame stream, the video pipeline and both cluster
    APIs (checked before anything else: no file, no cluster needed) and the CLI."""
    from iqlut_gpu import cluster, video
    from iqlut_gpu.cli import CLIError
    from iqlut_gpu.cli.common import check_batch_arg
    from iqlut_gpu.frames import check_batch

    message = f"batch must be a positive integer, got {bad!r}"
    calls = [lambda: check_batch(bad),
             lambda: video.upscale_video(tmp_path / "in.mp4", tmp_path / "out.mp4", batch=bad),
             lambda: cluster.upscale_video(tmp_path / "in.mp4", tmp_path / "out.mp4", client=None,
                                           batch=bad),
             lambda: cluster.upscale_files([tmp_path], tmp_path / "out", client=None, batch=bad)]
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message
    with pytest.raises(CLIError) as e:
        check_batch_arg(argparse.Namespace(batch=bad))
    assert str(e.value) == "--" + message
    assert not any(tmp_path.iterdir())
