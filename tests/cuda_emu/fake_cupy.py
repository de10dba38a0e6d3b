"""A stand-in for the part of CuPy that the CUDA glue uses (``kernels/cuda_backend.py``,
``kernels/cuda_stream.py``), backed by host memory and the kernel emulation, and
asynchronous the way CUDA is, so that a missing synchronisation shows up on a machine
without a GPU.

Execution model (CUDA's, as CuPy exposes it):

- Every stream has a queue. Kernel launches, host<->device copies (``asarray`` of host
  data, ``ndarray.set``, ``ndarray.get``, ``asnumpy``) and device array operations
  (ufuncs, ``astype``, ``ascontiguousarray``, ...) are queued on the stream given, or on
  the current stream (``with stream:``), and run only when something forces them: the
  stream's ``synchronize()``, an ``Event.synchronize()`` of an event recorded after them,
  a blocking copy to the host, or a later operation that depends on them (same stream,
  ``Stream.wait_event``, the legacy default stream's implicit ordering). Until then their
  outputs hold stale data: fresh device and pinned allocations are filled with ``POISON``.
- Copies from pinned host memory read it when they run, not when they are queued; copies
  from pageable memory are staged at once; copies to pageable memory complete before
  they return (CUDA's rules for ``cudaMemcpyAsync``).
- A happens-before race detector (vector clocks per stream and for the host) checks every
  access when it is queued: an operation that reads a buffer whose last writer is not
  ordered before it, or writes one whose readers or writer are not, raises ``RaceError``;
  so does the host writing a pinned buffer that a queued copy still reads, or reading one
  that a queued copy still writes (where a NumPy hook sees the access).
- ``from_dlpack`` passes the current stream to the producer's ``__dlpack__(stream=)``
  (1 for the legacy default stream), as CuPy does; ``dlpack_streams()`` records them.
- Pinned memory comes from a pool that, like CuPy's ``PinnedMemoryPool``, keeps every
  freed block for reuse by an allocation of the same size; ``set_pinned_limit`` makes
  allocations beyond a budget fail with ``cuda.runtime.CUDARuntimeError`` (status 2,
  cudaErrorMemoryAllocation), as ``cupyx.empty_pinned`` does.
- Every synchronisation that code under ``kernels/`` or ``iqlut_gpu/`` performs is
  recorded with its call site (``sync_sites()``); ``disable_sync_site(site)`` turns that
  one call into a no-op, so a test can show that each of them is needed.

It models CuPy's calling conventions as the backend relies on them; it is no substitute
for a device run (tests/test_cuda_gpu.py).
"""

from __future__ import annotations

import collections
import functools
import sys
import threading
import types
import weakref
from pathlib import Path

import numpy as np

from . import harness

CUDA_DEVICE = 2  # DLPack kDLCUDA
POISON = 0xA5
LEGACY_STREAM = 1  # the DLPack stream number of CUDA's legacy default stream
_HERE = Path(__file__).resolve()
_ROOT = _HERE.parents[2]
_WATCHED = (_ROOT / "kernels", _ROOT / "iqlut_gpu")


class RaceError(AssertionError):
    """An access that no synchronisation orders after the one it depends on."""


class CUDARuntimeError(RuntimeError):
    """cupy_backends.cuda.api.runtime.CUDARuntimeError (not a MemoryError)."""

    def __init__(self, status):
        self.status = status
        names = {2: "cudaErrorMemoryAllocation: out of memory"}
        super().__init__(names.get(status, f"CUDA error {status}"))


class OutOfMemoryError(MemoryError):
    pass


# ----------------------------------------------------------------------------- scheduler


class _Op:
    __slots__ = ("name", "stream", "seq", "clock", "fn")

    def __init__(self, name, stream, seq, clock, fn):
        self.name, self.stream, self.seq, self.clock, self.fn = name, stream, seq, clock, fn


class _Buffer:
    """One allocation: device memory, or pinned host memory."""

    def __init__(self, label, kind):
        self.label, self.kind = label, kind
        self.writer = None  # last _Op that writes it (None: the host, or nobody)
        self.readers: list = []  # _Ops reading it since that write


