"""Numba CPU kernels of IQ-LUT inference, bit-identical to ``iqlut_gpu.reference``.

Three layers, as in STUMPY: ``run_planes`` (public, whole model) -> ``launch_*``
(private launchers: validate arrays, cast scalars, derive the kernel-side tables, pick
the kernel) -> ``_k_*`` (jitted kernels). The CUDA launchers in ``cuda_backend.py`` take
the same arguments in the same order (a test checks).

Launcher arguments (all C-contiguous):

- ``x``     uint8 [P, c_in, H, W]    codes of P independent planes
- ``lut``   interp mode: ``(idx, wt, table)`` with
            ``idx`` uint8 [c_in, 256] (lower knot index per code, reference.interp_lut),
            ``wt`` int32 [c_in, 256] (weight 0..256 per code), ``table`` int8 [c_in, L, k, k, c_out];
            expanded mode: ``etab`` int16 [c_in, 256, k, k, c_out] (reference.expand_layer)
- ``bias``  int32 [c_out]
- ``plane`` uint8 [P, H, W]          the input planes (base of the last layer)
- ``up_off`` int32 [r], ``up_w`` int32 [r, T], ``up_den`` int (reference.upsample_filter)
- ``out``   uint8 [P, c_out, H, W] (hidden) or uint8 [P, H*r, W*r] (last)

Kernel-side tables (derived once per lut by ``_kernel_tables`` and memoised). Every
accumulator is an int32 lane (``|A| < 2**31``: the loader bounds the bias and the window
count); a column's ``c_out`` lanes are zero-padded to ``Cp``, a multiple of ``VEC``, and the
k window columns of one (channel, dy) are one contiguous row of ``KC = k * Cp`` int16
table values, so that a source pixel paints its whole window row with a few aligned
256-bit vector steps (``_vadd``, ``_vadd_mul``: small Numba intrinsics that sign-extend
the int16 values to int32 lanes, since LLVM's own vectorisation of these short
runtime-length loops costs more in checks than it saves). int16 tables take half the
cache of int32 ones: 1.15-1.27x faster accumulation in expanded mode, measured.

- expanded: ``etab_p`` int16 [c_in, k(dy), 256, KC]  (``etab``, padded)
- interp:   ``tb_p``, ``td_p`` int16 [c_in, k(dy), L-1, KC]: ``256 * table[i]`` (in
            [-32768, 32512]) and ``table[i+1] - table[i]``, so that
            ``table[i] * (256 - w) + table[i+1] * w == tb[i] + td[i] * w`` exactly
            (one 32-bit vector multiply per step).

Padding each column (not just the row) keeps every vector step of one source column on
the same VEC-aligned accumulator slots as its neighbours' steps: with unaligned overlaps
(c_out = 4 or 9) the CPU cannot forward the previous step's store to the next load, and
the last layers of x2 and x3 ran 1.5-2.5x slower than with the padding.

One ``prange`` iteration computes a band of ``BAND`` output rows of one plane (all
columns, all output channels; for the last layer the r output rows of each input row):
iterations write disjoint rows, so no synchronisation is needed. Inside it the row
accumulators are built in scatter order (each padded source column paints its window
row, see ``_band_accumulate_expanded``), which sums exactly the terms of
reference.accumulate; the edge clamp is applied once per source row, and each table slice
is reused by all rows of the band while it is in cache.
"""

from __future__ import annotations

import weakref

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from iqlut_gpu import ensemble

# Compile flags in one place: parallel prange, on-disk cache, no Python objects.
JIT = dict(parallel=True, cache=True, nogil=True, fastmath=False)

MODES = ("interp", "expanded")


@njit(inline="always")
def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


# ----------------------------------------------------------------------------- row pieces

_U = np.uint64  # unsigned indices: no negative-index wraparound code in the inner loops
VEC = 8  # int32 lanes per vector step (one 256-bit register); columns are padded to it


