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

Kernel-side tables (derived once per lut by ``_kernel_tables`` and memoised), int16 rows
[c_in, k(dy), n, rowlen]: the k window columns of one (channel, dy, code or knot) laid
out so that an 8-lane read gives 8 output lanes (``_kernel_rows``):

- expanded: n = 256 codes, ``etab``; interp: n = L-1 knot intervals, each lane the pair
  ``(table[i], table[i+1] - table[i])``, so that ``table[i] * (256 - w) + table[i+1] * w``
  is one multiply-add of int16 pairs by ``(256, w)`` (``_vrow2``), exactly;
- c_out > 4: window column dx at lanes ``dx*Cp``, the channels zero-padded to ``Cp``, a
  multiple of ``VEC``; c_out <= 4 (packed): 4 lanes per column with a zero column
  before and after, so that one 8-lane read serves two neighbouring output pixels.

Row sums in gather order, accumulators in registers. For each output row of a band the
kernels compute the sums of reference.accumulate pixel by pixel (two at a time), each in
one or two 8-lane int32 registers (``LANES``, a Numba type for an LLVM ``<8 x i32>``):
every table row costs one load, a sign extension and one add, with no store (the scatter
form it replaces did a load, an add and a store of the accumulator per row: 3.1-3.4
cycles per row against 1.2-1.4 now, measured with ``python -m bench.kernel_floor``). The
sums are exact int32: ``|A| <= 64 * 81 * 32768 < 2**28`` and the loader bounds the bias
(``model.MAX_ABS_BIAS``). The start of each source pixel's table row (``code *
rowlen``, edge-clamped, with its weight pair in interp mode) is computed once per band
(``_band_sources``); the window loops are compile-time constants for the shipped shapes
(``_row_sums``), which LLVM unrolls. The sums of a row go to a pixel-major buffer, and
the stores read it back 8 pixels at a time through an 8x8 transpose, so that
requantisation, clamping and the pixel shuffle of the last layer run 8 lanes wide.

x4's last layer (k = 1, 16 lanes) in expanded mode, where its tables allow (the shipped
model's do; ``_k1_grouped_tables``), sums its 8 channels as two groups of four in int16
(exact modulo 2**16: each group's range is shifted into int16 and the shift put into the
bias), requantises per pixel into int16, and stores in output order (``_row_store_x4``):
the deltas of each output row by a 64-bit transpose, the bicubic base packed into the
same order, saturating int16 arithmetic for the clamps (bench/README.md, "Kernel floor").

One ``prange`` iteration computes a band of ``BAND`` output rows of one plane (all
columns, all output channels; for the last layer the r output rows of each input row):
iterations write disjoint rows, so no synchronisation is needed.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from iqlut_gpu import ensemble
from iqlut_gpu.memo import IdentityMemo
from iqlut_gpu.kernels import aligned_copy, numba_ensemble

# Compile flags in one place: parallel prange, on-disk cache, no Python objects. The band
# bodies the kernels' prange loops call are compiled with the same flags, less parallel.
JIT = dict(parallel=True, cache=True, nogil=True, fastmath=False)
JIT_BODY = {**JIT, "parallel": False}

MODES = ("interp", "expanded")


@njit(inline="always")
def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


# ----------------------------------------------------------------------------- lanes

VEC = 8  # int32 lanes per vector step (one 256-bit register)
_LANES_IR = ir.VectorType(ir.IntType(32), VEC)


class _Lanes(types.Type):
    """VEC int32 lanes held in a register (an LLVM ``<8 x i32>`` value): the accumulators
    of the row sums, so that a table row costs one load and one add, with no store."""

    def __init__(self):
        super().__init__(name="iqlut.lanes_i32x8")


LANES = _Lanes()


@register_model(_Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LANES_IR)


def _at(context, builder, aty, arr, index, ity, lanes, bits):
    """Pointer to ``lanes`` elements of ``bits`` bits at ``arr[index]`` (1-D C array; no
    bounds check: the callers guarantee the range)."""
    data = context.make_array(aty)(context, builder, arr).data
    i = context.cast(builder, index, ity, types.int64)
    return builder.bitcast(builder.gep(data, [i]), ir.VectorType(ir.IntType(bits), lanes).as_pointer())


def _arg_at(context, builder, sig, args, a, i, lanes, bits):
    """``_at`` for intrinsic argument ``a`` (the array) indexed by argument ``i``."""
    return _at(context, builder, sig.args[a], args[a], args[i], sig.args[i], lanes, bits)


def _splat(builder, value, lanes=VEC):
    """A scalar integer (truncated to i32) in every lane."""
    i32 = ir.IntType(32)
    v = builder.trunc(value, i32) if value.type.width > 32 else value
    v = builder.insert_element(ir.Constant(ir.VectorType(i32, lanes), None), v, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))


def _add_shift(builder, v, add, shift):
    """``(v + add) >> shift`` (arithmetic) in int32 lanes, a scalar ``add`` or ``shift``
    splatted: requantisation and the upsample's rounding division."""
    if not isinstance(add.type, ir.VectorType):
        add = _splat(builder, add)
    return builder.ashr(builder.add(v, add), _splat(builder, shift))


def _clamp_lanes(builder, v, lo, hi):
    n = v.type.count
    lo_v = ir.Constant(ir.VectorType(ir.IntType(32), n), [lo] * n)
    hi_v = ir.Constant(ir.VectorType(ir.IntType(32), n), [hi] * n)
    v = builder.select(builder.icmp_signed("<", v, lo_v), lo_v, v)
    return builder.select(builder.icmp_signed(">", v, hi_v), hi_v, v)


@intrinsic
def _v0(typingctx):
    """VEC zero lanes."""
    return LANES(), lambda context, builder, sig, args: ir.Constant(_LANES_IR, None)


@intrinsic
def _vrow(typingctx, acc, tab, ti):
    """``acc + tab[ti:ti+VEC]``: one 8-lane table-row read (int16, sign-extended)."""

    def codegen(context, builder, sig, args):
        v = builder.load(_arg_at(context, builder, sig, args, 1, 2, VEC, 16),
                         align=2)
        return builder.add(args[0], builder.sext(v, _LANES_IR))

    return LANES(acc, tab, ti), codegen


@intrinsic
def _vrow2(typingctx, acc, tab, ti, wpair):
    """``acc + t[0::2] * 256 + t[1::2] * w`` with ``t = tab[ti:ti+2*VEC]`` (int16 pairs
    (knot value, difference to the next knot)) and ``wpair = 256 | w << 16``: one 8-lane
    row read of an interpolated table, written so that LLVM emits one multiply-add of
    int16 pairs (``vpmaddwd`` on x86). Exact: |products| < 2**16 each. (The weight pair's
    halves land in the lanes in little-endian order, as on every Numba target.)"""

    def codegen(context, builder, sig, args):
        i32x16 = ir.VectorType(ir.IntType(32), 2 * VEC)
        t = builder.load(_arg_at(context, builder, sig, args, 1, 2, 2 * VEC, 16),
                         align=2)
        w = builder.bitcast(_splat(builder, args[3]), ir.VectorType(ir.IntType(16), 2 * VEC))
        prod = builder.mul(builder.sext(t, i32x16), builder.sext(w, i32x16))
        even = _shuffle(builder, prod, prod, list(range(0, 2 * VEC, 2)))
        odd = _shuffle(builder, prod, prod, list(range(1, 2 * VEC, 2)))
        return builder.add(args[0], builder.add(even, odd))

    return LANES(acc, tab, ti, wpair), codegen


@intrinsic
def _vget(typingctx, arr, i):
    """``arr[i:i+VEC]`` (int32) as lanes."""

    def codegen(context, builder, sig, args):
        return builder.load(_arg_at(context, builder, sig, args, 0, 1, VEC, 32),
                            align=4)

    return LANES(arr, i), codegen


_LANES16_IR = ir.VectorType(ir.IntType(32), 2 * VEC)


class _Lanes16(types.Type):
    """16 int32 lanes (an LLVM ``<16 x i32>``, two registers): the k = 1, 16-lane row sums
    of ``_sums_k1_16`` in channel-pair order (``_PAIR_ORDER``)."""

    def __init__(self):
        super().__init__(name="iqlut.lanes_i32x16")


LANES16 = _Lanes16()


@register_model(_Lanes16)
class _Lanes16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LANES16_IR)


# The lanes of _vpair16's sums: channels 0-3, 8-11 (one register), 4-7, 12-15 (the other),
# as the in-lane word unpacks leave them; its own inverse.
_PAIR_ORDER = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]


@intrinsic
def _v16_0(typingctx):
    """16 zero lanes."""
    return LANES16(), lambda context, builder, sig, args: ir.Constant(_LANES16_IR, None)


