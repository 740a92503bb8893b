// Result<T>: the error type returned at every core boundary.
// A failure carries a code and a human message (what is wrong and where); core never throws
// across its API and never aborts on bad input. Asserts are for programmer bugs only.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace ql {

enum class ErrorCode {
    Io,               // the OS refused: missing file, permission, mmap failure
    Format,           // malformed or truncated file, wrong magic, inconsistent metadata
    Unsupported,      // well-formed but not supported (tensor type, architecture)
    InvalidArgument,  // the caller asked for something impossible (bad option, wrong shape)
    Cancelled,        // a progress callback returned false
    OutOfMemory,      // host or device allocation failed
    Device,           // GPU driver / runtime error
};

const char* errorCodeName(ErrorCode code);

struct Error {
    ErrorCode code = ErrorCode::InvalidArgument;
    std::string message;
};

inline Error makeError(ErrorCode code, std::string message)
{
    return Error{code, std::move(message)};
}

template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : m_v(std::in_place_index<0>, std::move(value)) {}
    Result(Error error) : m_v(std::in_place_index<1>, std::move(error)) {}

    bool ok() const { return m_v.index() == 0; }
    explicit operator bool() const { return ok(); }

    T& value() &
    {
        assert(ok());
        return std::get<0>(m_v);
    }
    const T& value() const&
    {
        assert(ok());
        return std::get<0>(m_v);
    }
    T&& value() &&
    {
        assert(ok());
        return std::get<0>(std::move(m_v));
    }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

    const Error& error() const
    {
        assert(!ok());
        return std::get<1>(m_v);
    }

private:
    std::variant<T, Error> m_v;
};

// Result<void> equivalent.
class [[nodiscard]] Status {
public:
    Status() = default;
    Status(Error error) : m_error(std::move(error)), m_ok(false) {}
    bool ok() const { return m_ok; }
    explicit operator bool() const { return m_ok; }
    const Error& error() const
    {
        assert(!m_ok);
        return m_error;
    }

private:
    Error m_error;
    bool m_ok = true;
};

}  // namespace ql

// Propagate an error from an expression returning Result<T> / Status.
#define QL_TRY_STATUS(expr)                         \
    do {                                            \
        auto ql_status_ = (expr);                   \
        if (!ql_status_) return ql_status_.error(); \
    } while (0)