def _vec_codegen(fused_mul: bool):
    def codegen(context, builder, signature, args):
        vt = ir.VectorType(ir.IntType(32), VEC)

        def load_lanes(arr_type, arr, index):
            """VEC table values at ``index``, sign-extended to int32 lanes."""
            bits = arr_type.dtype.bitwidth
            et = ir.VectorType(ir.IntType(bits), VEC)
            data = context.make_array(arr_type)(context, builder, arr).data
            v = builder.load(builder.bitcast(builder.gep(data, [index]), et.as_pointer()), align=bits // 8)
            return v if bits == 32 else builder.sext(v, vt)

        acc = context.make_array(signature.args[0])(context, builder, args[0])
        pa = builder.bitcast(builder.gep(acc.data, [args[1]]), vt.as_pointer())
        v = load_lanes(signature.args[2], args[2], args[3])
        if fused_mul:
            d = load_lanes(signature.args[4], args[4], args[3])
            w32 = builder.trunc(args[5], ir.IntType(32))  # the weight, 0..256
            w = builder.insert_element(ir.Constant(vt, None), w32, ir.Constant(ir.IntType(32), 0))
            w = builder.shuffle_vector(w, w, ir.Constant(ir.VectorType(ir.IntType(32), VEC), [0] * VEC))
            v = builder.add(v, builder.mul(d, w))
        a = builder.load(pa, align=4)
        builder.store(builder.add(a, v), pa, align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _vadd(typingctx, acc, ai, tab, ti):
    """``acc[ai:ai+VEC] += tab[ti:ti+VEC]`` as one vector step (1-D C arrays: ``acc`` int32,
    ``tab`` int16 or int32, sign-extended; the caller guarantees both ranges are inside the
    arrays)."""
    return types.void(acc, ai, tab, ti), _vec_codegen(False)


@intrinsic
def _vadd_mul(typingctx, acc, ai, tb, ti, td, w):
    """``acc[ai:ai+VEC] += tb[ti:ti+VEC] + td[ti:ti+VEC] * w`` as one vector step (int32 lanes;
    ``tb``, ``td`` int16 or int32; ``w`` an int64 weight 0..256)."""
    return types.void(acc, ai, tb, ti, td, w), _vec_codegen(True)


@njit(inline="always")
def _band_accumulate_expanded(x, p, y0, nrows, etab_p, acc, Cp):
    """Scatter form of reference.accumulate for output rows y0 .. y0+nrows-1: every padded
    source column j of every source row paints its window row ``v(code)[dy, :, :]`` (KC =
    k*Cp int32, contiguous) onto ``acc[b, (j .. j+k-1), :]``.
    acc: int32 [BAND, (W + 4R) * Cp]; in row b, position q' = q + 2R holds output
    column q of output row y = y0 + b (other positions collect edge terms and are ignored):

        acc[b, q'] = sum_c sum_dy sum_dx v_c(X[c, clamp(y - dy + R), clamp(q - dx + R)])[dy, dx]

    which is the reference's gather written source-first. The (c, dy) loops are outside
    the band's rows so that each table slice is reused by every row of the band while it
    is in cache. The source columns go in k interleaved passes (j = j0, j0 + k, ...):
    within a pass consecutive windows do not overlap, so no vector step loads what the
    step before it has just stored (integer sums: any order gives the same result).
    Whole-model A/B against the plain column order, shipped models, 320x180 RGB: expanded
    1.15-1.25x faster (x4, x2; 1 and 2 threads), interpolating 1.04-1.09x."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = etab_p.shape[1]
    R = k // 2
    KC = _U(etab_p.shape[3])  # k * Cp
    uCp = _U(Cp)
    acc[:nrows] = 0
    for c in range(c_in):
        for dy in range(k):
            tabs = etab_p[c, dy].reshape(-1)  # [256 * KC]
            for b in range(nrows):
                src = x[p, c, _clamp(y0 + b - dy + R, 0, H - 1)]
                arow = acc[b]
                for j0 in range(k):  # columns j0, j0 + k, ...: windows that do not overlap
                    for j in range(j0, W + 2 * R, k):
                        t = _U(src[_clamp(j - R, 0, W - 1)]) * KC
                        a = _U(j) * uCp
                        for m in range(_U(0), KC, _U(VEC)):
                            _vadd(arow, a + m, tabs, t + m)


@njit(inline="always")
def _band_accumulate_interp(x, p, y0, nrows, idx, wt, tb_p, td_p, acc, Cp):
    """As ``_band_accumulate_expanded``, the window computed from the knot rows:
    ``v = tb_p[i] + td_p[i] * w`` with ``tb = 256 * table[i]``, ``td = table[i+1] - table[i]``
    (``table[i]*(256-w) + table[i+1]*w``, exactly)."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = tb_p.shape[1]
    R = k // 2
    KC = _U(tb_p.shape[3])
    uCp = _U(Cp)
    acc[:nrows] = 0
    for c in range(c_in):
        for dy in range(k):
            tb = tb_p[c, dy].reshape(-1)  # [(L-1) * KC]
            td = td_p[c, dy].reshape(-1)
            for b in range(nrows):
                src = x[p, c, _clamp(y0 + b - dy + R, 0, H - 1)]
                arow = acc[b]
                for j0 in range(k):  # as in _band_accumulate_expanded
                    for j in range(j0, W + 2 * R, k):
                        code = src[_clamp(j - R, 0, W - 1)]
                        t = _U(idx[c, code]) * KC
                        w = np.int64(wt[c, code])
                        a = _U(j) * uCp
                        for m in range(_U(0), KC, _U(VEC)):
                            _vadd_mul(arow, a + m, tb, t + m, td, w)


@njit(inline="always")
def _bias_round(bias, o, shift):
    """``bias[o] + 2**(shift-1)`` (``bias[o]`` when shift is 0): then requant(A + bias) is
    ``(A + _bias_round) >> shift``, one add and one shift per value."""
    return np.int64(bias[o]) + (np.int64(1) << (shift - 1) if shift > 0 else np.int64(0))


@njit(inline="always")
def _row_store_hidden(x, p, y, acc, bias, R, Cp, shift, residual, out):
    """Output row y of every channel: ``clamp(base + requant(A + bias))``."""
    W = x.shape[3]
    uCp = _U(Cp)
    for o in range(bias.shape[0]):
        col = _U(2 * R * Cp + o)  # column q's sum is acc[q * Cp + col]
        bo = _bias_round(bias, o, shift)
        orow = out[p, o, y]
        xrow = x[p, o, y]
        for q in range(W):
            base = np.int64(xrow[q]) if residual else np.int64(128)
            orow[q] = _clamp(base + ((np.int64(acc[_U(q) * uCp + col]) + bo) >> shift), 0, 255)


@njit(inline="always")
def _row_store_last(plane, p, y, acc, bias, R, Cp, shift, up_off, up_w, up_den, den_shift, V, S,
                    out):
    """Rows y*r .. y*r + r-1 of the output: fixed upsample (reference.fixed_upsample) plus the
    pixel-shuffled deltas. The separable upsample sum is computed vertical-first into ``V``
    (int32 [r + 1, W + pads]; row r holds an edge-padded copy of the source row being
    added), then horizontally into ``S`` (int32 [W]); integer sums are exact, so the result
    equals the reference's double sum."""
    H, W = plane.shape[1], plane.shape[2]
    r = up_off.shape[0]
    T = up_w.shape[1]
    lo = 0
    for a in range(r):
        lo = min(lo, up_off[a])
    pad_l = -lo
    Wp = V.shape[1]
    # V[a, j] = sum_i up_w[a, i] * plane[clamp(y + up_off[a] + i), clamp(j - pad_l)], from an
    # edge-padded int32 copy of each source row (V[r]) so that the sums have no clamps
    prow = V[r]
    for a in range(r):
        va = V[a]
        for j in range(Wp):
            va[j] = 0
        for i in range(T):
            wy = up_w[a, i]
            src = plane[p, _clamp(y + up_off[a] + i, 0, H - 1)]
            for j in range(pad_l):
                prow[j] = np.int32(src[0])
            for j in range(W):
                prow[pad_l + j] = np.int32(src[j])
            for j in range(pad_l + W, Wp):
                prow[j] = np.int32(src[W - 1])
            for j in range(Wp):
                va[j] += wy * prow[j]
    d2 = np.int32(up_den * up_den)
    half = np.int32(d2 // 2)
    uCp = _U(Cp)
    # |sums| <= 255 * (sum |w|)**2 < 2**31 for every upsample (bicubic: sum |w| < 320)
    for a in range(r):
        orow = out[p, y * r + a]
        vrow = V[a]
        for b in range(r):
            o = a * r + b
            col = _U(2 * R * Cp + o)  # column q's sum is acc[q * Cp + col]
            bo = _bias_round(bias, o, shift)
            # S[q] = sum_t up_w[b, t] * V[a, q + up_off[b] + pad_l + t]  (contiguous, vectorisable)
            for q in range(W):
                S[q] = 0
            for t in range(T):
                wb = up_w[b, t]
                off = _U(up_off[b] + pad_l + t)
                for q in range(W):
                    S[q] += wb * vrow[_U(q) + off]
            if den_shift >= 0:
                for q in range(W):
                    S[q] = (S[q] + half) >> den_shift  # == floor division by a power of two
            else:
                for q in range(W):
                    S[q] = (S[q] + half) // d2  # // floors, as in the reference
            for q in range(W):
                delta = (np.int64(acc[_U(q) * uCp + col]) + bo) >> shift
                orow[q * r + b] = _clamp(_clamp(S[q], 0, 255) + delta, 0, 255)


# ----------------------------------------------------------------------------- kernels
# One prange iteration = one band of BAND input rows of one plane; scratch rows are
# allocated per iteration. acc: int32 [BAND, (W + 4R) * Cp] (see _band_accumulate_expanded);
# Cp = c_out padded to a multiple of VEC.

BAND = 8


@njit(inline="always")
def _band(it, nb, H):
    """Work item ``it`` of ``nb`` bands per plane -> (plane, first row, rows)."""
    p = it // nb
    y0 = (it - p * nb) * BAND
    return p, y0, min(BAND, H - y0)


def row_reads(c_in: int, k: int, c_out: int) -> float:
    """8-lane table-row reads (inner-loop vector steps) per output pixel of one layer, as
    these kernels do them (``bench.accounting``, ``bench.kernel_floor``)."""
    return c_in * k * k * _cpad(c_out) / VEC


@njit(inline="always")
def _cpad(c_out):
    """int32 lanes per accumulator column: c_out rounded up to a multiple of VEC."""
    return (c_out + VEC - 1) // VEC * VEC


@njit(**JIT)
def _k_hidden_interp(x, idx, wt, tb_p, td_p, bias, shift, residual, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = tb_p.shape[1] // 2
    Cp = _cpad(bias.shape[0])
    nb = (H + BAND - 1) // BAND
    for it in prange(P * nb):
        p, y0, nrows = _band(it, nb, H)
        acc = np.empty((BAND, (W + 4 * R) * Cp), np.int32)
        _band_accumulate_interp(x, p, y0, nrows, idx, wt, tb_p, td_p, acc, Cp)
        for b in range(nrows):
            _row_store_hidden(x, p, y0 + b, acc[b], bias, R, Cp, shift, residual, out)


@njit(**JIT)
def _k_hidden_expanded(x, etab_p, bias, shift, residual, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = etab_p.shape[1] // 2
    Cp = _cpad(bias.shape[0])
    nb = (H + BAND - 1) // BAND
    for it in prange(P * nb):
        p, y0, nrows = _band(it, nb, H)
        acc = np.empty((BAND, (W + 4 * R) * Cp), np.int32)
        _band_accumulate_expanded(x, p, y0, nrows, etab_p, acc, Cp)
        for b in range(nrows):
            _row_store_hidden(x, p, y0 + b, acc[b], bias, R, Cp, shift, residual, out)


@njit(**JIT)
def _k_last_interp(x, idx, wt, tb_p, td_p, bias, shift, plane, up_off, up_w, up_den,
                   den_shift, v_width, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = tb_p.shape[1] // 2
    Cp = _cpad(bias.shape[0])
    r = up_off.shape[0]
    nb = (H + BAND - 1) // BAND
    for it in prange(P * nb):
        p, y0, nrows = _band(it, nb, H)
        acc = np.empty((BAND, (W + 4 * R) * Cp), np.int32)
        V = np.empty((r + 1, v_width), np.int32)
        S = np.empty(W, np.int32)
        _band_accumulate_interp(x, p, y0, nrows, idx, wt, tb_p, td_p, acc, Cp)
        for b in range(nrows):
            _row_store_last(plane, p, y0 + b, acc[b], bias, R, Cp, shift, up_off, up_w, up_den,
                            den_shift, V, S, out)


@njit(**JIT)
def _k_last_expanded(x, etab_p, bias, shift, plane, up_off, up_w, up_den, den_shift, v_width, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = etab_p.shape[1] // 2
    Cp = _cpad(bias.shape[0])
    r = up_off.shape[0]
    nb = (H + BAND - 1) // BAND
    for it in prange(P * nb):
        p, y0, nrows = _band(it, nb, H)
        acc = np.empty((BAND, (W + 4 * R) * Cp), np.int32)
        V = np.empty((r + 1, v_width), np.int32)
        S = np.empty(W, np.int32)
        _band_accumulate_expanded(x, p, y0, nrows, etab_p, acc, Cp)
        for b in range(nrows):
            _row_store_last(plane, p, y0 + b, acc[b], bias, R, Cp, shift, up_off, up_w, up_den,
                            den_shift, V, S, out)


# ----------------------------------------------------------------------------- launchers


def _need(arr, name, dtype, ndim):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype or arr.ndim != ndim:
        raise TypeError(f"{name} must be {np.dtype(dtype).name} with {ndim} dims, "
                        f"got {arr.dtype} {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


# Kernel-side tables, memoised per source array (id + weak reference, so a new array that
# reuses a freed id is never served stale tables).
_KTABLES: dict = {}


def _kernel_tables(arr: np.ndarray, make):
    key = id(arr)
    hit = _KTABLES.get(key)
    if hit is not None and hit[0]() is arr:
        return hit[1]
    for k_, (ref, _) in list(_KTABLES.items()):
        if ref() is None:
            del _KTABLES[k_]
    derived = make(arr)
    _KTABLES[key] = (weakref.ref(arr), derived)
    return derived


def _pad_channels(v: np.ndarray) -> np.ndarray:
    """int [..., c_out] (values in int16 range) -> int16 [..., Cp]: zero-padded to a
    multiple of VEC lanes."""
    C = v.shape[-1]
    assert v.min(initial=0) >= -32768 and v.max(initial=0) <= 32767
    out = np.zeros(v.shape[:-1] + ((C + VEC - 1) // VEC * VEC,), np.int16)
    out[..., :C] = v
    return out


def _interp_tables(table: np.ndarray):
    """(tb_p, td_p) int16 [c_in, k(dy), L-1, KC]: ``256 * table[i]`` and
    ``table[i+1] - table[i]``, one contiguous (padded) window row per (channel, dy, knot)."""
    t = table.astype(np.int32).transpose(0, 2, 1, 3, 4)  # [c_in, dy, L, dx, c_out]
    c_in, k, L = t.shape[:3]
    tb = _pad_channels(t[:, :, :-1] * 256).reshape(c_in, k, L - 1, -1)
    td = _pad_channels(t[:, :, 1:] - t[:, :, :-1]).reshape(c_in, k, L - 1, -1)
    return tb, td


def _expanded_tables(etab: np.ndarray):
    """etab_p int16 [c_in, k(dy), 256, KC]: ``etab``, one contiguous (padded) window row per
    (channel, dy, code)."""
    e = _pad_channels(etab.transpose(0, 2, 1, 3, 4))  # [c_in, dy, 256, dx, Cp]
    c_in, k = e.shape[:2]
    return e.reshape(c_in, k, 256, -1)


def _den_shift(up_den: int) -> int:
    d2 = int(up_den) * int(up_den)
    return d2.bit_length() - 1 if d2 & (d2 - 1) == 0 else -1


def _v_width(W: int, up_off: np.ndarray, T: int) -> int:
    return W + max(0, -int(up_off.min())) + max(0, int(up_off.max()) + T - 1)


def launch_hidden(x, lut, bias, shift, residual, out, mode="interp", stream=None):
    """One hidden layer. ``lut`` is ``(idx, wt, table)`` in interp mode, ``etab`` in expanded mode.
    ``stream`` is ignored on the CPU (the CUDA launcher takes the same arguments); the call
    returns when ``out`` is written."""
    _need(x, "x", np.uint8, 4)
    _need(bias, "bias", np.int32, 1)
    _need(out, "out", np.uint8, 4)
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        tb_p, td_p = _kernel_tables(table, _interp_tables)
        _k_hidden_interp(x, idx, wt, tb_p, td_p, bias, np.int64(shift), bool(residual), out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        etab_p = _kernel_tables(lut, _expanded_tables)
        _k_hidden_expanded(x, etab_p, bias, np.int64(shift), bool(residual), out)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return out


def launch_last(x, lut, bias, shift, plane, up_off, up_w, up_den, out, mode="interp",
                stream=None):
    """The last layer fused with the fixed upsample and the pixel shuffle (``stream``: as in
    ``launch_hidden``)."""
    _need(x, "x", np.uint8, 4)
    _need(bias, "bias", np.int32, 1)
    _need(plane, "plane", np.uint8, 3)
    _need(up_off, "up_off", np.int32, 1)
    _need(up_w, "up_w", np.int32, 2)
    _need(out, "out", np.uint8, 3)
    den_shift = np.int64(_den_shift(up_den))
    v_width = np.int64(_v_width(x.shape[3], up_off, up_w.shape[1]))
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        tb_p, td_p = _kernel_tables(table, _interp_tables)
        _k_last_interp(x, idx, wt, tb_p, td_p, bias, np.int64(shift), plane, up_off, up_w,
                       np.int64(up_den), den_shift, v_width, out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        etab_p = _kernel_tables(lut, _expanded_tables)
        _k_last_expanded(x, etab_p, bias, np.int64(shift), plane, up_off, up_w, np.int64(up_den),
                         den_shift, v_width, out)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return out


def run_planes(prepared, planes: np.ndarray, mode: str = "interp") -> np.ndarray:
    """Whole model on uint8 [P, H, W] planes -> uint8 [P, H*r, W*r].

    ``prepared`` is an ``iqlut_gpu.backends.Prepared`` (lookup tables derived once per model).
    A model with a self-ensemble runs once per transform (``iqlut_gpu.ensemble``).
    """
    planes = np.ascontiguousarray(planes, dtype=np.uint8)
    return ensemble.run(lambda q: _one_pass(prepared, q, mode), planes, prepared.model.ensemble)


def _one_pass(prepared, planes: np.ndarray, mode: str) -> np.ndarray:
    P, H, W = planes.shape
    r = prepared.scale
    x = planes[:, None]
    for n, layer in enumerate(prepared.layers[:-1]):
        out = np.empty((P, layer.c_out, H, W), np.uint8)
        launch_hidden(x, prepared.lut(n, mode), layer.bias, layer.shift, layer.residual, out, mode)
        x = out
    last = prepared.layers[-1]
    out = np.empty((P, H * r, W * r), np.uint8)
    launch_last(x, prepared.lut(len(prepared.layers) - 1, mode), last.bias, last.shift, planes,
                prepared.up_off, prepared.up_w, prepared.up_den, out, mode)
    return out
