"""iqlut-gpu: IQ-LUT lookup-table image super-resolution.

The same integer model runs on three backends that agree bit for bit: a NumPy reference
(``iqlut_gpu.reference``), Numba CPU kernels and CuPy CUDA kernels (``iqlut_gpu.kernels``).
Importing this package needs no GPU, no CuPy and no torch.
"""

from .api import upscale, upscale_frames
from .backends import BackendUnavailable
from .model import Layer, Model, ModelError, default_model, load_model, save_model
from .upscaler import Upscaler

__version__ = "0.1.0"

__all__ = ["upscale", "upscale_frames", "Upscaler", "load_model", "save_model",
           "default_model", "Model", "Layer", "ModelError", "BackendUnavailable", "__version__"]
