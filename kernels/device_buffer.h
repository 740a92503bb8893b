// Owning handles of device and pinned host memory. A DeviceBuffer is movable, not copyable, and
// frees its memory when destroyed; allocation returns an error (ErrorCode::OutOfMemory with the
// size, what it was for and the device's free memory) instead of throwing. Every allocation is
// counted in a MemoryTracker, so a runner can report the most device memory it ever held.
// Host-only header: used by the runner and the op wrappers (.cpp), not by kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "cuda_check.cuh"
#include "dtype.h"

namespace ql::cuda {

struct MemoryTracker {
    std::uint64_t current = 0, peak = 0;
    void add(std::uint64_t bytes)
    {
        current += bytes;
        if (current > peak) peak = current;
    }
    void remove(std::uint64_t bytes) { current -= bytes; }
};

std::string formatGiB(std::uint64_t bytes);  // "1.25 GiB"

// Bytes of device memory, untyped; DeviceBuffer<T> and DeviceTensor are views of it.
class DeviceMemory {
public:
    DeviceMemory() = default;
    DeviceMemory(DeviceMemory&& o) noexcept { swap(o); }
    DeviceMemory& operator=(DeviceMemory&& o) noexcept
    {
        DeviceMemory(std::move(o)).swap(*this);
        return *this;
    }
    DeviceMemory(const DeviceMemory&) = delete;
    DeviceMemory& operator=(const DeviceMemory&) = delete;
    ~DeviceMemory() { release(); }

    // `what` names the allocation in the out-of-memory message.
    static Result<DeviceMemory> allocate(std::size_t bytes, MemoryTracker* tracker,
                                         const std::string& what);
    void release();
    void* data() const { return m_ptr; }
    std::size_t bytes() const { return m_bytes; }
    bool empty() const { return m_ptr == nullptr; }

private:
    void swap(DeviceMemory& o) noexcept
    {
        std::swap(m_ptr, o.m_ptr);
        std::swap(m_bytes, o.m_bytes);
        std::swap(m_tracker, o.m_tracker);
    }
    void* m_ptr = nullptr;
    std::size_t m_bytes = 0;
    MemoryTracker* m_tracker = nullptr;
};

template <class T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    static Result<DeviceBuffer> allocate(std::size_t count, MemoryTracker* tracker,
                                         const std::string& what)
    {
        auto m = DeviceMemory::allocate(count * sizeof(T), tracker, what);
        if (!m) return m.error();
        DeviceBuffer b;
        b.m_memory = std::move(m).value();
        b.m_count = count;
        return b;
    }
    T* data() const { return static_cast<T*>(m_memory.data()); }
    std::size_t size() const { return m_count; }
    std::size_t bytes() const { return m_memory.bytes(); }
    bool empty() const { return m_memory.empty(); }
    void release()
    {
        m_memory.release();
        m_count = 0;
    }

private:
    DeviceMemory m_memory;
    std::size_t m_count = 0;
};

// A device array of F32 or BF16 elements.
class DeviceTensor {
public:
    DeviceTensor() = default;
    static Result<DeviceTensor> allocate(DType type, std::size_t count, MemoryTracker* tracker,
                                         const std::string& what)
    {
        auto m = DeviceMemory::allocate(count * dtypeSize(type), tracker, what);
        if (!m) return m.error();
        DeviceTensor t;
        t.m_memory = std::move(m).value();
        t.m_type = type;
        t.m_count = count;
        return t;
    }
    void* data() const { return m_memory.data(); }
    // Address of element `index`.
    void* at(std::size_t index) const
    {
        return static_cast<char*>(m_memory.data()) + index * dtypeSize(m_type);
    }
    DType type() const { return m_type; }
    std::size_t size() const { return m_count; }
    bool empty() const { return m_memory.empty(); }
    void release()
    {
        m_memory.release();
        m_count = 0;
    }

private:
    DeviceMemory m_memory;
    DType m_type = DType::F32;
    std::size_t m_count = 0;
};

// Page-locked host memory, for asynchronous copies back from the device.
template <class T>
class PinnedBuffer {
public:
    PinnedBuffer() = default;
    PinnedBuffer(PinnedBuffer&& o) noexcept
        : m_ptr(std::exchange(o.m_ptr, nullptr)), m_count(std::exchange(o.m_count, 0))
    {
    }
    PinnedBuffer& operator=(PinnedBuffer&& o) noexcept
    {
        std::swap(m_ptr, o.m_ptr);
        std::swap(m_count, o.m_count);
        return *this;
    }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;
    ~PinnedBuffer()
    {
        if (m_ptr) cudaFreeHost(m_ptr);
    }
    static Result<PinnedBuffer> allocate(std::size_t count)
    {
        PinnedBuffer b;
        void* p = nullptr;
        cudaError_t err = cudaMallocHost(&p, count * sizeof(T));
        if (err != cudaSuccess)
            return makeError(ErrorCode::OutOfMemory,
                             "cannot allocate " + formatGiB(count * sizeof(T)) +
                                 " of page-locked host memory: " + cudaGetErrorString(err));
        b.m_ptr = static_cast<T*>(p);
        b.m_count = count;
        return b;
    }
    T* data() const { return m_ptr; }
    std::size_t size() const { return m_count; }

private:
    T* m_ptr = nullptr;
    std::size_t m_count = 0;
};

}  // namespace ql::cuda