class _State:
    def __init__(self):
        self.streams: list = []
        self.host: dict = {}  # vector clock of the work the host has seen complete
        self.buffers: dict = {}  # key -> (start, end, _Buffer)
        self.launched: list = []  # (kernel name, stream)
        self.dlpack: list = []  # stream numbers passed to __dlpack__
        self.sites: list = []  # (site, kind) of every synchronisation by watched code
        self.disabled = None
        self.pinned_limit = None
        self.pool_total = 0  # pinned bytes the pool holds (in use or cached)
        self.pool_free: collections.Counter = collections.Counter()
        self.next_key = 0
        self.lock = threading.RLock()
        self.local = threading.local()


_S = _State()


def _join(into: dict, other: dict) -> None:
    for k, v in other.items():
        if into.get(k, 0) < v:
            into[k] = v


def _ordered(op, clock) -> bool:
    """Whether ``op`` happens before everything with vector clock ``clock``."""
    return op is None or clock.get(op.stream, 0) >= op.seq


def _force(sid: int, seq: int) -> None:
    """Run stream ``sid``'s queue up to operation ``seq``, dependencies first."""
    s = _S.streams[sid]
    while s.done < seq:
        op = s.queue.popleft()
        for other, q in op.clock.items():
            if other != sid:
                _force(other, q)
        op.fn()
        op.fn = None  # a run operation no longer holds its arrays (the race detector keeps it)
        s.done = op.seq


def _stream_name(sid):
    s = _S.streams[sid]
    return "the legacy default stream" if s.is_null else f"stream #{sid}"


def _find(arr):
    """The _Buffer an array's memory lies in, or None (untracked host memory)."""
    if not isinstance(arr, np.ndarray) or arr.size == 0:
        return None
    addr = arr.__array_interface__["data"][0]
    for start, end, buf in _S.buffers.values():
        if start <= addr < end:
            return buf
    return None


def _register(root: np.ndarray, label: str, kind: str) -> _Buffer:
    buf = _Buffer(label, kind)
    key = _S.next_key
    _S.next_key += 1
    start = root.__array_interface__["data"][0]
    _S.buffers[key] = (start, start + max(root.nbytes, 1), buf)
    weakref.finalize(root, _S.buffers.pop, key, None)
    return buf


def _enqueue(stream, name, fn, reads=(), writes=()):
    """Queue ``fn`` on ``stream`` after checking its accesses; returns the _Op."""
    with _S.lock:
        clock = dict(stream.clock)
        _join(clock, _S.host)
        if stream.is_null:  # the legacy stream waits for all blocking streams
            for t in _S.streams:
                if t.blocking:
                    _join(clock, t.clock)
        elif stream.blocking:  # and blocking streams wait for it
            _join(clock, Stream.null.clock)
        stream.seq += 1
        clock[stream.id] = stream.seq
        op = _Op(name, stream.id, stream.seq, clock, fn)
        rbufs = [b for b in map(_find, reads) if b is not None]
        wbufs = [b for b in map(_find, writes) if b is not None]
        for b in rbufs:
            if not _ordered(b.writer, clock):
                raise RaceError(f"{name} on {_stream_name(stream.id)} reads {b.label}, which "
                                f"{b.writer.name} on {_stream_name(b.writer.stream)} writes, "
                                "with no event or synchronisation ordering them")
        for b in wbufs:
            for other in [b.writer, *b.readers]:
                if not _ordered(other, clock):
                    raise RaceError(f"{name} on {_stream_name(stream.id)} writes {b.label}, "
                                    f"which {other.name} on {_stream_name(other.stream)} "
                                    "accesses, with no event or synchronisation ordering them")
        for b in rbufs:
            b.readers.append(op)
        for b in wbufs:
            b.writer, b.readers = op, []
        stream.clock = clock
        stream.queue.append(op)
        return op


def _host_waits(op) -> None:
    with _S.lock:
        _force(op.stream, op.seq)
        _join(_S.host, op.clock)


def _host_waits_stream(s) -> None:
    with _S.lock:
        _force(s.id, s.seq)
        _join(_S.host, s.clock)


def _host_access(arr, write: bool, what: str) -> None:
    """The host reads or writes ``arr`` (pinned memory) directly."""
    b = _find(arr)
    if b is None:
        return
    pending = [b.writer, *(b.readers if write else [])]
    for op in pending:
        if not _ordered(op, _S.host):
            raise RaceError(f"the host {what} {b.label} while {op.name} on "
                            f"{_stream_name(op.stream)} has not completed (no wait)")
    if write:
        b.writer, b.readers = None, []


