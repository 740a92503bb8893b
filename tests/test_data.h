// Where tests find ../shared/data: $QUANTLENS_DATA, else the path baked in at configure time.
// Tests that need the data QSKIP with the path they looked at when it is absent.
#pragma once

#include <QtTest>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace ql::test {

inline std::string dataDir()
{
    if (const char* env = std::getenv("QUANTLENS_DATA"); env && *env) return env;
    return QL_TEST_DATA_DIR;
}

inline std::string dataPath(const std::string& relative)
{
    return dataDir() + "/" + relative;
}

inline bool haveData(const std::string& relative)
{
    return std::filesystem::exists(dataPath(relative));
}

}  // namespace ql::test

#define QL_REQUIRE_DATA(relative)                                                                \
    do {                                                                                         \
        if (!::ql::test::haveData(relative))                                                     \
            QSKIP(qPrintable(QString("test data not found: %1 (set QUANTLENS_DATA)")             \
                                 .arg(QString::fromStdString(::ql::test::dataPath(relative))))); \
    } while (0)
