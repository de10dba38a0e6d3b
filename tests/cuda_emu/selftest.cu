// Kernels that test the host emulation itself (tests/test_cuda_emulated.py), not IQ-LUT.

namespace selftest {

// Reverses each block's chunk of data through shared memory: correct only if no thread
// reads buf before every thread of its block has written it (the barrier).
template <bool BARRIER>
__global__ void reverse_blocks(int* data) {
    __shared__ int buf[1024];
    const int n = blockDim.x;
    const int t = threadIdx.x;
    int* chunk = data + blockIdx.x * n;
    buf[t] = chunk[t];
    if (BARRIER) __syncthreads();
    const int v = buf[n - 1 - t];
    if (BARRIER) __syncthreads();  // everyone has read before anyone writes back
    chunk[t] = v;
}

// Thread 0 leaves before the barrier the others wait at: undefined on a GPU, an error
// in the emulation.
__global__ void divergent_barrier(int* data) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    data[threadIdx.x] = 1;
}

// Writes its coordinates, to check the built-in variables and the 3-D grid.
__global__ void coordinates(int* out) {
    const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    int* o = out + 6 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    o[0] = blockIdx.x; o[1] = blockIdx.y; o[2] = blockIdx.z;
    o[3] = threadIdx.x; o[4] = threadIdx.y; o[5] = threadIdx.z;
}

}  // namespace selftest