@intrinsic
def _v16put(typingctx, arr, i, v):
    """``arr[i:i+16] = v`` back in channel order (``v`` in ``_PAIR_ORDER``)."""

    def codegen(context, builder, sig, args):
        builder.store(_shuffle(builder, args[2], args[2], _PAIR_ORDER),
                      _arg_at(context, builder, sig, args, 0, 1, 2 * VEC, 32), align=4)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def _vpair16(typingctx, acc, tab, i1, i2):
    """``acc + tab[i1:i1+16] + tab[i2:i2+16]`` (int16 rows of two channels, sign-extended),
    in ``_PAIR_ORDER``: the two rows' words interleaved (unpack low and high) and summed in
    pairs by a multiply-add with ones (x86: ``vpmaddwd``): 2 loads, 2 unpacks and 2
    multiply-adds for 32 values, against 4 loads with sign extension and 2 more adds."""

    def codegen(context, builder, sig, args):
        r1 = builder.load(_arg_at(context, builder, sig, args, 1, 2, 2 * VEC, 16), align=2)
        r2 = builder.load(_arg_at(context, builder, sig, args, 1, 3, 2 * VEC, 16), align=2)
        s = _pair_sums16(context, builder, r1, r2)
        return builder.add(args[0], s)

    return LANES16(acc, tab, i1, i2), codegen


def _pair_sums16(context, builder, r1, r2):
    """16 int16 lanes ``r1``, ``r2`` -> ``sext(r1) + sext(r2)`` in ``_PAIR_ORDER`` (x86 with
    AVX2: unpack low and high words, then a multiply-add with ones, ``vpmaddwd``)."""
    i16x16 = ir.VectorType(ir.IntType(16), 2 * VEC)
    if _x86_avx2(context):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_LANES_IR, [i16x16, i16x16]), "llvm.x86.avx2.pmadd.wd")
        ones = ir.Constant(i16x16, [1] * 2 * VEC)
        m = []
        for h in (0, 4):
            mask = [j + h + 16 * e + g for g in (0, 8) for j in range(4) for e in (0, 1)]
            x = builder.shuffle_vector(r1, r2, ir.Constant(ir.VectorType(ir.IntType(32), 2 * VEC),
                                                           mask))
            m.append(builder.call(fn, [x, ones]))
        return _shuffle(builder, m[0], m[1], list(range(2 * VEC)))
    s = builder.add(builder.sext(r1, _LANES16_IR), builder.sext(r2, _LANES16_IR))
    return _shuffle(builder, s, s, _PAIR_ORDER)


@intrinsic
def _vquads(typingctx, acc, tab, o0, o1, o2, o3, o4, o5, o6, o7):
    """``acc + sum_c tab[o_c:o_c+16]`` for the 16-lane int16 rows of 8 channels, in two
    groups of four summed as int16 (wrapping) and the two group sums widened and added
    (``_pair_sums16``): 8 loads, 6 int16 adds and 4 shuffle or multiply-add steps for 128
    values. Exact where each group's true sum lies in int16 (``_k1_grouped_tables`` makes
    the tables so, or the kernels do not take this path). The rows' lanes are in
    ``_PAIR_ORDER``, so the sums come out in channel order."""

    def codegen(context, builder, sig, args):
        rows = [builder.load(_arg_at(context, builder, sig, args, 1, 2 + c, 2 * VEC, 16), align=2)
                for c in range(8)]
        ga = builder.add(builder.add(rows[0], rows[1]), builder.add(rows[2], rows[3]))
        gb = builder.add(builder.add(rows[4], rows[5]), builder.add(rows[6], rows[7]))
        return builder.add(args[0], _pair_sums16(context, builder, ga, gb))

    return LANES16(acc, tab, o0, o1, o2, o3, o4, o5, o6, o7), codegen


@intrinsic
def _vstarts(typingctx, ob, oi, xf, xi, base):
    """``ob[oi:oi+8] = base + xf[xi:xi+8] * 16`` (uint8 codes -> int32 row starts of 16-lane
    rows): 8 pixels' row starts in one zero-extending load, a shift, an add and a store."""

    def codegen(context, builder, sig, args):
        codes = builder.load(_arg_at(context, builder, sig, args, 2, 3, VEC, 8), align=1)
        v = builder.shl(builder.zext(codes, _LANES_IR), _splat(builder, ir.Constant(ir.IntType(32), 4)))
        b = context.cast(builder, args[4], sig.args[4], types.int32)
        builder.store(builder.add(v, _splat(builder, b)),
                      _arg_at(context, builder, sig, args, 0, 1, VEC, 32), align=4)
        return context.get_dummy_value()

    return types.void(ob, oi, xf, xi, base), codegen


def _sat_trunc(builder, v, lo, hi, bits):
    """``v`` clamped to [lo, hi] and truncated to ``bits``-bit lanes."""
    return builder.trunc(_clamp_lanes(builder, v, lo, hi), ir.VectorType(ir.IntType(bits), v.type.count))


def _packs(context, builder, a, b, signed16):
    """x86 ``vpackssdw`` (``signed16``: int32 -> int16, signed saturation) or ``vpackuswb``
    (int16 -> uint8, unsigned saturation) of ``a``, ``b``: per 128-bit lane, ``a``'s half
    then ``b``'s. The intrinsic where the target has AVX2, else the same lanes in generic IR."""
    n = a.type.count  # 8 (int32 -> int16) or 16 (int16 -> int8)
    if _x86_avx2(context):
        name, res = (("llvm.x86.avx2.packssdw", ir.VectorType(ir.IntType(16), 16)) if signed16
                     else ("llvm.x86.avx2.packuswb", ir.VectorType(ir.IntType(8), 32)))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(res, [a.type, a.type]),
                                            name)
        return builder.call(fn, [a, b])
    if signed16:
        a, b = (_sat_trunc(builder, x, -32768, 32767, 16) for x in (a, b))
    else:
        i32 = ir.VectorType(ir.IntType(32), n)
        a, b = (_sat_trunc(builder, builder.sext(x, i32), 0, 255, 8) for x in (a, b))
    h = n // 2
    mask = list(range(h)) + list(range(n, n + h)) + list(range(h, n)) + list(range(n + h, 2 * n))
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 2 * n), mask))


@intrinsic
def _v16get(typingctx, arr, i):
    """``arr[i:i+16]`` (int32) as 16 lanes."""

    def codegen(context, builder, sig, args):
        return builder.load(_arg_at(context, builder, sig, args, 0, 1, 2 * VEC, 32), align=4)

    return LANES16(arr, i), codegen


@intrinsic
def _vdelta16(typingctx, arr, i, s, sh):
    """``arr[i:i+16] = sat16(s >> sh)`` (int16, ``s`` 16 int32 lanes in channel order; the
    sums plus the rounded bias): one pixel's requantised deltas, in ``_PAIR_ORDER`` (channels
    0-3, 8-11, 4-7, 12-15: the output rows 0, 2, 1, 3 of the x4 pixel shuffle, 4 deltas
    each). Saturation keeps the result: a delta beyond int16 drives the clamped output to
    0 or 255 either way."""

    def codegen(context, builder, sig, args):
        v = builder.ashr(args[2], _splat(builder, args[3], 2 * VEC))
        lo = _shuffle(builder, v, v, list(range(VEC)))
        hi = _shuffle(builder, v, v, list(range(VEC, 2 * VEC)))
        builder.store(_packs(context, builder, lo, hi, True),
                      _arg_at(context, builder, sig, args, 0, 1, 2 * VEC, 16), align=2)
        return context.get_dummy_value()

    return types.void(arr, i, s, sh), codegen


@intrinsic
def _vrows16(typingctx, src, si, dst):
    """8 pixels' deltas (``_vdelta16``: ``src[si + 16*i:]``, i = 0..7) -> each x4 output
    row's 32 deltas in output order, in the order ``_vout4`` adds them to the base:
    ``dst[32*a:32*a+16]`` = pixels 0, 1 | 4, 5 and ``dst[32*a+16:32*a+32]`` = pixels 2, 3 |
    6, 7 of output row a, 4 phases each (a 4x4 transpose of 64-bit pieces per half: 8
    unpacks and 8 lane permutes for the 8 pixels)."""

    def codegen(context, builder, sig, args):
        i16x16 = ir.VectorType(ir.IntType(16), 16)
        i64x4 = ir.VectorType(ir.IntType(64), 4)
        i64 = ir.IntType(64)
        si = context.cast(builder, args[1], sig.args[1], types.int64)
        d = []
        for i in range(8):
            ptr = _at(context, builder, sig.args[0], args[0], builder.add(si, ir.Constant(i64, 16 * i)),
                      types.int64, 16, 16)
            d.append(builder.bitcast(builder.load(ptr, align=2), i64x4))

        def sh(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 4), mask))

        rows = {}
        for (p0, p1, p2, p3), half in (((0, 1, 4, 5), 0), ((2, 3, 6, 7), 1)):
            lo01, hi01 = sh(d[p0], d[p1], [0, 4, 2, 6]), sh(d[p0], d[p1], [1, 5, 3, 7])
            lo45, hi45 = sh(d[p2], d[p3], [0, 4, 2, 6]), sh(d[p2], d[p3], [1, 5, 3, 7])
            # qword 0: row 0, 1: row 2, 2: row 1, 3: row 3 (_vdelta16's order)
            rows[0, half] = sh(lo01, lo45, [0, 1, 4, 5])
            rows[1, half] = sh(lo01, lo45, [2, 3, 6, 7])
            rows[2, half] = sh(hi01, hi45, [0, 1, 4, 5])
            rows[3, half] = sh(hi01, hi45, [2, 3, 6, 7])
        for (a, half), v in rows.items():
            ptr = _at(context, builder, sig.args[2], args[2], ir.Constant(i64, 32 * a + 16 * half),
                      types.int64, 16, 16)
            builder.store(builder.bitcast(v, i16x16), ptr, align=2)
        return context.get_dummy_value()

    return types.void(src, si, dst), codegen


