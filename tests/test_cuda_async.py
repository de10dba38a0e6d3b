"""The CUDA glue under asynchrony, without a GPU: CuPy replaced by tests/cuda_emu/fake_cupy.py,
whose streams run work only when something waits for it and whose race detector raises
``RaceError`` for any access no event or synchronisation orders.

- every synchronisation the glue performs is needed: the whole-pipeline scenario passes,
  and fails with each one of them turned into a no-op in turn (parametrised over the
  call sites the scenario hits, found by running it);
- the model's tables are complete before another stream or thread reads them;
- DLPack input is handed over on the stream the work runs on;
- pinned memory that runs out (``CUDARuntimeError``) falls back to pageable memory, and a
  stream of changing frame sizes does not grow the pinned pool with every shape;
- the stream runner splits and joins frames on the device.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import cases
from cuda_emu import fake_cupy, harness
from iqlut_gpu import Upscaler, backends, upscale
from iqlut_gpu.backends import Prepared
from iqlut_gpu.frames import StreamRunner, SyncRunner, generate
from iqlut_gpu.kernels import cuda_backend, cuda_stream

pytestmark = harness.pytest_marks()



@pytest.fixture(scope="module")
def model():
    seed, rng = next(cases.case_rngs(1, salt=4100))
    return cases.random_model(rng, scale=2)


def _frames(rng, shapes):
    return [rng.integers(0, 256, size=s, dtype=np.int64).astype(np.uint8) for s in shapes]


class TorchLike:
    """A DLPack producer with pending work on its own stream (as a torch CUDA tensor whose
    kernel has not finished): ``__dlpack__(stream=n)`` makes stream n wait for it."""

    def __init__(self, cupy, values):
        self.stream = cupy.new_stream()
        self.arr = cupy.empty(values.shape, values.dtype)
        cupy.enqueue_write(self.stream, self.arr, values)
        self.seen = []

    def __dlpack_device__(self):
        return (fake_cupy.CUDA_DEVICE, 0)

    def __dlpack__(self, stream=None, **kw):
        self.seen.append(stream)
        if stream is not None:
            fake_cupy.wait_for(stream, self.stream)
        return self.arr.view(np.ndarray).__dlpack__()


def scenario(cupy, model, monkeypatch):
    """The glue end to end: streamed frames (one batch abandoned after its upload, so the
    slot is reused with the batch pending), numpy planes in and out, and DLPack images
    from a producer with pending work. Raises (RaceError, AssertionError) when wrong."""
    rng = np.random.default_rng()
    calls = {"n": 0}
    real = cuda_backend.run_planes

    def flaky(prepared, planes, mode="interp", stream=None):
        calls["n"] += 1
        if calls["n"] == 3:  # after the batch's upload was queued
            raise backends.DeviceOutOfMemory("simulated: no device memory for batch 3")
        return real(prepared, planes, mode, stream)

    monkeypatch.setattr(cuda_backend, "run_planes", flaky)
    up = Upscaler(model=model, backend="cuda", mode="interp")
    frames = _frames(rng, [(7, 9, 3)] * 5 + [(5, 6, 3)] * 3 + [(7, 9)] * 2)
    streamer = cuda_stream.CudaStreamer(backends.prepare(model), "interp")
    got = list(generate(lambda: StreamRunner(streamer, SyncRunner(up)), iter(frames), 2, None))
    assert calls["n"] >= 4
    for i, (f, g) in enumerate(zip(frames, got)):
        assert np.array_equal(g, upscale(f, model.scale, model=model, backend="reference")), \
            f"streamed frame {i}"

    planes = rng.integers(0, 256, size=(2, 6, 7), dtype=np.int64).astype(np.uint8)
    out = backends.run_planes("cuda", model, planes, "expanded")
    assert np.array_equal(out, backends.run_planes("reference", model, planes)), "numpy planes"

    image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.int64).astype(np.uint8)
    producer = TorchLike(cupy, image)
    stream = cupy.cuda.Stream(non_blocking=True)
    res = cuda_backend.upscale_device(producer, Prepared(model), "interp", stream=stream)
    host = cupy.asnumpy(res, stream=stream)
    assert np.array_equal(host, upscale(image, model.scale, model=model, backend="reference")), \
        "DLPack image"


def _sites(cupy, model, monkeypatch):
    with monkeypatch.context() as m:
        scenario(cupy, model, m)
    return cupy.sync_sites()


def test_the_scenario_passes_and_hits_every_kind_of_wait(cupy, model, monkeypatch):
    sites = _sites(cupy, model, monkeypatch)
    where = {s.split(":")[0] + " " + s.split("(")[1].split(":")[0] for s in sites}
    assert where >= {"kernels/cuda_backend.py upload", "kernels/cuda_stream.py submit",
                     "kernels/cuda_stream.py collect"}, sites


def _collect_sites():
    """The sync sites of the scenario, found by running it once with the stand-in (at
    collection time, so that the next test can be parametrised over them)."""
    mp = pytest.MonkeyPatch()
    try:
        fake = fake_cupy.install(mp)
        mp.delenv(backends.ENV_VAR, raising=False)
        seed, rng = next(cases.case_rngs(1, salt=4100))
        return _sites(fake, cases.random_model(rng, scale=2), mp)
    except Exception as e:  # no compiler etc.: the test below then reports it
        return [f"(the scenario failed: {type(e).__name__}: {e})"]
    finally:
        mp.undo()
        backends.reset()


@pytest.mark.parametrize("site", _collect_sites() if harness.find_compiler() else ["(no compiler)"])
def test_removing_any_one_wait_makes_the_scenario_fail(cupy, model, monkeypatch, site):
    assert not site.startswith("("), site
    cupy.disable_sync_site(site)
    with pytest.raises((fake_cupy.RaceError, AssertionError, fake_cupy.CUDARuntimeError)):
        scenario(cupy, model, monkeypatch)


def test_tables_are_complete_before_other_streams_and_threads_read_them(cupy, model):
    prepared = Prepared(model)
    planes = np.random.default_rng().integers(0, 256, (2, 5, 6), dtype=np.int64).astype(np.uint8)
    want = backends.run_planes("reference", model, planes)
    first = cupy.cuda.Stream(non_blocking=True)
    with first:  # the upload happens while another stream is current
        tables = cuda_backend.device_tables(prepared, "interp")
    results = {}

    def other_thread():  # its current stream is the legacy default stream
        results["thread"] = cuda_backend.run_planes(prepared, planes, "interp")

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    second = cupy.cuda.Stream(non_blocking=True)
    with second:  # (uploaded on the legacy stream, the planes would race: the stand-in says so)
        dev = cupy.asarray(planes)
    out = cuda_backend.run_planes(prepared, dev, "interp", stream=second)
    assert cuda_backend.device_tables(prepared, "interp") is tables
    assert np.array_equal(results["thread"], want)
    assert np.array_equal(cupy.asnumpy(out, stream=second), want)


def test_dlpack_producer_gets_the_stream_the_work_runs_on(cupy, model):
    image = np.random.default_rng().integers(0, 256, (5, 7, 3), dtype=np.int64).astype(np.uint8)
    want = upscale(image, model.scale, model=model, backend="reference")
    stream = cupy.cuda.Stream(non_blocking=True)
    producer = TorchLike(cupy, image)
    out = cuda_backend.upscale_device(producer, Prepared(model), "interp", stream=stream)
    assert producer.seen == [stream.ptr]  # not 1, the legacy stream
    assert np.array_equal(cupy.asnumpy(out, stream=stream), want)
    # no stream given: the current stream is handed over and used
    producer = TorchLike(cupy, image)
    with stream:
        out = upscale(producer, model.scale, model=model, backend="cuda")
    assert producer.seen == [stream.ptr]
    assert np.array_equal(cupy.asnumpy(out, stream=stream), want)


def test_the_stand_in_catches_a_handshake_on_the_wrong_stream(cupy, model):
    """What upscale_device did before: DLPack taken on the legacy stream, work queued on
    another stream: the producer's pending write is read unordered."""
    stream = cupy.cuda.Stream(non_blocking=True)
    producer = TorchLike(cupy, np.zeros((4, 4, 3), np.uint8))
    arr = cupy.from_dlpack(producer)  # outside ``with stream``
    with pytest.raises(fake_cupy.RaceError, match="producer's write"):
        cuda_backend.upscale_device(arr, Prepared(model), "interp", stream=stream)


