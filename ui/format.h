// Human-readable numbers for labels and tables: bytes, counts, shapes, statistics.
#pragma once

#include <QString>

#include <cstdint>
#include <vector>

namespace human {

QString bytes(std::uint64_t bytes);                     // "1.50 MiB"
QString count(std::int64_t n);                          // "134.5 M", "512"
QString shape(const std::vector<std::int64_t>& shape);  // "576 × 576"
QString number(double value, int precision = 4);        // "-0.01234", "1.2e-07"
QString percent(double share, int precision = 3);       // share in [0,1] -> "0.123 %"

}  // namespace human