@intrinsic
def _vout4(typingctx, out, oi, f0, f1, f2, f3, d, di):
    """``out[oi:oi+32]``: 8 pixels of one x4 output row, ``clamp(clamp(f_b, 0, 255) + delta,
    0, 255)`` for phases b = 0..3 interleaved, the deltas ``d[di:di+32]`` (int16, in
    ``_vrows16``'s order). The phases (int32, 8 pixels each, within int16) are packed to
    int16 and interleaved into that order (2 packs, 4 unpacks), clamped, added with
    saturation, and packed to bytes with unsigned saturation, which is the outer clamp:
    in order, no lane permute."""

    def codegen(context, builder, sig, args):
        i16x16 = ir.VectorType(ir.IntType(16), 16)
        p01 = _packs(context, builder, args[2], args[3], True)
        p23 = _packs(context, builder, args[4], args[5], True)
        lw = [g + j + 16 * e for g in (0, 8) for j in range(4) for e in (0, 1)]  # unpack low words
        hw = [g + 4 + j + 16 * e for g in (0, 8) for j in range(4) for e in (0, 1)]
        m = lambda mask: ir.Constant(ir.VectorType(ir.IntType(32), 16), mask)
        L = builder.shuffle_vector(p01, p23, m(lw))
        H = builder.shuffle_vector(p01, p23, m(hw))
        X = builder.shuffle_vector(L, H, m(lw))
        Y = builder.shuffle_vector(L, H, m(hw))
        zero, top = ir.Constant(i16x16, [0] * 16), ir.Constant(i16x16, [255] * 16)
        sat = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i16x16, [i16x16, i16x16]),
                                             "llvm.sadd.sat.v16i16")
        outs = []
        for k, v in enumerate((X, Y)):
            v = builder.select(builder.icmp_signed("<", v, zero), zero, v)
            v = builder.select(builder.icmp_signed(">", v, top), top, v)
            i = builder.add(context.cast(builder, args[7], sig.args[7], types.int64),
                            ir.Constant(ir.IntType(64), 16 * k))
            dv = builder.load(_at(context, builder, sig.args[6], args[6], i, types.int64, 16, 16), align=2)
            outs.append(builder.call(sat, [v, dv]))
        builder.store(_packs(context, builder, outs[0], outs[1], False),
                      _arg_at(context, builder, sig, args, 0, 1, 32, 8), align=1)
        return context.get_dummy_value()

    return types.void(out, oi, f0, f1, f2, f3, d, di), codegen


def _x86_avx2(context):
    """Whether the code is compiled for an x86-64 CPU with AVX2 (then an x86 intrinsic may
    replace a generic sequence LLVM does not fold; Numba's cache is keyed on the CPU)."""
    cg = context.codegen()
    tm = getattr(cg, "_tm", None)
    return (tm is not None and str(tm.triple).startswith("x86_64")
            and "+avx2" in str(getattr(cg, "_tm_features", "")))


@intrinsic
def _vput(typingctx, arr, i, v):
    """``arr[i:i+VEC] = v`` (int32)."""

    def codegen(context, builder, sig, args):
        builder.store(args[2], _arg_at(context, builder, sig, args, 0, 1, VEC, 32),
                      align=4)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def _vmac(typingctx, acc, arr, i, w):
    """``acc + arr[i:i+VEC] * w`` (int32 lanes, ``w`` a scalar)."""

    def codegen(context, builder, sig, args):
        v = builder.load(_arg_at(context, builder, sig, args, 1, 2, VEC, 32),
                         align=4)
        return builder.add(args[0], builder.mul(v, _splat(builder, args[3])))

    return LANES(acc, arr, i, w), codegen


@intrinsic
def _splat8(typingctx, x):
    """``x`` (an integer) in VEC int32 lanes."""

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.int32))

    return LANES(x), codegen


@intrinsic
def _vround(typingctx, v, half, shift):
    """``(v + half) >> shift`` (arithmetic): the upsample's rounding division by a power
    of two."""

    def codegen(context, builder, sig, args):
        return _add_shift(builder, args[0], args[1], args[2])

    return LANES(v, half, shift), codegen


def _transpose8(builder, rows):
    """8 vectors of 8 lanes -> their transpose (unpack 32-bit, unpack 64-bit, swap halves)."""
    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    lo64, hi64 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    t = []
    for i in range(0, 8, 2):
        t += [_shuffle(builder, rows[i], rows[i + 1], lo), _shuffle(builder, rows[i], rows[i + 1], hi)]
    u = []
    for g in (0, 4):
        u += [_shuffle(builder, t[g], t[g + 2], lo64), _shuffle(builder, t[g], t[g + 2], hi64),
              _shuffle(builder, t[g + 1], t[g + 3], lo64), _shuffle(builder, t[g + 1], t[g + 3], hi64)]
    cols = [None] * 8
    for j in range(4):
        cols[j] = _shuffle(builder, u[j], u[j + 4], [0, 1, 2, 3, 8, 9, 10, 11])
        cols[j + 4] = _shuffle(builder, u[j], u[j + 4], [4, 5, 6, 7, 12, 13, 14, 15])
    return cols


@intrinsic
def _vtr8(typingctx, src, si, stride, dst, di):
    """``dst[di + 8*j + i] = src[si + i*stride + j]`` for i, j in 0..7 (int32): an 8x8
    transpose, from pixel-major sums to 8 channel vectors of 8 pixels."""

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        si_ = context.cast(builder, args[1], sig.args[1], types.int64)
        st = context.cast(builder, args[2], sig.args[2], types.int64)
        rows = []
        for i in range(8):
            idx = builder.add(si_, builder.mul(st, ir.Constant(i64, i)))
            ptr = _at(context, builder, sig.args[0], args[0], idx, types.int64, VEC, 32)
            rows.append(builder.load(ptr, align=4))
        di_ = context.cast(builder, args[4], sig.args[4], types.int64)
        for j, col in enumerate(_transpose8(builder, rows)):
            idx = builder.add(di_, ir.Constant(i64, 8 * j))
            builder.store(col, _at(context, builder, sig.args[3], args[3], idx, types.int64, VEC, 32),
                          align=4)
        return context.get_dummy_value()

    return types.void(src, si, stride, dst, di), codegen


@intrinsic
def _vhidden(typingctx, out, oi, v, bo, shift, base, bi, residual):
    """``out[oi:oi+8] = clamp(b + ((v + bo) >> shift), 0, 255)`` (uint8), ``b`` the uint8
    ``base[bi:bi+8]`` if ``residual`` else 128. int32 lanes: ``|v| <= 64*81*32768 < 2**28``
    and ``|bo| <= 2**24 + 2**23`` (model.MAX_ABS_BIAS, MAX_SHIFT)."""

    def codegen(context, builder, sig, args):
        t = _add_shift(builder, args[2], args[3], args[4])
        b8 = builder.load(_arg_at(context, builder, sig, args, 5, 6, VEC, 8), align=1)
        b = builder.select(args[7], builder.zext(b8, _LANES_IR), ir.Constant(_LANES_IR, [128] * VEC))
        r = _clamp_lanes(builder, builder.add(b, t), 0, 255)
        builder.store(builder.trunc(r, ir.VectorType(ir.IntType(8), VEC)),
                      _arg_at(context, builder, sig, args, 0, 1, VEC, 8), align=1)
        return context.get_dummy_value()

    return types.void(out, oi, v, bo, shift, base, bi, residual), codegen


@intrinsic
def _vlast(typingctx, s, v, bo, shift):
    """``clamp(clamp(s, 0, 255) + ((v + bo) >> shift), 0, 255)``: upsample base plus
    delta, in int32 lanes (``bo`` lanes too; bounds as in ``_vhidden``)."""

    def codegen(context, builder, sig, args):
        t = _add_shift(builder, args[1], args[2], args[3])
        return _clamp_lanes(builder, builder.add(_clamp_lanes(builder, args[0], 0, 255), t), 0, 255)

    return LANES(s, v, bo, shift), codegen