def _stream_frames(model, frames, batch=2):
    up = Upscaler(model=model, backend="cuda", mode="interp")
    streamer = cuda_stream.CudaStreamer(backends.prepare(model), "interp")
    runner = StreamRunner(streamer, SyncRunner(up))
    stats = {}
    got = list(generate(lambda: runner, iter(frames), batch, stats))
    for i, (f, g) in enumerate(zip(frames, got)):
        assert np.array_equal(g, upscale(f, model.scale, model=model, backend="reference")), i
    return streamer, stats


def test_pinned_memory_exhaustion_falls_back_to_pageable_memory(cupy, model):
    cupy.set_pinned_limit(0)  # cudaHostAlloc fails: CUDARuntimeError, not MemoryError
    with pytest.raises(fake_cupy.CUDARuntimeError):
        cupy.cupyx.empty_pinned((16,), np.uint8)
    assert not issubclass(fake_cupy.CUDARuntimeError, MemoryError)
    frames = _frames(np.random.default_rng(), [(6, 7, 3)] * 3 + [(5, 5)] * 2)
    streamer, stats = _stream_frames(model, frames)
    assert all(not slot.pinned for slot in streamer._slots)
    assert stats["kernels"] > 0


def test_changing_frame_sizes_do_not_grow_the_pinned_pool(cupy, model):
    rng = np.random.default_rng()
    shapes = [(int(h), int(w), 3) for h, w in rng.integers(40, 90, size=(14, 2))]
    shapes.append((90, 90, 3))
    frames = [f for s in shapes for f in _frames(rng, [s, s])]
    _stream_frames(model, frames)
    r = model.scale
    biggest = 2 * 90 * 90 * 3 * (1 + r * r)  # one batch in and out
    # two slots, each buffer at most twice what it holds, plus what a doubling left behind;
    # and the lent output blocks the caller keeps (list()), each at most twice a batch out
    lent = cuda_stream.LEND_MAX * 2 * (2 * 90 * 90 * 3 * r * r)
    assert cupy.pinned_pool_bytes() <= 2 * 4 * biggest + lent, cupy.pinned_pool_bytes()