def _sync_site(kind: str) -> bool:
    """Record the watched call site of a synchronisation; False if it is disabled."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if path != _HERE:
            if any(d in path.parents for d in _WATCHED):
                site = (f"{path.relative_to(_ROOT)}:{frame.f_lineno} "
                        f"({frame.f_code.co_name}: {kind})")
                _S.sites.append(site)
                return site != _S.disabled
            return True
        frame = frame.f_back
    return True


# ----------------------------------------------------------------------------- streams


class Stream:
    null: Stream = None  # set by _reset

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.is_null = null
        self.blocking = not non_blocking and not null
        with _S.lock:
            self.id = len(_S.streams)
            _S.streams.append(self)
        self.ptr = 0 if null else 0x7F0000 + 16 * self.id
        self.clock: dict = {}
        self.seq = self.done = 0
        self.queue: collections.deque = collections.deque()

    def __enter__(self):
        _stack().append(self)
        return self

    def __exit__(self, *exc):
        _stack().pop()

    def synchronize(self):
        if _sync_site("Stream.synchronize"):
            _host_waits_stream(self)

    def wait_event(self, event):
        if _sync_site("Stream.wait_event") and event.clock is not None:
            with _S.lock:
                _join(self.clock, event.clock)

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def __repr__(self):
        return f"<fake Stream #{self.id}{' null' if self.is_null else ''}>"


def _stack():
    st = getattr(_S.local, "stack", None)
    if st is None:
        st = _S.local.stack = []
    return st


def get_current_stream():
    st = _stack()
    return st[-1] if st else Stream.null


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.clock = None
        self.sid = self.seq = 0

    def record(self, stream=None):
        s = stream or get_current_stream()
        with _S.lock:
            self.clock, self.sid, self.seq = dict(s.clock), s.id, s.seq

    @property
    def done(self):
        return self.clock is None or _S.streams[self.sid].done >= self.seq

    def synchronize(self):
        if _sync_site("Event.synchronize") and self.clock is not None:
            with _S.lock:
                _force(self.sid, self.seq)
                _join(_S.host, self.clock)


def get_elapsed_time(start, end):
    if not (start.done and end.done):
        raise CUDARuntimeError(600)  # cudaErrorNotReady
    return 1.0


# ----------------------------------------------------------------------------- arrays


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, np.ndarray) else a


def _alloc(shape, dtype, cls, label, kind):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    root = np.full(max(n, 1) + 16, POISON, np.uint8)
    start = -root.__array_interface__["data"][0] % 16
    _register(root, label, kind)
    return root[start:start + n].view(dtype).reshape(shape).view(cls)


def _walk(obj, fn):
    """``obj`` with every ndarray inside (lists, tuples) replaced by ``fn(array)``."""
    if isinstance(obj, np.ndarray):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(o, fn) for o in obj)
    return obj


def _arrays(obj):
    found = []
    _walk(obj, lambda a: found.append(a) or a)
    return found


def _host_read_all(arrays):
    """A host read of device arrays (an implicit synchronisation of the current stream)."""
    if _sync_site("implicit device->host read"):
        _host_waits_stream(get_current_stream())
    for a in arrays:
        b = _find(a)
        if b is not None and not _ordered(b.writer, _S.host):
            raise RaceError(f"the host reads {b.label} before {b.writer.name} completes")


def _device_op(name, compute, args, out=None):
    """``compute`` over ``args`` (arrays replaced by host views) as an operation queued on
    the current stream. Returns its result array (a new device array unless ``out``)."""
    ins = [a for a in _arrays(args) if isinstance(a, ndarray)]
    plain_args = _walk(args, _plain)
    if out is None:
        with np.errstate(all="ignore"):  # on the stale contents: only shape and dtype count
            probe = compute(plain_args)
        if not isinstance(probe, np.ndarray):
            _host_read_all(ins)
            return compute(plain_args)
        if any(np.may_share_memory(probe, _plain(a)) for a in ins):
            return probe.view(ndarray)  # a view: no device work
        out = _alloc(probe.shape, probe.dtype, ndarray, f"the result of {name}", "device")
    target = _plain(out)

    def run():
        with np.errstate(all="ignore"):
            target[...] = compute(plain_args)

    _enqueue(get_current_stream(), name, run, reads=ins, writes=[out])
    return out


class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """Device memory (host memory that only queued operations touch)."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    @property
    def data(self):
        return _Ptr(self.__array_interface__["data"][0])

    def __dlpack_device__(self):
        return (CUDA_DEVICE, 0)

    def __repr__(self):  # (numpy's would read the contents: a host read)
        return f"<fake cupy.ndarray {self.shape} {self.dtype}>"

    __str__ = __repr__

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        # CuPy: the consumer's stream waits for the work queued on the current stream
        if stream is not None and stream != -1:
            consumer = _stream_by_number(stream)
            with _S.lock:
                _join(consumer.clock, get_current_stream().clock)
        return self.view(np.ndarray).__dlpack__()

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        fn = getattr(ufunc, method)
        if out is not None and any(o is not None for o in out):
            (target,) = out
            return _device_op(f"{ufunc.__name__}.{method}", lambda a: fn(*a, **kw), inputs,
                              out=target)
        return _device_op(f"{ufunc.__name__}.{method}", lambda a: fn(*a, **kw), inputs)

    def __array_function__(self, func, types_, args, kwargs):
        return _device_op(func.__name__, lambda a: func(*a[0], **a[1]), (args, kwargs))

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _device_op("astype", lambda a: a[0].astype(dtype), (self,))

    def copy(self, order="C"):
        return _device_op("copy", lambda a: a[0].copy(), (self,))

    def __getitem__(self, key):
        res = super().__getitem__(key)
        if not isinstance(res, np.ndarray) or not np.may_share_memory(_plain(res), _plain(self)):
            return _device_op("getitem", lambda a: a[0][key], (self,))
        return res

    def __setitem__(self, key, value):
        def compute(a):
            new = a[0].copy()
            new[key] = a[1]
            return new
        _device_op("setitem", compute, (self, value), out=self)

    def fill(self, value):
        _device_op("fill", lambda a: np.full(a[0].shape, value, a[0].dtype), (self,), out=self)

    def __bool__(self):
        _host_read_all([self])
        return bool(_plain(self))

    def __int__(self):
        _host_read_all([self])
        return int(_plain(self))

    __index__ = __int__

    def item(self, *args):
        _host_read_all([self])
        return _plain(self).item(*args)

    def set(self, arr, stream=None):
        """Host -> device copy, queued on ``stream`` (default: the current stream)."""
        arr = np.asarray(arr)
        s = stream or get_current_stream()
        target = _plain(self)
        if _find(arr) is not None and _find(arr).kind == "pinned":
            src = _plain(arr)
            _enqueue(s, "a host->device copy", lambda: target.__setitem__(Ellipsis, src),
                     reads=[arr], writes=[self])
        else:  # pageable: staged when queued
            snap = np.array(arr)
            _enqueue(s, "a host->device copy", lambda: target.__setitem__(Ellipsis, snap),
                     writes=[self])

    def get(self, stream=None, order="C", out=None, blocking=True):
        """Device -> host copy into ``out`` (new pageable memory if None)."""
        s = stream or get_current_stream()
        pinned = out is not None and _find(out) is not None and _find(out).kind == "pinned"
        if out is None:
            out = np.empty(self.shape, self.dtype)
        src, dst = _plain(self), _plain(out)
        op = _enqueue(s, "a device->host copy", lambda: dst.__setitem__(Ellipsis, src),
                      reads=[self], writes=[out])
        if not pinned:  # to pageable memory the copy completes before it returns
            _host_waits(op)
        elif blocking and _sync_site("ndarray.get(blocking=True)"):
            _host_waits(op)
        return out


