// Keeping small Eigen products on the calling thread. Eigen's GEMM asks omp_get_max_threads()
// (a per-thread setting) and opens an OpenMP team from ~50k multiply-adds; on a loaded machine
// every join then waits for a descheduled thread (~10 ms per region on the 2-core development
// box), far more than the work (compute/cpu_ops.cpp measured and documents the same effect).
// Work below kSerialMacs multiply-adds is therefore better done serially.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ql {

inline constexpr double kSerialMacs = double(1 << 25);

// While alive, OpenMP regions opened by this thread (Eigen's GEMMs included) use one thread,
// when `serial` is true.
class SerialThreads {
public:
    explicit SerialThreads(bool serial)
    {
#ifdef _OPENMP
        if (serial && (m_saved = omp_get_max_threads()) > 1) omp_set_num_threads(1);
#endif
    }
    ~SerialThreads()
    {
#ifdef _OPENMP
        if (m_saved > 1) omp_set_num_threads(m_saved);
#endif
    }
    SerialThreads(const SerialThreads&) = delete;
    SerialThreads& operator=(const SerialThreads&) = delete;

private:
    int m_saved = 0;
};

}  // namespace ql