def test_a_stream_of_changing_sizes_leaves_no_lent_blocks_of_each_size(cupy, model):
    """Frames dropped at once, sizes changing (a folder of photos of many sizes): the pool
    ends with the slots' buffers and the lent blocks of the last size, not blocks of every
    size seen."""
    rng = np.random.default_rng()
    r = model.scale
    sizes = [(200, 200), (150, 150), (100, 100), (64, 64), (8, 8), (20, 20)]  # 1 MiB-64 KiB blocks
    up = Upscaler(model=model, backend="cuda", mode="interp")
    streamer = cuda_stream.CudaStreamer(backends.prepare(model), "interp")
    runner = StreamRunner(streamer, SyncRunner(up))
    frames = [f for h, w in sizes for f in _frames(rng, [(h, w, 3)] * 6)]
    for i, g in enumerate(generate(lambda: runner, iter(frames), 2, None)):
        assert np.array_equal(g, upscale(frames[i], r, model=model, backend="reference")), i
        del g
    assert "host_out" not in streamer._slots[0].buffers  # every batch was lent
    # the slots' input buffers and the blocks of the last two sizes (those of the one before
    # the last go back after the last lending); blocks of every size seen would be several
    # times that
    slots = 2 * cuda_stream._capacity(2 * 200 * 200 * 3)
    last = 2 * cuda_stream.LEND_MAX * cuda_stream._capacity(2 * 20 * 20 * 3 * r * r)
    assert cupy.pinned_pool_bytes() <= slots + last, cupy.pinned_pool_bytes()


