// CUDA kernels of IQ-LUT inference, bit-identical to iqlut_gpu.reference.
//
// Loaded at run time by kernels/cuda_backend.py (cupy.RawModule, NVRTC), which picks a
// template specialisation per layer shape, compiles a model's specialisations in one
// NVRTC run per device and memoises them.
// The same file is compiled as host C++ by the test suite (tests/cuda_emu/cuda_emu.h
// supplies threadIdx, blockIdx, __syncthreads, __shared__, __ldg, ...) and checked bit
// for bit against the NumPy reference on the CPU. So: no CUDA-only headers or
// intrinsics here beyond what that header emulates.
//
// Layouts (all C-contiguous, as in kernels/numba_cpu.py):
//   x      uint8 [P, C_IN, H, W]          input codes of P independent planes
//   idx    uint8 [C_IN, 256]              lower knot index per code  (reference.interp_lut)
//   wt     int32 [C_IN, 256]              weight 0..256 per code     (reference.interp_lut)
//   table  int8  [C_IN, L, K, K, CP]      the layer's table
//   etab   int16 [C_IN, 256, K, K, CP]    expanded windows           (reference.expand_layer)
//   bias   int32 [C_OUT]
//   plane  uint8 [P, H, W]                the input planes (base of the last layer)
//   up_off int32 [R], up_w int32 [R, T]   (reference.upsample_filter; the denominator DEN
//                                          is a template argument)
//   out    uint8 [P, C_OUT, H, W] (hidden) or uint8 [P, H*R, W*R] (last)
//
// CP >= C_OUT is the table's row length: C_OUT, or C_OUT padded with zero entries to a
// power of two where a row of C_OUT entries is not a whole number of 4-byte words (x3's
// 9 outputs: 16), so that every row is read with vector loads (cuda_plan.padded_outputs).
//
// Work decomposition (every kernel): the P planes are cut into tiles of
// blockDim.x x blockDim.y pixels; block b handles tiles b, b + gridDim.x, ... (a
// grid-stride loop, so a small grid still covers any batch, and per-block set-up such
// as filling shared memory is paid once per block, not once per tile). Thread
// (tx, ty) of a tile computes ONE output pixel (y, x) of one plane p, all output
// channels: for a hidden layer out[p, :, y, x]; for the last layer the R x R
// high-resolution pixels out[p, y*R + a, x*R + b] that pixel (y, x) owns after the
// pixel shuffle. Threads write disjoint outputs: no atomics.
//
// Integer bounds (guaranteed by iqlut_gpu.model.validate and checked by the launcher):
// |v(x)| <= 32768, C_IN*K*K <= 64*81 and |bias| <= 2^24, so every accumulator and the
// rounding term fit in int32. The upsample has T <= 4 taps with |weight| <= 256 and
// denominator <= 256, so its sums fit in int32 too.

