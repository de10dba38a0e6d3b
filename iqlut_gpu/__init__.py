"""iqlut-gpu: IQ-LUT lookup-table image super-resolution.

The same integer model runs on three backends that agree bit for bit: a NumPy reference
(``iqlut_gpu.reference``), Numba CPU kernels and CuPy CUDA kernels (``iqlut_gpu.kernels``).
Importing this package needs no GPU, no CuPy and no torch.
"""

from .api import upscale
from .frames import upscale_frames
from .backends import BackendUnavailable
from .model import Layer, Model, ModelError, default_model, load_model, save_model

__version__ = "0.1.0"

__all__ = ["upscale", "load_model", "save_model", "default_model", "Model", "Layer",
           "ModelError", "BackendUnavailable", "upscale_frames", "__version__"]