class PinnedArray(np.ndarray):
    """Page-locked host memory (from the pinned pool)."""

    def __array_function__(self, func, types_, args, kwargs):
        if func is np.copyto:
            _host_access(args[0] if args else kwargs["dst"], True, "overwrites")
        for a in _arrays((args, kwargs)):
            if isinstance(a, PinnedArray):
                _host_access(a, False, "reads")
        return func(*_walk(args, _plain), **_walk(kwargs, _plain))

    def __setitem__(self, key, value):
        _host_access(self, True, "writes")
        super().__setitem__(key, value)


def _stream_by_number(n):
    if n in (0, LEGACY_STREAM, 2):
        return Stream.null
    for s in _S.streams:
        if s.ptr == n:
            return s
    raise ValueError(f"no stream {n:#x}")


def empty(shape, dtype=float, order="C"):
    dims = tuple(int(d) for d in np.atleast_1d(shape))
    return _alloc(shape, dtype, ndarray, f"a device array {dims}", "device")


def zeros(shape, dtype=float):
    out = empty(shape, dtype)
    out.fill(0)
    return out


def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    host = np.asarray(a, dtype=dtype)
    out = empty(host.shape, host.dtype)
    out.set(host)
    return out


array = asarray


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        a = asarray(a)
    if a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
        return a
    return _device_op("ascontiguousarray", lambda x: np.ascontiguousarray(x[0], dtype=dtype), (a,))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if not isinstance(a, ndarray):
        return np.asarray(a)
    if not a.flags.c_contiguous:
        a = ascontiguousarray(a)
    s = stream or get_current_stream()
    dst = np.empty(a.shape, a.dtype) if out is None else out
    src, d = _plain(a), _plain(dst)
    op = _enqueue(s, "a device->host copy (asnumpy)", lambda: d.__setitem__(Ellipsis, src),
                  reads=[a], writes=[dst])
    pinned = _find(dst) is not None and _find(dst).kind == "pinned"
    if not pinned:  # to pageable memory the copy completes before it returns
        _host_waits(op)
    elif blocking and _sync_site("asnumpy(blocking=True)"):
        _host_waits(op)
    return dst


