// Host emulation of the small part of CUDA that kernels/cuda/iqlut.cu uses, so the
// test suite can compile that same .cu file with g++ and run its kernels on the CPU.
//
// Execution model. A launch runs the blocks one after another. Within a block every
// CUDA thread is a fibre (ucontext: its own stack and registers) and the fibres are
// scheduled cooperatively on one OS thread: each fibre runs until it reaches
// __syncthreads() or returns; when every fibre of the block has reached the barrier, all
// are resumed for the next phase. That is exactly CUDA's barrier semantics (no thread
// passes a barrier before all threads of its block arrive), with no data races in the
// emulator itself. A block in which some threads return while others wait at a barrier
// is reported as an error (undefined behaviour on a GPU).
//
// Shared memory: `__shared__` becomes `static`, i.e. one instance per kernel
// specialisation, shared by the fibres of the running block (blocks run one at a time).
// Fibres are resumed in REVERSE thread order, so that a thread reading a shared entry
// that a lower-numbered thread fills would, without the barrier, read it before it is
// written (stale data from another launch; only partly detectable, since static storage
// keeps the previous launch's contents).
//
// Vector loads (int2/int4 reads of int8/int16 tables) are plain memory reads here; the
// harness compiles with -fno-strict-aliasing so that they mean what they mean on a GPU.
//
// Kernel arguments are passed as CUDA's cuLaunchKernel passes them: an array of
// pointers, one per parameter, each pointing at the parameter's value (emu::launch
// unpacks it with the kernel's own parameter types).

#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};

struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};

struct __attribute__((aligned(8))) int2 {
    int x, y;
};

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in variables, set by the scheduler before it resumes a fibre.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

template <class T>
inline T __ldg(const T* p) {
    return *p;
}

namespace emu {

enum State { RUNNABLE, AT_BARRIER, DONE };

struct Fibre {
    ucontext_t ctx;
    uint3 tid;
    State state;
};

inline ucontext_t g_scheduler;
inline Fibre* g_current = nullptr;
inline void (*g_body)(void*) = nullptr;
inline void* g_body_arg = nullptr;

inline void fibre_entry() {
    g_body(g_body_arg);
    g_current->state = DONE;
    // returning resumes uc_link, the scheduler
}

}  // namespace emu

inline void __syncthreads() {
    emu::Fibre* self = emu::g_current;
    self->state = emu::AT_BARRIER;
    swapcontext(&self->ctx, &emu::g_scheduler);
}

namespace emu {

constexpr std::size_t STACK_BYTES = 64 * 1024;  // per CUDA thread; the kernels need < 4 KiB

// Kept out of line: getcontext is setjmp-like, and the caller's loop counters must not
// live in the frame it snapshots.
__attribute__((noinline)) inline void init_fibre(Fibre& f, uint3 tid, char* stack) {
    f.tid = tid;
    f.state = RUNNABLE;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = &g_scheduler;
    makecontext(&f.ctx, fibre_entry, 0);
}

// Runs one block: returns 0, or 1 when threads diverged at a barrier.
inline int run_block(void (*body)(void*), void* arg, std::vector<Fibre>& fibres,
                     char* stacks) {
    g_body = body;
    g_body_arg = arg;
    const std::size_t n = (std::size_t)blockDim.x * blockDim.y * blockDim.z;
    std::size_t k = 0;
    for (unsigned z = 0; z < blockDim.z; ++z)
        for (unsigned y = 0; y < blockDim.y; ++y)
            for (unsigned x = 0; x < blockDim.x; ++x, ++k)
                init_fibre(fibres[k], uint3{x, y, z}, stacks + k * STACK_BYTES);
    for (;;) {
        // one phase: resume every fibre (highest thread index first) until it waits or ends
        for (std::size_t j = n; j-- > 0;) {
            Fibre& f = fibres[j];
            if (f.state == DONE) continue;
            f.state = RUNNABLE;
            threadIdx = f.tid;
            g_current = &f;
            swapcontext(&g_scheduler, &f.ctx);
        }
        std::size_t done = 0;
        for (std::size_t j = 0; j < n; ++j) done += fibres[j].state == DONE;
        if (done == n) return 0;
        if (done != 0) return 1;  // some threads returned, others wait at a barrier
    }
}

template <class... A, std::size_t... I>
inline void call_kernel(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
struct Launch {
    void (*kernel)(A...);
    void** args;
    static void body(void* self) {
        auto* l = static_cast<Launch*>(self);
        call_kernel(l->kernel, l->args, std::index_sequence_for<A...>{});
    }
};

// cuLaunchKernel on the CPU. Returns 0 on success, 1 on barrier divergence, 2 on a bad
// configuration.
template <class... A>
inline int launch(void (*kernel)(A...), dim3 grid, dim3 block, void** args) {
    const std::size_t n = (std::size_t)block.x * block.y * block.z;
    if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) return 2;
    Launch<A...> l{kernel, args};
    std::vector<Fibre> fibres(n);
    std::unique_ptr<char[]> stacks(new char[n * STACK_BYTES]);  // not zeroed: fast
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                if (int err = run_block(&Launch<A...>::body, &l, fibres, stacks.get())) return err;
            }
    return 0;
}

}  // namespace emu