def _interleave_store(n):
    """``out[oi + q*n + b] = f_b[q]`` (uint8) for the ``n`` int32 vectors ``f_b`` (values
    0..255): 8 pixels of one output row of the pixel shuffle, its n phases interleaved."""

    def codegen(context, builder, sig, args):
        i8x = ir.VectorType(ir.IntType(8), VEC)
        f = [builder.trunc(v, i8x) for v in args[2:2 + n]]
        if n == 3:
            f.append(ir.Constant(i8x, None))
        pairs = [_shuffle(builder, f[i], f[i + 1], list(range(2 * VEC))) for i in range(0, len(f), 2)]
        both = pairs[0] if n == 2 else _shuffle(builder, pairs[0], pairs[1], list(range(4 * VEC)))
        mask = [b * VEC + q for q in range(VEC) for b in range(n)]
        row = _shuffle(builder, both, both, mask)
        builder.store(row, _arg_at(context, builder, sig, args, 0, 1, n * VEC, 8),
                      align=1)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _vshuffle2(typingctx, out, oi, f0, f1):
    return types.void(out, oi, f0, f1), _interleave_store(2)


@intrinsic
def _vshuffle3(typingctx, out, oi, f0, f1, f2):
    return types.void(out, oi, f0, f1, f2), _interleave_store(3)


@intrinsic
def _vshuffle4(typingctx, out, oi, f0, f1, f2, f3):
    return types.void(out, oi, f0, f1, f2, f3), _interleave_store(4)


# ----------------------------------------------------------------------------- row sums

_U = np.uint64  # unsigned array indices: no negative-index wraparound code in the loops


@njit(inline="always")
def _unit(interp):
    """Table elements per unit of the stored row starts: every row length is a multiple
    of it (expanded: ``k*Cp`` or ``(k+2)*4``; interp: twice that), and with it the largest
    start, ``255 * 9*64 / 4`` (expanded) or ``254 * 2*9*64 / 8`` (interp), fits in uint16."""
    return 8 if interp else 4


