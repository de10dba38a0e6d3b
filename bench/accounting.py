"""Work accounting: what each kernel must do per pixel, from the model's shapes alone.

Counted per LR (input) pixel of one plane, per layer, then summed for the model and also
given per HR output pixel (divide by r*r). ``taps = c_in * k * k`` source codes per
output position.

- ``table_entries``: table values read. interp: two knot rows per tap (``2 * taps * c_out``
  int8, plus one knot index/weight pair per tap); expanded: one row (``taps * c_out`` int16).
- ``macs``: interp: ``2 * taps * c_out`` multiply-adds (``t[i]*(256-w) + t[i+1]*w``);
  expanded: ``taps * c_out`` adds. The last layer adds the fixed upsample:
  ``r*r * T*T`` multiply-adds in the reference's double-sum form.
- ``dram_bytes``: plane traffic if each layer streams its input and output once: hidden
  ``c_in + c_out`` bytes, last ``c_in + 1`` (the base plane) ``+ r*r`` bytes.
- ``cpu_lane_adds``: what the Numba kernels actually execute in their inner loop: the int32
  lanes of their row reads, ``VEC * row_reads`` per pixel: ``taps * Cp`` where Cp is
  ``c_out`` padded to the kernels' vector width; for c_out <= 4, where the kernels pack
  two pixels' 4 lanes in one 8-lane read (with a zero column at either end of the window
  row), ``4 * c_in * k * (k + 1)`` (interp: each lane add also has one multiply and one
  more add).
- ``row_reads``: 8-lane table-row reads (vector steps of the inner loop) the Numba kernels
  do (``numba_cpu.row_reads``); ``useful_row_reads``: the same counting only the real
  channels, ``taps * c_out / 8``. ``bench.kernel_floor`` measures cycles per row read.
"""

from __future__ import annotations

from iqlut_gpu.kernels.numba_cpu import VEC, row_reads
from iqlut_gpu.reference import upsample_filter


def layer_work(layer, mode: str, scale: int | None = None, upsample: str | None = None) -> dict:
    taps = layer.c_in * layer.k * layer.k
    c_out = layer.c_out
    if mode == "interp":
        entries, macs, entry_bytes = 2 * taps * c_out, 2 * taps * c_out, 1
    else:
        entries, macs, entry_bytes = taps * c_out, taps * c_out, 2
    w = {"taps": taps, "table_entries": entries, "table_bytes": entries * entry_bytes,
         "macs": macs, "row_reads": row_reads(layer.c_in, layer.k, c_out),
         "useful_row_reads": taps * c_out / VEC}
    w["cpu_lane_adds"] = int(VEC * w["row_reads"])
    if scale is None:
        w["dram_bytes"] = layer.c_in + c_out
    else:
        _, up_w, _ = upsample_filter(scale, upsample)
        T = up_w.shape[1]
        w["macs"] += scale * scale * T * T
        w["dram_bytes"] = layer.c_in + 1 + scale * scale
    return w


def model_work(model, mode: str) -> dict:
    """Per LR pixel of one plane: per-layer list and totals; per HR pixel totals too."""
    layers = []
    n = len(model.layers)
    for i, layer in enumerate(model.layers):
        last = i == n - 1
        layers.append(layer_work(layer, mode, model.scale if last else None,
                                 model.upsample if last else None))
    keys = ("taps", "table_entries", "table_bytes", "macs", "cpu_lane_adds", "dram_bytes")
    total = {k: sum(w[k] for w in layers) for k in keys}
    r2 = model.scale * model.scale
    per_hr = {k: round(v / r2, 2) for k, v in total.items()}
    return {"per_lr_pixel": total, "per_hr_pixel": per_hr, "layers": layers}
