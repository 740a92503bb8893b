#include "util/result.h"

namespace ql {

const char* errorCodeName(ErrorCode code)
{
    switch (code) {
        case ErrorCode::Io: return "I/O error";
        case ErrorCode::Format: return "format error";
        case ErrorCode::Unsupported: return "unsupported";
        case ErrorCode::InvalidArgument: return "invalid argument";
        case ErrorCode::Cancelled: return "cancelled";
        case ErrorCode::OutOfMemory: return "out of memory";
        case ErrorCode::Device: return "device error";
    }
    return "error";
}

}  // namespace ql
