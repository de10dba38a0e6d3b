"""The errors and warnings backends raise, in a module of their own so that the backends in
``kernels/`` can raise them without importing the selection logic that imports them
(``iqlut_gpu.backends`` re-exports all three)."""


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


class DeviceOutOfMemory(MemoryError):
    """A backend ran out of device memory; callers retry with smaller tiles."""


class BackendFallbackWarning(RuntimeWarning):
    """``backend="auto"`` could not use CUDA and fell back to the CPU (issued once)."""