@njit(**JIT_BODY)
def _band_sources(x, p, y0, nsrc, R, rowlen, interp, idx, wt, offs, wts):
    """For every source pixel the band reads (rows y0-R .. y0+nrows-1+R, columns -R ..
    W+R, edge-clamped; ``offs`` uint16, ``wts`` int32 [c_in, nsrc, Wq]): the start of its
    table row in units of ``_unit`` elements, ``code * rowlen`` (expanded) or
    ``idx[c, code] * rowlen`` (interp), and in interp mode the weight pair ``256 |
    wt[c, code] << 16``. (uint16 starts, not int32: half the cache the row sums read them
    from; 1.07x faster hidden layers, measured.)"""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    Wq = offs.shape[2]
    rl = np.uint16(rowlen // _unit(interp))
    for c in range(c_in):
        for s in range(nsrc):
            src = x[p, c, _clamp(y0 + s - R, 0, H - 1)]
            o = offs[c, s]
            if interp:
                g = wts[c, s]
                for j in range(Wq):
                    code = src[_clamp(j - R, 0, W - 1)]
                    o[j] = np.uint16(idx[c, code]) * rl
                    g[j] = np.int32(256) | (np.int32(wt[c, code]) << np.int32(16))
            else:
                for j in range(R):
                    o[j] = np.uint16(src[0]) * rl
                om = o[R:R + W]
                for j in range(W):
                    om[j] = np.uint16(src[j]) * rl
                for j in range(R + W, Wq):
                    o[j] = np.uint16(src[W - 1]) * rl


@njit(**JIT_BODY)
def _step(acc, tab, i, wts, j, interp):
    """One 8-lane row read: ``tab`` at element ``i`` (interp: a pair row, weighted by the
    source pixel ``j``'s weight pair)."""
    if interp:
        return _vrow2(acc, tab, i, wts[j])
    return _vrow(acc, tab, i)


@njit(**JIT_BODY)
def _sums_pairs(tab, offs, wts, interp, c_in, k, Cp, bb, nsrc, Wq, W, acc):
    """Pixel-major sums of output row ``bb`` of the band, two pixels at a time:
    ``acc[q*Cp + o] = A[o, q]`` (Cp a multiple of VEC; reference.accumulate's gather):

        A[o, q] = sum_c sum_dy sum_dx v_c(X[c, y - dy + R, q - dx + R])[dy, dx, o]

    The source pixel at padded column ``q + 2R + 1 - e`` (e = 0..k) feeds window column
    ``e - 1`` of pixel q and ``e`` of pixel q+1, so the pair shares its k+1 row starts.
    Table rows: ``k*Cp`` lanes (window column dx at ``dx*Cp``); interp rows are pairs."""
    f = 2 if interp else 1
    R = k // 2
    ct = tab.shape[0] // (c_in * k)  # one (c, dy) slice of the table
    for m in range(0, Cp, VEC):
        for q in range(0, W, 2):
            a = _v0()
            b = _v0()
            tb = _U(f * m)
            for c in range(c_in):
                j = _U((c * nsrc + bb + 2 * R) * Wq + q + 2 * R + 1)
                for dy in range(k):
                    for e in range(k + 1):
                        o = tb + _U(offs[j - _U(e)]) * _U(_unit(interp))
                        if e > 0:
                            a = _step(a, tab, o + _U(f * (e - 1) * Cp), wts, j - _U(e), interp)
                        if e < k:
                            b = _step(b, tab, o + _U(f * e * Cp), wts, j - _U(e), interp)
                    j -= _U(Wq)
                    tb += _U(ct)
            _vput(acc, _U(q * Cp + m), a)
            _vput(acc, _U((q + 1) * Cp + m), b)


@njit(**JIT_BODY)
def _sums_k1_16(tab, offs, wts, interp, c_in, bb, nsrc, Wq, W, acc):
    """``_sums_pairs`` for k = 1 and 16 lanes (x4's last layer): no window to share, so
    one pixel at a time with both lane halves in registers, one row start per read pair.
    Expanded mode with an even c_in reads two channels' rows at once and sums them as int16
    pairs (``_vpair16``): 1.07-1.09x faster layer than one channel at a time, measured."""
    f = 2 if interp else 1
    ct = tab.shape[0] // c_in
    if not interp and c_in % 2 == 0:
        for q in range(W):
            s = _v16_0()
            j = _U(bb * Wq + q)
            tb = _U(0)
            for c in range(0, c_in, 2):
                s = _vpair16(s, tab, tb + _U(offs[j]) * _U(_unit(interp)),
                             tb + _U(ct) + _U(offs[j + _U(nsrc * Wq)]) * _U(_unit(interp)))
                j += _U(2 * nsrc * Wq)
                tb += _U(2 * ct)
            _v16put(acc, _U(q * 16), s)
        return
    for q in range(W):
        a = _v0()
        b = _v0()
        j = _U(bb * Wq + q)
        tb = _U(0)
        for c in range(c_in):
            o = tb + _U(offs[j]) * _U(_unit(interp))
            a = _step(a, tab, o, wts, j, interp)
            b = _step(b, tab, o + _U(f * VEC), wts, j, interp)
            j += _U(nsrc * Wq)
            tb += _U(ct)
        _vput(acc, _U(q * 16), a)
        _vput(acc, _U(q * 16 + VEC), b)


# Pixels per chunk of _sums_k1_g4's row starts (a compile-time stride: every channel's start
# is then a constant displacement from the pixel's).
CHUNK = 64


@njit(**JIT_BODY)
def _sums_k1_g4(tab, xf, xrow, HW, ct, c_in, W, ob, bol16, sh, acc16):
    """``_sums_k1_16`` for expanded tables grouped by ``_k1_grouped_tables`` (c_in a
    multiple of 8, 16 outputs; x4's last layer), requantised: ``acc16[q*16:]`` = pixel q's
    deltas ``(A + bol16) >> sh`` as int16 (``_vdelta16``; ``bol16``: ``_bias_round`` of
    each channel). The row's codes (``xf[xrow + c*HW + q]``, flat) are turned into row
    starts ``c*ct + code*16`` a chunk of ``CHUNK`` pixels at a time, 8 pixels per vector
    step into ``ob`` (int32 [c_in * CHUNK]), with no per-band set-up; then each pixel's rows
    are summed by ``_vquads``, 8 channels per step, in channel order."""
    s0 = _v16get(bol16, _U(0))  # a value: held in registers (a load in the loop would be
    for q0 in range(0, W, CHUNK):  # repeated per pixel, as acc16's stores might alias bol16)
        n = min(CHUNK, W - q0)
        n8 = n - n % VEC
        for c in range(c_in):
            src = _U(xrow + c * HW + q0)
            tb = np.int32(c * ct)
            oc = _U(c * CHUNK)
            for i in range(0, n8, VEC):
                _vstarts(ob, oc + _U(i), xf, src + _U(i), tb)
            for i in range(n8, n):
                ob[oc + _U(i)] = tb + np.int32(xf[src + _U(i)]) * np.int32(16)
        for i in range(n):
            s = s0
            for g in range(0, c_in, 8):
                b = _U(g * CHUNK + i)
                s = _vquads(s, tab, ob[b], ob[b + _U(CHUNK)], ob[b + _U(2 * CHUNK)],
                            ob[b + _U(3 * CHUNK)], ob[b + _U(4 * CHUNK)], ob[b + _U(5 * CHUNK)],
                            ob[b + _U(6 * CHUNK)], ob[b + _U(7 * CHUNK)])
            _vdelta16(acc16, _U((q0 + i) * 16), s, sh)


@njit(**JIT_BODY)
def _sums_packed(tab, offs, wts, interp, c_in, k, bb, nsrc, Wq, W, acc):
    """As ``_sums_pairs`` for c_out <= 4: one 8-lane accumulator holds pixel q (lanes 0-3)
    and q+1 (lanes 4-7), ``acc[q*4 + o]``. Table rows of ``(k+2)*4`` lanes: zero, window
    columns 0..k-1, zero (4 lanes each); the read at ``e*4`` gives window column e-1 of
    pixel q and e of pixel q+1 from the same source: k+1 reads per pair instead of 2k."""
    f = 2 if interp else 1
    R = k // 2
    ct = tab.shape[0] // (c_in * k)
    for q in range(0, W, 2):
        a = _v0()
        tb = _U(0)
        for c in range(c_in):
            j = _U((c * nsrc + bb + 2 * R) * Wq + q + 2 * R + 1)
            for dy in range(k):
                for e in range(k + 1):
                    o = tb + _U(offs[j - _U(e)]) * _U(_unit(interp)) + _U(f * 4 * e)
                    a = _step(a, tab, o, wts, j - _U(e), interp)
                j -= _U(Wq)
                tb += _U(ct)
        _vput(acc, _U(q * 4), a)


@njit(**JIT_BODY)
def _row_sums(tab, offs, wts, interp, c_in, k, Cp, bb, nsrc, Wq, W, acc):
    """Dispatch to a row-sum loop whose window size (and lanes) are compile-time constants
    for the shapes the shipped models use, so that LLVM unrolls the window loops and
    folds the column offsets into the loads; any other shape takes the general loop."""
    if Cp == 4:
        if k == 3:
            _sums_packed(tab, offs, wts, interp, c_in, 3, bb, nsrc, Wq, W, acc)
        else:
            _sums_packed(tab, offs, wts, interp, c_in, k, bb, nsrc, Wq, W, acc)
    elif k == 3 and Cp == 8:
        _sums_pairs(tab, offs, wts, interp, c_in, 3, 8, bb, nsrc, Wq, W, acc)
    elif k == 5 and Cp == 8:
        _sums_pairs(tab, offs, wts, interp, c_in, 5, 8, bb, nsrc, Wq, W, acc)
    elif k == 1 and Cp == 16 and c_in == 8:  # x4's last layer
        _sums_k1_16(tab, offs, wts, interp, 8, bb, nsrc, Wq, W, acc)
    elif k == 1 and Cp == 16:
        _sums_k1_16(tab, offs, wts, interp, c_in, bb, nsrc, Wq, W, acc)
    else:
        _sums_pairs(tab, offs, wts, interp, c_in, k, Cp, bb, nsrc, Wq, W, acc)


# ----------------------------------------------------------------------------- row stores


@njit(inline="always")
def _bias_round(bias, o, shift):
    """``bias[o] + 2**(shift-1)`` (``bias[o]`` when shift is 0): then requant(A + bias) is
    ``(A + _bias_round) >> shift``, one add and one shift per value."""
    return np.int64(bias[o]) + (np.int64(1) << (shift - 1) if shift > 0 else np.int64(0))


@njit(**JIT_BODY)
def _transpose_block(acc, q, Cs, C, tmp):
    """Channels 0..C-1 of pixels q..q+7 (``acc[(q+i)*Cs + o]``) -> ``tmp[o*8 + i]``."""
    for m in range(0, C, VEC):
        _vtr8(acc, _U(q * Cs + m), _U(Cs), tmp, _U(m * 8))


@njit(**JIT_BODY)
def _row_store_hidden(x, p, y, acc, Cs, tmp, bias, shift, residual, out):
    """Output row y of every channel, ``clamp(base + requant(A + bias))``, from the
    pixel-major sums ``acc[q*Cs + o]``: 8 pixels at a time through an 8x8 transpose.
    (Flat arrays and offsets in the loops, as in ``_row_store_last``.)"""
    H, W = x.shape[2], x.shape[3]
    C = bias.shape[0]
    W8 = W - W % 8
    sh = np.int32(shift)
    xf, of = x.reshape(-1), out.reshape(-1)
    HW = H * W
    xrow = (p * x.shape[1] * H + y) * W  # x[p, 0, y, 0]
    orow = (p * C * H + y) * W  # out[p, 0, y, 0]
    for q in range(0, W8, 8):
        _transpose_block(acc, q, Cs, C, tmp)
        for o in range(C):
            bo = np.int32(_bias_round(bias, o, shift))
            _vhidden(of, _U(orow + o * HW + q), _vget(tmp, _U(o * 8)), bo, sh,
                     xf, _U(xrow + (o * HW if residual else 0) + q), residual)
    for o in range(C):
        bo = _bias_round(bias, o, shift)
        for q in range(W8, W):
            base = np.int64(xf[xrow + o * HW + q]) if residual else np.int64(128)
            of[orow + o * HW + q] = _clamp(base + ((np.int64(acc[q * Cs + o]) + bo) >> shift), 0, 255)


@njit(**JIT_BODY)
def _base_rows(plane, p, ylo, pad_l, U):
    """``U[i, j] = plane[p, clamp(ylo + i), clamp(j - pad_l)]`` (int32): the edge-padded
    source rows the band's upsample reads, copied once per band."""
    H, W = plane.shape[1], plane.shape[2]
    Wu = U.shape[1]
    for i in range(U.shape[0]):
        src = plane[p, _clamp(ylo + i, 0, H - 1)]
        u = U[i]
        for j in range(pad_l):
            u[j] = np.int32(src[0])
        um = u[pad_l:pad_l + W]
        for j in range(W):
            um[j] = np.int32(src[j])
        for j in range(pad_l + W, Wu):
            u[j] = np.int32(src[W - 1])


@njit(**JIT_BODY)
def _phase(vf, i, up_w, b, T):
    """``sum_t up_w[b, t] * vf[i + t : i + t + VEC]`` for t < T (``up_w.shape[1]``): the
    horizontal upsample sum of phase b at 8 pixels (before rounding)."""
    s = _v0()
    for t in range(T):
        s = _vmac(s, vf, _U(i + t), up_w[b, t])
    return s


@njit(inline="always")
def _tap0(up_off, b, lo, dd):
    """Phase b's first tap, ``up_off[b]``: ``lo + (dd >> b & 1)`` when the literal ``dd``
    says so (``_offset_pattern``), so that the phases' reads are the same addresses to
    LLVM and each row of ``V`` is loaded once per tap position, not once per phase."""
    return lo + ((dd >> b) & 1) if dd >= 0 else np.int64(up_off[b])


@njit(inline="always")
def _phase_out(Vf, vi, up_off, lo, dd, up_w, b, T, half, ds, tmp, o, bol, sh):
    """Output phase ``b`` of output channel ``o`` at 8 pixels: the rounded upsample sum at
    ``Vf[vi + up_off[b]:]`` plus the requantised delta ``tmp[o*8:o*8+8]`` (``bol[o*8:]``:
    ``_bias_round`` of channel o in 8 lanes), clamped."""
    return _vlast(_vround(_phase(Vf, vi + _tap0(up_off, b, lo, dd), up_w, b, T), half, ds),
                  _vget(tmp, _U(o * 8)), _vget(bol, _U(o * 8)), sh)


@njit(inline="always")
def _vertical(y, up_off, up_w, Uf, Wu, ylo, Vf, r, T, vh):
    """The upsample's vertical sums for input row y: ``Vf[a*Wu + j]`` (int32 [r, Wu], flat)
    = ``vh`` + sum_i ``up_w[a, i] * Uf[(y - ylo + up_off[a] + i)*Wu + j]``."""
    for a in range(r):
        base = (y - ylo + up_off[a]) * Wu
        for j in range(0, Wu, VEC):
            v = vh
            for i in range(T):
                v = _vmac(v, Uf, _U(base + i * Wu + j), up_w[a, i])
            _vput(Vf, _U(a * Wu + j), v)


_PAIR_ORDER_A = np.array(_PAIR_ORDER, np.int64)


@njit(inline="always")
def _x4_group(q, acc16, tmp16, up_off, up_w, lo, ds, Vf, Wu, pad_l, of, row0, Wr):
    """``_row_store_x4``'s 8 pixels from q: their 4 output rows of 32 bytes."""
    _vrows16(acc16, _U(q * 16), tmp16)
    for a in range(4):
        vi = a * Wu + q + pad_l
        f0 = _vround(_phase(Vf, vi + _tap0(up_off, 0, lo, 0b1100), up_w, 0, 4), np.int32(0), ds)
        f1 = _vround(_phase(Vf, vi + _tap0(up_off, 1, lo, 0b1100), up_w, 1, 4), np.int32(0), ds)
        f2 = _vround(_phase(Vf, vi + _tap0(up_off, 2, lo, 0b1100), up_w, 2, 4), np.int32(0), ds)
        f3 = _vround(_phase(Vf, vi + _tap0(up_off, 3, lo, 0b1100), up_w, 3, 4), np.int32(0), ds)
        _vout4(of, _U(row0 + a * Wr + q * 4), f0, f1, f2, f3, tmp16, _U(a * 32))


@njit(**JIT_BODY)
def _row_store_x4(p, y, acc16, tmp16, up_off, up_w, up_den, den_shift, Uf, Wu, ylo, pad_l, Vf, W,
                  of, Ho):
    """``_row_store_last`` for the grouped x4 layer (bicubic x4: ``r = T = 4``, offset
    pattern 0b1100, weights summing to an even ``up_den``, ``den_shift`` >= 0), from the
    requantised int16 deltas of ``_sums_k1_g4``: per 8 pixels one ``_vrows16`` puts each
    output row's deltas in output order, and per output row ``_vout4`` packs the four
    phases' base to int16 in that order, clamps, adds and stores 32 bytes; no transposes
    of int32 sums, no requantisation here. Rows narrower than 8 pixels take the scalar path."""
    lo = np.int64(up_off.min())
    hd = np.int64(up_den // 2)
    _vertical(y, up_off, up_w, Uf, Wu, ylo, Vf, 4, 4, _splat8(np.int32(hd)))
    ds = np.int32(den_shift)
    Wr = W * 4
    row0 = (p * Ho + y * 4) * Wr
    W1 = W if W >= 8 else 0  # pixels W1.. take the scalar path: all where W < 8, else none
    if W >= 8:
        # Groups of 8 pixels whose 32-byte stores start on a 32-byte boundary (NumPy's
        # buffers start 16 bytes past one: then half the stores split a cache line); the
        # first and last groups overlap them where needed, writing the same bytes again.
        m = (of.ctypes.data + row0) % 32
        qs = (32 - m) % 32 // 4 if m % 4 == 0 else 0
        if qs > 0:
            _x4_group(0, acc16, tmp16, up_off, up_w, lo, ds, Vf, Wu, pad_l, of, row0, Wr)
        q = qs
        while q + 8 <= W:
            _x4_group(q, acc16, tmp16, up_off, up_w, lo, ds, Vf, Wu, pad_l, of, row0, Wr)
            q += 8
        if q < W:
            _x4_group(W - 8, acc16, tmp16, up_off, up_w, lo, ds, Vf, Wu, pad_l, of, row0, Wr)
    for a in range(4):
        for b in range(4):
            vi = a * Wu + up_off[b] + pad_l
            for q in range(W1, W):
                sq = np.int64(0)
                for t in range(4):
                    sq += np.int64(up_w[b, t]) * np.int64(Vf[vi + q + t])
                sq >>= den_shift  # the rounding half is in Vf
                delta = np.int64(acc16[q * 16 + _PAIR_ORDER_A[a * 4 + b]])
                of[row0 + a * Wr + q * 4 + b] = _clamp(_clamp(sq, 0, 255) + delta, 0, 255)


@njit(**JIT_BODY)
def _row_store_last(p, y, acc, Cs, tmp, bias, shift, bol, up_off, up_w, up_den, den_shift, Uf, Wu,
                    ylo, pad_l, Vf, W, of, Ho, r, T, dd):
    """Rows y*r .. y*r + r-1 of the output: fixed upsample (reference.fixed_upsample) plus the
    pixel-shuffled deltas. The separable upsample sum is computed vertical-first, 8 lanes
    at a time, from the band's padded source rows ``Uf`` (int32 [*, Wu], flat) into ``Vf``
    (int32 [r, Wu], flat), then horizontally per phase in registers; integer sums are exact
    (|sums| <= 255 * (sum |w|)**2 < 2**31 for every upsample; bicubic: sum |w| < 320), so
    the result equals the reference's double sum. 8 pixels at a time: the deltas
    transposed to channel vectors, added to the base, and each output row's r phases
    interleaved into 8*r bytes. A divisor that is not a power of two (bilinear x3) and the
    last W % 8 pixels take the scalar path. ``r, T``: ``up_w.shape``, and ``dd``: the
    phases' offset pattern (``_offset_pattern``, -1 for none), passed as literals for
    bicubic x2 and x4 so that the phase loops are unrolled with the weights hoisted and
    the phases share their loads. ``of``: the output, flat, ``Ho`` rows of ``W*r``.
    (Flat arrays and offsets throughout: a view made per row costs a reshape and a
    reference-count call pair.)"""
    lo = np.int64(up_off.min())
    d2 = np.int32(up_den * up_den)
    half = np.int32(d2 // 2)
    # dd >= 0 (bicubic x2, x4, whose weights sum to up_den, even, in every phase: checked
    # by the caller): the rounding half, up_den**2 / 2, is up_den / 2 added to every
    # vertical sum, one add per vertical vector instead of one per output vector
    vh = _splat8(np.int32(up_den // 2) if dd >= 0 else np.int32(0))
    hh = np.int32(0) if dd >= 0 else half
    sh_half = np.int64(up_den // 2) * np.int64(up_den) if dd >= 0 else np.int64(0)
    _vertical(y, up_off, up_w, Uf, Wu, ylo, Vf, r, T, vh)
    ds = np.int32(den_shift)
    W8 = W - W % 8 if den_shift >= 0 else 0
    sh = np.int32(shift)
    Wr = W * r
    row0 = (p * Ho + y * r) * Wr
    for q in range(0, W8, 8):
        _transpose_block(acc, q, Cs, r * r, tmp)
        for a in range(r):
            oi = _U(row0 + a * Wr + q * r)
            vi = a * Wu + q + pad_l
            o = a * r
            f0 = _phase_out(Vf, vi, up_off, lo, dd, up_w, 0, T, hh, ds, tmp, o, bol, sh)
            f1 = _phase_out(Vf, vi, up_off, lo, dd, up_w, 1, T, hh, ds, tmp, o + 1, bol, sh)
            if r == 2:
                _vshuffle2(of, oi, f0, f1)
            else:
                f2 = _phase_out(Vf, vi, up_off, lo, dd, up_w, 2, T, hh, ds, tmp, o + 2, bol,
                                sh)
                if r == 3:
                    _vshuffle3(of, oi, f0, f1, f2)
                else:
                    f3 = _phase_out(Vf, vi, up_off, lo, dd, up_w, 3, T, hh, ds, tmp, o + 3, bol,
                                    sh)
                    _vshuffle4(of, oi, f0, f1, f2, f3)
    for a in range(r):
        for b in range(r):
            o = a * r + b
            bo = _bias_round(bias, o, shift)
            vi = a * Wu + up_off[b] + pad_l
            for q in range(W8, W):
                sq = np.int64(0)
                for t in range(T):
                    sq += np.int64(up_w[b, t]) * np.int64(Vf[vi + q + t])
                sq -= sh_half  # the half folded into Vf, back out: the division is exact as before
                if den_shift >= 0:
                    sq = (sq + half) >> den_shift  # == floor division by a power of two
                else:
                    sq = (sq + half) // d2  # // floors, as in the reference
                delta = (np.int64(acc[q * Cs + o]) + bo) >> shift
                of[row0 + a * Wr + q * r + b] = _clamp(_clamp(sq, 0, 255) + delta, 0, 255)


@njit(inline="always")
def _offset_pattern(up_off):
    """The phases' first taps relative to the lowest as a bit mask (bit b: phase b starts
    one later), or -1 when some phase starts two or more later. Bicubic x2: 0b10, x4:
    0b1100 (``reference.upsample_filter``)."""
    lo = up_off.min()
    m = np.int64(0)
    for b in range(up_off.shape[0]):
        d = np.int64(up_off[b] - lo)
        if d > 1:
            return np.int64(-1)
        m |= d << b
    return m


# ----------------------------------------------------------------------------- kernels
# One prange iteration = one band of BAND input rows of one plane; its scratch is allocated
# per iteration: the band's source row starts (and weights), one row of pixel-major sums,
# and the store's transposes.

BAND = 8


@njit(inline="always")
def _band(it, nb, H):
    """Work item ``it`` of ``nb`` bands per plane -> (plane, first row, rows)."""
    p = it // nb
    y0 = (it - p * nb) * BAND
    return p, y0, min(BAND, H - y0)


@njit(inline="always")
def _cpad(c_out):
    """int32 lanes per pixel in the sums: 4 when c_out <= 4 (two pixels per vector),
    else c_out rounded up to a multiple of VEC."""
    return 4 if c_out <= 4 else (c_out + VEC - 1) // VEC * VEC


def row_reads(c_in: int, k: int, c_out: int) -> float:
    """8-lane table-row reads (inner-loop vector steps) per output pixel of one layer, as
    these kernels do them (``bench.accounting``, ``bench.kernel_floor``)."""
    if c_out <= 4:
        return c_in * k * (k + 1) / 2
    return c_in * k * k * _cpad(c_out) / VEC


@njit(inline="always")
def _scratch(c_in, nrows, R, W, Cp):
    nsrc = nrows + 2 * R
    Wq = W + 2 * R + 1  # one more column: the last pair may reach pixel W
    offs = np.empty((c_in, nsrc, Wq), np.uint16)
    acc = np.empty((W + 1) * Cp + VEC, np.int32)  # + VEC: the packed transpose reads past
    tmp = np.empty(max(Cp, VEC) * 8, np.int32)
    return nsrc, Wq, offs, acc, tmp


@njit(inline="always")
def _band_setup(x, tab, interp, idx, wt, Cp, it, nb, grouped=False):
    """What every band body starts with: work item ``it`` -> (plane, first row, rows), the
    row-sum accumulators and transpose scratch, and the arguments of ``_band_row_sums``
    (the band's source row starts, and weights in interp mode, made here; ``grouped``:
    none, ``_sums_k1_g4`` makes its own per row)."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k, rowlen = tab.shape[1], tab.shape[3]
    R = k // 2
    p, y0, nrows = _band(it, nb, H)
    nsrc, Wq, offs, acc, tmp = _scratch(1 if grouped else c_in, 1 if grouped else nrows, R,
                                        0 if grouped else W, Cp)
    wts = np.empty((c_in, nsrc, Wq) if interp else (1, 1, 1), np.int32)
    if not grouped:
        _band_sources(x, p, y0, nsrc, R, rowlen, interp, idx, wt, offs, wts)
    sums = (tab.reshape(-1), offs.reshape(-1), wts.reshape(-1), c_in, k, Cp, nsrc, Wq, W)
    return p, y0, nrows, acc, tmp, sums


@njit(inline="always")
def _band_row_sums(sums, interp, bb, acc):
    """The sums of the band's output row ``bb`` into ``acc`` (``sums``: ``_band_setup``'s)."""
    tab_f, offs_f, wts_f, c_in, k, Cp, nsrc, Wq, W = sums
    _row_sums(tab_f, offs_f, wts_f, interp, c_in, k, Cp, bb, nsrc, Wq, W, acc)


@njit(inline="always")
def _hidden_band(x, tab, interp, idx, wt, bias, shift, residual, out, it, nb):
    Cp = _cpad(bias.shape[0])
    p, y0, nrows, acc, tmp, sums = _band_setup(x, tab, interp, idx, wt, Cp, it, nb)
    for bb in range(nrows):
        _band_row_sums(sums, interp, bb, acc)
        _row_store_hidden(x, p, y0 + bb, acc, Cp, tmp, bias, shift, residual, out)


@njit(inline="always")
def _last_band(x, tab, interp, idx, wt, bias, shift, plane, up_off, up_w, up_den, den_shift,
               v_width, out, it, nb, grouped=False):
    Cp = _cpad(bias.shape[0])
    p, y0, nrows, acc, tmp, sums = _band_setup(x, tab, interp, idx, wt, Cp, it, nb, grouped)
    c_in, H = x.shape[1], x.shape[2]
    ob = np.empty(c_in * CHUNK if grouped else 1, np.int32)
    xf, ct = x.reshape(-1), tab.shape[2] * tab.shape[3]
    W = x.shape[3]
    r, T = up_w.shape[0], up_w.shape[1]
    lo, hi = up_off.min(), up_off.max()
    pad_l = max(0, -lo)
    Wu = (v_width + 2 * VEC - 1) // VEC * VEC  # room for the 8-lane reads past v_width
    U = np.empty((nrows + hi - lo + T - 1, Wu), np.int32)
    V = np.empty((r, Wu), np.int32)
    _base_rows(plane, p, y0 + lo, pad_l, U)
    Uf, Vf, of = U.reshape(-1), V.reshape(-1), out.reshape(-1)
    Ho, ylo = out.shape[1], y0 + lo
    pat = _offset_pattern(up_off)
    if up_den % 2 or np.any(up_w.sum(axis=1) != up_den):
        pat = np.int64(-1)  # (not an upsample_filter's bicubic: no literal path)
    bol = np.empty(bias.shape[0] * VEC, np.int32)
    for o in range(bias.shape[0]):
        bol[o * VEC:(o + 1) * VEC] = _bias_round(bias, o, shift)
    if grouped:
        acc16 = np.empty(W * 16, np.int16)
        tmp16 = np.empty(128, np.int16)
        bol16 = np.empty(16, np.int32)
        for o in range(16):
            bol16[o] = _bias_round(bias, o, shift)
        sh = np.int32(shift)
        for bb in range(nrows):
            xrow = (p * c_in * H + y0 + bb) * W
            if c_in == 8:  # the channel loop unrolled
                _sums_k1_g4(sums[0], xf, xrow, H * W, ct, 8, W, ob, bol16, sh, acc16)
            else:
                _sums_k1_g4(sums[0], xf, xrow, H * W, ct, c_in, W, ob, bol16, sh, acc16)
            _row_store_x4(p, y0 + bb, acc16, tmp16, up_off, up_w, up_den, den_shift, Uf, Wu,
                          ylo, pad_l, Vf, W, of, Ho)
        return
    for bb in range(nrows):
        _band_row_sums(sums, interp, bb, acc)
        # bicubic x4 and x2: shapes and offset pattern as constants, so that LLVM unrolls
        # the phases and shares their loads
        if r == 4 and T == 4 and pat == 0b1100:
            _row_store_last(p, y0 + bb, acc, Cp, tmp, bias, shift, bol, up_off, up_w, up_den, den_shift,
                            Uf, Wu, ylo, pad_l, Vf, W, of, Ho, 4, 4, 0b1100)
        elif r == 2 and T == 4 and pat == 0b10:
            _row_store_last(p, y0 + bb, acc, Cp, tmp, bias, shift, bol, up_off, up_w, up_den, den_shift,
                            Uf, Wu, ylo, pad_l, Vf, W, of, Ho, 2, 4, 0b10)
        else:
            _row_store_last(p, y0 + bb, acc, Cp, tmp, bias, shift, bol, up_off, up_w, up_den, den_shift,
                            Uf, Wu, ylo, pad_l, Vf, W, of, Ho, r, T, -1)


# The band bodies are compiled as plain functions, called once per band from the kernels'
# prange loops: Numba's parallel passes then see a one-line loop body (compiling them
# inside the prange cost 3-5x the compile time, for the same code).

@njit(**JIT_BODY)
def _band_hidden_interp(x, idx, wt, tab, bias, shift, residual, out, it, nb):
    _hidden_band(x, tab, True, idx, wt, bias, shift, residual, out, it, nb)


@njit(**JIT_BODY)
def _band_hidden_expanded(x, tab, bias, shift, residual, out, it, nb):
    _hidden_band(x, tab, False, x[0, 0], x[0, 0], bias, shift, residual, out, it, nb)


@njit(**JIT_BODY)
def _band_last_interp(x, idx, wt, tab, bias, shift, plane, up_off, up_w, up_den, den_shift,
                      v_width, out, it, nb):
    _last_band(x, tab, True, idx, wt, bias, shift, plane, up_off, up_w, up_den, den_shift,
               v_width, out, it, nb)


@njit(**JIT_BODY)
def _band_last_expanded(x, tab, bias, shift, plane, up_off, up_w, up_den, den_shift, v_width,
                        out, it, nb, grouped):
    if grouped:
        _last_band(x, tab, False, x[0, 0], x[0, 0], bias, shift, plane, up_off, up_w, up_den,
                   den_shift, v_width, out, it, nb, True)
    else:
        _last_band(x, tab, False, x[0, 0], x[0, 0], bias, shift, plane, up_off, up_w, up_den,
                   den_shift, v_width, out, it, nb, False)


# (np.int64(it): the parallel passes type the prange index both signed and unsigned, and a
# band body called with it as is was compiled twice, 5 s each.)
@njit(inline="always")
def _nbands(x):
    return (x.shape[2] + BAND - 1) // BAND


@njit(**JIT)
def _k_hidden_interp(x, idx, wt, tab, bias, shift, residual, out):
    nb = _nbands(x)
    for it in prange(x.shape[0] * nb):
        _band_hidden_interp(x, idx, wt, tab, bias, shift, residual, out, np.int64(it), nb)


@njit(**JIT)
def _k_hidden_expanded(x, tab, bias, shift, residual, out):
    nb = _nbands(x)
    for it in prange(x.shape[0] * nb):
        _band_hidden_expanded(x, tab, bias, shift, residual, out, np.int64(it), nb)


@njit(**JIT)
def _k_last_interp(x, idx, wt, tab, bias, shift, plane, up_off, up_w, up_den, den_shift, v_width,
                   out):
    nb = _nbands(x)
    for it in prange(x.shape[0] * nb):
        _band_last_interp(x, idx, wt, tab, bias, shift, plane, up_off, up_w, up_den, den_shift,
                          v_width, out, np.int64(it), nb)


@njit(**JIT)
def _k_last_expanded(x, tab, bias, shift, plane, up_off, up_w, up_den, den_shift, v_width, out,
                     grouped):
    nb = _nbands(x)
    for it in prange(x.shape[0] * nb):
        _band_last_expanded(x, tab, bias, shift, plane, up_off, up_w, up_den, den_shift, v_width,
                            out, np.int64(it), nb, grouped)


# ----------------------------------------------------------------------------- launchers


def _need(arr, name, dtype, ndim):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype or arr.ndim != ndim:
        raise TypeError(f"{name} must be {np.dtype(dtype).name} with {ndim} dims, "
                        f"got {arr.dtype} {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


# Kernel-side tables, derived once per source array and dropped with it.
_KTABLES = IdentityMemo()


def _kernel_tables(arr: np.ndarray, make):
    return _KTABLES.get(arr, lambda: make(arr), make)


def _spread_rows(slices: int, n: int, row_bytes: int) -> int:
    """Rows per (c, dy) slice, at least ``n``, chosen so that the slices' starts fall in
    different L1 sets (64-byte lines, 4 KiB per way). Unpadded, a 256-code slice of 48-byte
    rows is 3 * 4 KiB: where all channels hold one code (flat areas) a pixel's 24 reads
    then compete for one 8-way set, and the hidden layer ran 1.6x slower (measured)."""
    best, best_cost = n, slices + 1
    for rows in range(n, n + 16):
        sets = [(i * rows * row_bytes // 64) % 64 for i in range(slices)]
        cost = max(sets.count(v) for v in set(sets))
        if cost < best_cost:
            best, best_cost = rows, cost
    return best


def _kernel_rows(v: np.ndarray) -> np.ndarray:
    """int [c_in, k(dy), n, k(dx), c_out, *pair] (values in int16 range) -> int16 rows
    [c_in, k(dy), n', rowlen] (n' >= n: ``_spread_rows``): each window row laid out as
    ``_sums_pairs`` (c_out > 4: window column dx at lanes ``dx*Cp``, channels zero-padded
    to Cp) or ``_sums_packed`` (c_out <= 4: 4 lanes per column, a zero column before and
    after) reads it."""
    assert v.min(initial=0) >= -32768 and v.max(initial=0) <= 32767
    c_in, k, n, _, C = v.shape[:5]
    pair = v.shape[5:]
    Cp = 4 if C <= 4 else (C + VEC - 1) // VEC * VEC
    cols = k + 2 if C <= 4 else k
    first = 1 if C <= 4 else 0
    rowlen = cols * Cp * (2 if pair else 1)
    unit = 8 if pair else 4  # _unit: the row sums' uint16 row starts count in these
    assert rowlen % unit == 0 and (n - 1) * rowlen // unit < 65536
    rows = _spread_rows(c_in * k, n, 2 * rowlen)
    out = np.zeros((c_in, k, rows, cols, Cp) + pair, np.int16)
    out[:, :, :n, first:first + k, :C] = v
    return out.reshape(c_in, k, rows, -1)


def _interp_tables(table: np.ndarray) -> np.ndarray:
    """int16 [c_in, k(dy), L-1, rowlen]: per knot interval i, the pairs
    ``(table[i], table[i+1] - table[i])`` of every lane, for ``_vrow2``."""
    t = table.astype(np.int32).transpose(0, 2, 1, 3, 4)  # [c_in, dy, L, dx, c_out]
    return _kernel_rows(np.stack([t[:, :, :-1], t[:, :, 1:] - t[:, :, :-1]], axis=-1))


def _expanded_tables(etab: np.ndarray) -> np.ndarray:
    """int16 [c_in, k(dy), 256, rowlen]: ``etab``, one window row per (channel, dy, code)."""
    return _kernel_rows(etab.transpose(0, 2, 1, 3, 4))


def _k1_grouped_tables(etab: np.ndarray):
    """For ``_sums_k1_g4``: a k = 1 layer with 9 to 16 outputs and c_in a multiple of 8
    whose channels, in groups of four, each sum to a range of at most 2**16 values per
    output -> ``(rows, corr)``, else None (the layer takes ``_sums_k1_16``).

    ``rows``: ``_expanded_tables``' rows with every row's 16 lanes in ``_PAIR_ORDER`` and
    each group's first channel lowered by ``m`` (the middle of the group's range, per
    output), wrapped to int16; ``corr`` int64 [c_out]: the sum of the groups' ``m``, to be
    added to the bias. A group's true sum less ``m`` then lies in int16, so int16 sums
    that wrap on the way give it exactly (arithmetic modulo 2**16), and the layer's sums
    are the reference's less ``corr``. The x4 model's last layer: ranges 62208 and 61696.
    The rows start on a 64-byte boundary, so that no 32-byte row read splits a cache line
    (NumPy's buffer started 16 bytes past one, and half the reads did: the layer took 7%
    longer, ``kernel_floor``'s x4 last layer alone, interleaved)."""
    c_in, n, k, _, C = etab.shape
    if k != 1 or not 8 < C <= 16 or c_in % 8:
        return None
    v = etab[:, :, 0, 0, :].astype(np.int64)  # [c_in, 256, C]
    corr = np.zeros(C, np.int64)
    for g in range(0, c_in, 4):
        lo, hi = v[g:g + 4].min(axis=1).sum(0), v[g:g + 4].max(axis=1).sum(0)
        if (hi - lo).max() > 65535:
            return None
        m = (lo + hi + 1) // 2  # hi - m <= 32767, m - lo <= 32768
        v[g] -= m
        corr += m
    v = (v + 32768) % 65536 - 32768
    rows = _kernel_rows(v[:, None, :, None, :])  # [c_in, 1, n', 16]
    return aligned_copy(rows[..., _PAIR_ORDER], 64), corr  # no row read splits a line


def _bicubic_x4(up_off: np.ndarray, up_w: np.ndarray, up_den: int) -> bool:
    """Whether the upsample is ``reference.upsample_filter(4, "bicubic")``'s form, the one
    ``_row_store_x4`` does: 4 phases of 4 taps, first taps 0, 0, 1, 1 after the lowest, each
    phase's weights summing to ``up_den``, even, whose square is a power of two."""
    lo = int(up_off.min()) if up_off.size else 0
    return (up_w.shape == (4, 4) and [int(v) - lo for v in up_off] == [0, 0, 1, 1]
            and up_den % 2 == 0 and _den_shift(up_den) >= 0
            and bool(np.all(up_w.sum(axis=1) == up_den)))


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
        tab = _kernel_tables(table, _interp_tables)
        _k_hidden_interp(x, idx, wt, tab, bias, np.int64(shift), bool(residual), out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        tab = _kernel_tables(lut, _expanded_tables)
        _k_hidden_expanded(x, tab, bias, np.int64(shift), bool(residual), out)
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
        tab = _kernel_tables(table, _interp_tables)
        _k_last_interp(x, idx, wt, tab, bias, np.int64(shift), plane, up_off, up_w,
                       np.int64(up_den), den_shift, v_width, out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        grouped = _kernel_tables(lut, _k1_grouped_tables)
        if not (bias.shape[0] == 16 and _bicubic_x4(up_off, up_w, up_den)):
            grouped = None  # (_row_store_x4 does only this upsample)
        if grouped is None:
            tab = _kernel_tables(lut, _expanded_tables)
        else:
            tab, corr = grouped
            bias = (bias + corr).astype(np.int32)  # |bias| <= 2**24, |corr| < 2**19
        _k_last_expanded(x, tab, bias, np.int64(shift), plane, up_off, up_w, np.int64(up_den),
                         den_shift, v_width, out, grouped is not None)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return out


def run_planes(prepared, planes: np.ndarray, mode: str = "interp") -> np.ndarray:
    """Whole model on uint8 [P, H, W] planes -> uint8 [P, H*r, W*r].

    ``prepared`` is an ``iqlut_gpu.backends.Prepared`` (lookup tables derived once per model).
    A model with a self-ensemble runs once per transform (``iqlut_gpu.ensemble``).
    """
    planes = np.ascontiguousarray(planes, dtype=np.uint8)
    return ensemble.run(lambda q: _one_pass(prepared, q, mode), planes, prepared.ensemble,
                        add=numba_ensemble.add, mean=numba_ensemble.mean)


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