namespace iqlut {

typedef unsigned char u8;
typedef signed char i8;
typedef short i16;
typedef int i32;
typedef long long i64;

// The reference shifts with Python/NumPy semantics (arithmetic, flooring). Signed >> is
// arithmetic in both nvcc and g++ (and defined so since C++20); pin it.
static_assert((-3 >> 1) == -2, "signed right shift must be arithmetic");

__device__ __forceinline__ int clampi(int v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// reference.requantize: (a + 2^(S-1)) >> S, arithmetic shift; a when S == 0.
__device__ __forceinline__ int requant(int a, int shift) {
    return shift == 0 ? a : (a + (1 << (shift - 1))) >> shift;
}

// Python's // for b > 0 (C's / truncates toward zero; the reference floors).
__device__ __forceinline__ int floor_div(int a, int b) {
    int q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

// The tile loop shared by all kernels: calls body(p, y, x) for each in-bounds pixel
// this thread owns.
template <class Body>
__device__ __forceinline__ void for_each_pixel(int P, int H, int W, Body body) {
    const int tiles_x = (W + (int)blockDim.x - 1) / (int)blockDim.x;
    const int tiles_y = (H + (int)blockDim.y - 1) / (int)blockDim.y;
    const i64 per_plane = (i64)tiles_x * tiles_y;
    const i64 n_tiles = per_plane * P;
    for (i64 t = blockIdx.x; t < n_tiles; t += gridDim.x) {
        const int p = (int)(t / per_plane);
        const int rest = (int)(t - (i64)p * per_plane);
        const int y = (rest / tiles_x) * (int)blockDim.y + (int)threadIdx.y;
        const int x = (rest % tiles_x) * (int)blockDim.x + (int)threadIdx.x;
        if (y < H && x < W) body(p, y, x);
    }
}

// ----------------------------------------------------------------------------- lookup

// One 32-bit word of table entries (little-endian lanes, as on every CUDA device and on
// the hosts of the emulation) into v[at ...], sign-extended.
template <class T, int N>
__device__ __forceinline__ void unpack_word(int w, int (&v)[N], int at) {
    if constexpr (sizeof(T) == 1) {
        v[at] = (int)(signed char)w;
        v[at + 1] = (int)(signed char)(w >> 8);
        v[at + 2] = (int)(signed char)(w >> 16);
        v[at + 3] = w >> 24;
    } else {
        v[at] = (int)(short)w;
        v[at + 1] = w >> 16;
    }
}

// The N consecutive entries (int8 or int16) of one table row as ints, read with the
// widest vector loads the row size allows (16, 8 or 4 bytes; one entry at a time
// otherwise). Rows start at multiples of the row size and the tables are 16-byte aligned
// (the launcher checks; shared copies are declared aligned), so every load is aligned.
// LDG: through the read-only data cache (global memory); else a plain (shared) load.
template <class T, int N, bool LDG>
__device__ __forceinline__ void load_row(const T* p, int (&v)[N]) {
    constexpr int BYTES = N * (int)sizeof(T);
    constexpr int PER_WORD = 4 / (int)sizeof(T);
    if constexpr (BYTES % 16 == 0) {
        const int4* q = reinterpret_cast<const int4*>(p);
#pragma unroll
        for (int k = 0; k < BYTES / 16; ++k) {
            const int4 w = LDG ? __ldg(q + k) : q[k];
            unpack_word<T>(w.x, v, (4 * k + 0) * PER_WORD);
            unpack_word<T>(w.y, v, (4 * k + 1) * PER_WORD);
            unpack_word<T>(w.z, v, (4 * k + 2) * PER_WORD);
            unpack_word<T>(w.w, v, (4 * k + 3) * PER_WORD);
        }
    } else if constexpr (BYTES % 8 == 0) {
        const int2* q = reinterpret_cast<const int2*>(p);
#pragma unroll
        for (int k = 0; k < BYTES / 8; ++k) {
            const int2 w = LDG ? __ldg(q + k) : q[k];
            unpack_word<T>(w.x, v, (2 * k + 0) * PER_WORD);
            unpack_word<T>(w.y, v, (2 * k + 1) * PER_WORD);
        }
    } else if constexpr (BYTES % 4 == 0) {
        const int* q = reinterpret_cast<const int*>(p);
#pragma unroll
        for (int k = 0; k < BYTES / 4; ++k) unpack_word<T>(LDG ? __ldg(q + k) : q[k], v, k * PER_WORD);
    } else {
#pragma unroll
        for (int o = 0; o < N; ++o) v[o] = LDG ? (int)__ldg(p + o) : (int)p[o];
    }
}


// The interpolating lookup of one layer, either from shared memory (SHARED: the block
// copied idx/wt, packed as (idx << 16) | wt, and the int8 table there first) or from
// global memory through the read-only cache. Rows hold CP >= C_OUT entries.
template <int C_IN, int C_OUT, int CP, int K, int L, bool SHARED>
struct InterpLut {
    static constexpr int TABLE_SIZE = C_IN * L * K * K * CP;
    const u8* idx;
    const i32* wt;
    const i8* table;
    const i32* s_iw;   // shared [C_IN * 256] when SHARED
    const i8* s_table; // shared [TABLE_SIZE] when SHARED

    // acc[o] = A[o, y, x] of reference.accumulate: bias plus, for every input channel c
    // and window offset d, v_c(X[c, clamp(q - d)])[d + R, o] where
    // v(code) = table[c, i] * (256 - w) + table[c, i + 1] * w  (two reads, multiply-add).
    __device__ __forceinline__ void accumulate(const u8* xp, int H, int W, int y, int x,
                                               const i32* bias, i32 (&acc)[C_OUT]) const {
        constexpr int R = K / 2;
        constexpr int STEP = K * K * CP;  // from knot i to knot i + 1
#pragma unroll
        for (int o = 0; o < C_OUT; ++o) acc[o] = __ldg(bias + o);
        for (int c = 0; c < C_IN; ++c) {
            const u8* xc = xp + (i64)c * H * W;
                for (int dy = 0; dy < K; ++dy) {
                const u8* row = xc + (i64)clampi(y - (dy - R), 0, H - 1) * W;
#pragma unroll
                for (int dx = 0; dx < K; ++dx) {
                    const int code = __ldg(row + clampi(x - (dx - R), 0, W - 1));
                    int i, w1;
                    const i8* t0;
                    if (SHARED) {
                        const int iw = s_iw[c * 256 + code];
                        i = iw >> 16;
                        w1 = iw & 0xffff;
                        t0 = s_table + ((c * L + i) * K * K + dy * K + dx) * CP;
                    } else {
                        i = __ldg(idx + c * 256 + code);
                        w1 = __ldg(wt + c * 256 + code);
                        t0 = table + ((c * L + i) * K * K + dy * K + dx) * CP;
                    }
                    const int w0 = 256 - w1;
                    int v0[CP], v1[CP];  // entries past C_OUT are padding, never used
                    load_row<i8, CP, !SHARED>(t0, v0);
                    load_row<i8, CP, !SHARED>(t0 + STEP, v1);
#pragma unroll
                    for (int o = 0; o < C_OUT; ++o) acc[o] += v0[o] * w0 + v1[o] * w1;
                }
            }
        }
    }
};

// Shared-memory buffers of the interpolating lookup; the whole block fills them, then
// synchronises. Must be called by every thread of the block (it contains a barrier).
// One byte each when not SHARED (unused).
template <int C_IN, int C_OUT, int CP, int K, int L, bool SHARED>
__device__ __forceinline__ InterpLut<C_IN, C_OUT, CP, K, L, SHARED> load_interp(
    const u8* idx, const i32* wt, const i8* table, i32* s_iw, i8* s_table) {
    InterpLut<C_IN, C_OUT, CP, K, L, SHARED> lut = {idx, wt, table, s_iw, s_table};
    if (SHARED) {
        const int tid = threadIdx.y * blockDim.x + threadIdx.x;
        const int nthreads = blockDim.x * blockDim.y;
        for (int j = tid; j < C_IN * 256; j += nthreads)
            s_iw[j] = ((int)__ldg(idx + j) << 16) | __ldg(wt + j);
        for (int j = tid; j < lut.TABLE_SIZE; j += nthreads) s_table[j] = __ldg(table + j);
        __syncthreads();
    }
    return lut;
}

// The expanded lookup: one read of the CP int16 entries (C_OUT used) per source pixel.
template <int C_IN, int C_OUT, int CP, int K>
struct ExpandedLut {
    const i16* etab;

    __device__ __forceinline__ void accumulate(const u8* xp, int H, int W, int y, int x,
                                               const i32* bias, i32 (&acc)[C_OUT]) const {
        constexpr int R = K / 2;
#pragma unroll
        for (int o = 0; o < C_OUT; ++o) acc[o] = __ldg(bias + o);
        for (int c = 0; c < C_IN; ++c) {
            const u8* xc = xp + (i64)c * H * W;
                for (int dy = 0; dy < K; ++dy) {
                const u8* row = xc + (i64)clampi(y - (dy - R), 0, H - 1) * W;
#pragma unroll
                for (int dx = 0; dx < K; ++dx) {
                    const int code = __ldg(row + clampi(x - (dx - R), 0, W - 1));
                    const i16* e = etab + ((i64)(c * 256 + code) * K * K + dy * K + dx) * CP;
                    int v[CP];
                    load_row<i16, CP, true>(e, v);
#pragma unroll
                    for (int o = 0; o < C_OUT; ++o) acc[o] += v[o];
                }
            }
        }
    }
};

// ----------------------------------------------------------------------------- stores

// reference.hidden_layer: out[p, o, y, x] = clamp(base + requant(acc[o]), 0, 255),
// base = x[p, o, y, x] for a residual layer (C_IN == C_OUT), else 128.
template <int C_IN, int C_OUT>
__device__ __forceinline__ void store_hidden(const u8* xp, int H, int W, int y, int x,
                                             const i32 (&acc)[C_OUT], int shift, int residual,
                                             u8* outp) {
    const i64 hw = (i64)H * W, at = (i64)y * W + x;
#pragma unroll
    for (int o = 0; o < C_OUT; ++o) {
        const int base = (residual && o < C_IN) ? (int)__ldg(xp + o * hw + at) : 128;
        outp[o * hw + at] = (u8)clampi(base + requant(acc[o], shift), 0, 255);
    }
}

// reference.last_layer for the R x R outputs of LR pixel (y, x):
// out[p, y*R + a, x*R + b] = clamp(B[y*R + a, x*R + b] + requant(acc[a*R + b]), 0, 255)
// with B from reference.fixed_upsample:
// B = floor((sum_ij w[a,i] w[b,j] P[clamp(y+off[a]+i), clamp(x+off[b]+j)] + D*D/2) / (D*D)),
// clamped to 0..255, D = DEN.
// Every phase's offset is omin or omin + 1 (reference.upsample_filter: phase a sits at
// y + (2a + 1 - R) / (2R), inside (y - 1/2, y + 1/2); cuda_plan.DeviceTables checks), so
// all R x R outputs read the (T+1) x (T+1) patch at (y + omin, x + omin): it is loaded
// once ((T+1)^2 loads, 25 at T = 4, where tap by tap took R*R*T*T pixel and as many
// weight loads), summed separably per patch row, h[i][b] = sum_j w[b,j] P[i, j + d_b],
// then s = sum_i w[a,i] h[i + d_a][b]: the same integers as tap by tap. Patch indices are
// compile-time (a phase's shift d is a select), so everything stays in registers.
template <int R, int T, int DEN>
__device__ __forceinline__ void store_last(const u8* pl, int H, int W, int y, int x,
                                           const i32 (&acc)[R * R], int shift,
                                           const i32* up_off, const i32* up_w, u8* outp) {
    constexpr int S = T + 1;
    constexpr int D2 = DEN * DEN;
    int w[R][T], d[R];
    int omin = 0;
#pragma unroll
    for (int a = 0; a < R; ++a) {
        d[a] = __ldg(up_off + a);
        omin = a == 0 ? d[a] : (d[a] < omin ? d[a] : omin);
#pragma unroll
        for (int t = 0; t < T; ++t) w[a][t] = __ldg(up_w + a * T + t);
    }
#pragma unroll
    for (int a = 0; a < R; ++a) d[a] -= omin;  // 0 or 1
    int col[S];
#pragma unroll
    for (int j = 0; j < S; ++j) col[j] = clampi(x + omin + j, 0, W - 1);
    int h[S][R];
#pragma unroll
    for (int i = 0; i < S; ++i) {
        const u8* prow = pl + (i64)clampi(y + omin + i, 0, H - 1) * W;
        int px[S];
#pragma unroll
        for (int j = 0; j < S; ++j) px[j] = __ldg(prow + col[j]);
#pragma unroll
        for (int b = 0; b < R; ++b) {
            int sum = 0;
#pragma unroll
            for (int j = 0; j < T; ++j) sum += w[b][j] * (d[b] ? px[j + 1] : px[j]);
            h[i][b] = sum;
        }
    }
    const i64 wide = (i64)W * R;
#pragma unroll
    for (int a = 0; a < R; ++a) {
        u8* orow = outp + ((i64)y * R + a) * wide + (i64)x * R;
#pragma unroll
        for (int b = 0; b < R; ++b) {
            int sum = 0;
#pragma unroll
            for (int i = 0; i < T; ++i) sum += w[a][i] * (d[a] ? h[i + 1][b] : h[i][b]);
            const int base = clampi(floor_div(sum + D2 / 2, D2), 0, 255);
            orow[b] = (u8)clampi(base + requant(acc[a * R + b], shift), 0, 255);
        }
    }
}

// ----------------------------------------------------------------------------- kernels
//
// Scalars: shift int (0..24), residual int (0/1), P/H/W int (sizes of x).
// Launch: block (bx, by, 1) of any size, grid (g, 1, 1) of any size (see the top).

// One hidden layer, interpolating lookup. Mirrors reference.hidden_layer.
template <int C_IN, int C_OUT, int CP, int K, int L, bool SHARED>
__global__ void hidden_interp(const u8* __restrict__ x, const u8* __restrict__ idx,
                              const i32* __restrict__ wt, const i8* __restrict__ table,
                              const i32* __restrict__ bias, int shift, int residual,
                              u8* __restrict__ out, int P, int H, int W) {
    __shared__ i32 s_iw[SHARED ? C_IN * 256 : 1];
    __shared__ __align__(16) i8 s_table[SHARED ? C_IN * L * K * K * CP : 1];
    const auto lut = load_interp<C_IN, C_OUT, CP, K, L, SHARED>(idx, wt, table, s_iw, s_table);
    for_each_pixel(P, H, W, [&](int p, int y, int xq) {
        const u8* xp = x + (i64)p * C_IN * H * W;
        i32 acc[C_OUT];
        lut.accumulate(xp, H, W, y, xq, bias, acc);
        store_hidden<C_IN, C_OUT>(xp, H, W, y, xq, acc, shift, residual,
                                  out + (i64)p * C_OUT * H * W);
    });
}

// One hidden layer, expanded table. Mirrors reference.hidden_layer.
template <int C_IN, int C_OUT, int CP, int K>
__global__ void hidden_expanded(const u8* __restrict__ x, const i16* __restrict__ etab,
                                const i32* __restrict__ bias, int shift, int residual,
                                u8* __restrict__ out, int P, int H, int W) {
    const ExpandedLut<C_IN, C_OUT, CP, K> lut = {etab};
    for_each_pixel(P, H, W, [&](int p, int y, int xq) {
        const u8* xp = x + (i64)p * C_IN * H * W;
        i32 acc[C_OUT];
        lut.accumulate(xp, H, W, y, xq, bias, acc);
        store_hidden<C_IN, C_OUT>(xp, H, W, y, xq, acc, shift, residual,
                                  out + (i64)p * C_OUT * H * W);
    });
}

// The last layer (C_OUT = R*R, rows of CP), interpolating lookup, fused with the fixed
// upsample (T taps, denominator DEN) and the pixel shuffle. Mirrors reference.last_layer.
template <int C_IN, int K, int L, int R, int CP, int T, int DEN, bool SHARED>
__global__ void last_interp(const u8* __restrict__ x, const u8* __restrict__ idx,
                            const i32* __restrict__ wt, const i8* __restrict__ table,
                            const i32* __restrict__ bias, int shift,
                            const u8* __restrict__ plane, const i32* __restrict__ up_off,
                            const i32* __restrict__ up_w, u8* __restrict__ out,
                            int P, int H, int W) {
    __shared__ i32 s_iw[SHARED ? C_IN * 256 : 1];
    __shared__ __align__(16) i8 s_table[SHARED ? C_IN * L * K * K * CP : 1];
    const auto lut = load_interp<C_IN, R * R, CP, K, L, SHARED>(idx, wt, table, s_iw, s_table);
    for_each_pixel(P, H, W, [&](int p, int y, int xq) {
        i32 acc[R * R];
        lut.accumulate(x + (i64)p * C_IN * H * W, H, W, y, xq, bias, acc);
        store_last<R, T, DEN>(plane + (i64)p * H * W, H, W, y, xq, acc, shift, up_off, up_w,
                              out + (i64)p * H * W * R * R);
    });
}

// The last layer, expanded table. Mirrors reference.last_layer.
template <int C_IN, int K, int R, int CP, int T, int DEN>
__global__ void last_expanded(const u8* __restrict__ x, const i16* __restrict__ etab,
                              const i32* __restrict__ bias, int shift,
                              const u8* __restrict__ plane, const i32* __restrict__ up_off,
                              const i32* __restrict__ up_w, u8* __restrict__ out,
                              int P, int H, int W) {
    const ExpandedLut<C_IN, R * R, CP, K> lut = {etab};
    for_each_pixel(P, H, W, [&](int p, int y, int xq) {
        i32 acc[R * R];
        lut.accumulate(x + (i64)p * C_IN * H * W, H, W, y, xq, bias, acc);
        store_last<R, T, DEN>(plane + (i64)p * H * W, H, W, y, xq, acc, shift, up_off, up_w,
                              out + (i64)p * H * W * R * R);
    });
}

}  // namespace iqlut