def test_frames_are_split_and_joined_on_the_device(cupy, model):
    frames = _frames(np.random.default_rng(), [(6, 5, 4)] * 4)
    streamer, _ = _stream_frames(model, frames, batch=4)
    # one upload of whole frames, not of planes laid out by the host
    assert streamer.takes_frames and StreamRunner.takes_frames
    assert streamer._slots[0].buffers["host_in"].size >= 4 * 6 * 5 * 4


def test_streamer_rejects_planes(cupy, model):
    streamer = cuda_stream.CudaStreamer(backends.prepare(model), "interp")
    with pytest.raises(ValueError, match="N, H, W, C"):
        streamer.submit(np.zeros((3, 4, 4), np.uint8))


def _lend_counter(monkeypatch):
    """Counts the streamer's lent output blocks (``_lend`` returning a block)."""
    counts = {"lent": 0}
    real = cuda_stream.CudaStreamer._lend

    def counting(self, shape):
        out = real(self, shape)
        counts["lent"] += out is not None
        return out

    monkeypatch.setattr(cuda_stream.CudaStreamer, "_lend", counting)
    return counts


def test_output_blocks_are_lent_without_a_copy_and_come_back_to_the_pool(cupy, model, monkeypatch):
    """A caller that drops each frame before the next: every batch's output is a pinned
    block of its own, handed out without a copy, and the blocks go back to the pinned pool
    and are used again (the pool does not grow with the number of batches)."""
    import gc

    counts = _lend_counter(monkeypatch)
    rng = np.random.default_rng()
    frames = _frames(rng, [(6, 7, 3)] * 24)
    up = Upscaler(model=model, backend="cuda", mode="interp")
    streamer = cuda_stream.CudaStreamer(backends.prepare(model), "interp")
    runner = StreamRunner(streamer, SyncRunner(up))
    pool = []
    for i, g in enumerate(generate(lambda: runner, iter(frames), 2, None)):
        assert np.array_equal(g, upscale(frames[i], model.scale, model=model, backend="reference")), i
        assert not streamer.reused(g)  # a lent block: yielded as it is
        pool.append(cupy.pinned_pool_bytes())
        del g
    assert counts["lent"] == 12  # every batch of two
    assert "host_out" not in streamer._slots[0].buffers  # no reused output buffer was needed
    gc.collect()
    assert streamer._lent == 0
    assert pool[-1] == pool[5], pool  # blocks reused: the pool stopped growing


def test_a_caller_that_keeps_every_frame_gets_copies_past_the_lending_limit(cupy, model, monkeypatch):
    """``list()`` of a long stream: at most LEND_MAX blocks are lent, the other batches go
    through the slots' reused buffers and are copied out, and every frame stays right
    after the stream has moved on."""
    counts = _lend_counter(monkeypatch)
    frames = _frames(np.random.default_rng(), [(5, 6, 3)] * 16 + [(5, 6)] * 4)
    streamer, _ = _stream_frames(model, frames)  # compares every kept frame with the reference
    assert counts["lent"] == cuda_stream.LEND_MAX
    assert streamer._slots[0].buffers["host_out"] is not None


def test_lending_stops_at_its_byte_limit(cupy, model, monkeypatch):
    """Pinned memory is locked out of paging: past ``LEND_BYTES`` held by the caller, even
    under ``LEND_MAX`` blocks, batches go through the reused buffers (and are copied)."""
    counts = _lend_counter(monkeypatch)
    monkeypatch.setattr(cuda_stream, "LEND_BYTES", 2 * cuda_stream.MIN_CAPACITY)
    frames = _frames(np.random.default_rng(), [(5, 6, 3)] * 12)
    streamer, _ = _stream_frames(model, frames)  # list(): every frame kept
    assert counts["lent"] == 2 < cuda_stream.LEND_MAX
    assert streamer._lent_bytes <= 2 * cuda_stream.MIN_CAPACITY