class _Capsule:
    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **kw):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def from_dlpack(obj):
    """Zero-copy import; the producer gets the current stream (1: the legacy stream)."""
    if int(obj.__dlpack_device__()[0]) != CUDA_DEVICE:
        raise ValueError("not a CUDA buffer")
    s = get_current_stream()
    number = LEGACY_STREAM if s.is_null else s.ptr
    _S.dlpack.append(number)
    return np.from_dlpack(_Capsule(obj.__dlpack__(stream=number))).view(ndarray)


# ----------------------------------------------------------------------------- pinned memory


def _pinned_block(nbytes):
    size = max(512, -(-nbytes // 512) * 512)
    with _S.lock:
        if _S.pool_free[size]:
            _S.pool_free[size] -= 1
        else:
            if _S.pinned_limit is not None and _S.pool_total + size > _S.pinned_limit:
                _free_all_blocks()
                if _S.pool_total + size > _S.pinned_limit:
                    raise CUDARuntimeError(2)
            _S.pool_total += size
    root = np.full(size, POISON, np.uint8)
    _register(root, f"a pinned host buffer ({nbytes} bytes)", "pinned")
    weakref.finalize(root, _S.pool_free.update, [size])  # back to the pool, not to the OS
    return root


def _free_all_blocks():
    with _S.lock:
        for size, n in _S.pool_free.items():
            _S.pool_total -= size * n
        _S.pool_free.clear()


def empty_pinned(shape, dtype=float, order="C"):
    shape = tuple(np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _pinned_block(n)[:n].view(dtype).reshape(shape).view(PinnedArray)


class _PinnedPool:
    def total_bytes(self):
        return _S.pool_total

    def free_bytes(self):
        return sum(size * n for size, n in _S.pool_free.items())

    def free_all_blocks(self):
        _free_all_blocks()


def get_default_pinned_memory_pool():
    return _PinnedPool()


# ----------------------------------------------------------------------------- modules


class _CUfunction:
    """What CuPy's ``cupy.cuda.function.Function`` holds: the driver's handle."""

    def __init__(self, owner):
        self.ptr = id(owner)


class _Function:
    """As CuPy 13 and 14's ``RawModule.get_function`` returns: a ``RawKernel``, with no
    ``ptr`` of its own; the driver handle is on its ``kernel`` (a ``Function``)."""

    def __init__(self, module, name):
        self.module, self.name = module, name
        self.kernel = _CUfunction(self)

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        s = stream or get_current_stream()
        lib = self.module.library()
        sig = lib.signature[self.name]
        reads = [a for c, a in zip(sig, args) if c[0] == "*"]
        writes = [a for c, a in zip(sig, args) if c[0] == "&"]
        host_args = tuple(_plain(a) for a in args)
        plan = harness.cuda_plan.Launch(self.name, tuple(grid), tuple(block), host_args, 0)
        ex = harness.EmuExecutor(lib, block=block[:2], max_blocks=grid[0])
        _S.launched.append((self.name, s))
        _enqueue(s, f"kernel {self.name.split('<')[0]}", functools.partial(ex.launch, plan),
                 reads=reads, writes=writes)


class RawModule:
    """Records how it was built; compiles the emulation library on first use."""

    built: list = []

    def __init__(self, code=None, options=(), name_expressions=()):
        assert isinstance(code, str) and "iqlut" in code
        self.options = tuple(options)
        self.names = tuple(name_expressions)
        self._lib = None
        RawModule.built.append(self)

    def library(self):
        if self._lib is None:
            self._lib = harness.build(self.names)
        return self._lib

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"{name} was not among the name expressions")
        return _Function(self, name)


class Device:
    occupancy = 4  # what occupancyMaxActiveBlocksPerMultiprocessor answers

    def __init__(self, device_id=None):
        self.id = 0 if device_id is None else int(device_id)
        self.attributes = {"MultiProcessorCount": 2}
        self.compute_capability = "90"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def synchronize(self):
        for s in list(_S.streams):
            s.synchronize()


def _occupancy(func, block_size, dynamic_smem):
    assert isinstance(func, int) and block_size >= 1
    return Device.occupancy


cuda = types.SimpleNamespace(
    is_available=lambda: True,
    Device=Device,
    Stream=Stream,
    Event=Event,
    get_current_stream=get_current_stream,
    get_elapsed_time=get_elapsed_time,
    memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
    runtime=types.SimpleNamespace(CUDARuntimeError=CUDARuntimeError,
                                  deviceSynchronize=lambda: Device().synchronize()),
    driver=types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=_occupancy),
    nvrtc=types.SimpleNamespace(getVersion=lambda: (12, 9)),
)

cupyx = types.SimpleNamespace(empty_pinned=empty_pinned)


# ----------------------------------------------------------------------------- test API


def launched():
    return _S.launched


def dlpack_streams():
    return _S.dlpack


def sync_sites():
    """The watched synchronisation call sites seen so far, in order, without repeats."""
    return list(dict.fromkeys(_S.sites))


def disable_sync_site(site):
    _S.disabled = site


def set_pinned_limit(nbytes):
    _S.pinned_limit = nbytes


def pinned_pool_bytes():
    return _S.pool_total


def new_stream(non_blocking=True):
    return Stream(non_blocking=non_blocking)


def enqueue_write(stream, arr, values):
    """Queue, on ``stream``, a write of ``values`` into device array ``arr`` (a producer's
    pending work, e.g. a torch kernel)."""
    target, vals = _plain(arr), np.array(values)
    _enqueue(stream, "the producer's write", lambda: target.__setitem__(Ellipsis, vals),
             writes=[arr])


def wait_for(consumer_number, producer_stream):
    """What a DLPack producer does for ``__dlpack__(stream=n)``: stream n waits for the
    producer's queued work."""
    with _S.lock:
        _join(_stream_by_number(consumer_number).clock, producer_stream.clock)


def _reset():
    global _S
    _S = _State()
    Stream.null = Stream(null=True)
    Device.occupancy = 4


_reset()


def install(monkeypatch):
    """Make ``import cupy`` / ``import cupyx`` give this stand-in (fresh state) and reset the
    backend's per-device caches."""
    import sys

    from iqlut_gpu import backends
    from iqlut_gpu.kernels import cuda_backend
    from iqlut_gpu.memo import IdentityMemo

    _reset()
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    backends.reset()  # the probes answered without the stand-in
    monkeypatch.setattr(cuda_backend, "_FUNCTIONS", {})
    monkeypatch.setattr(cuda_backend, "_TABLES", IdentityMemo())
    fresh = functools.lru_cache(maxsize=None)(cuda_backend._executor_for_device.__wrapped__)
    monkeypatch.setattr(cuda_backend, "_executor_for_device", fresh)
    monkeypatch.setattr(RawModule, "built", [])
    return module
