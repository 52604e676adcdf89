#pragma once
// A small expected-like result type.
//
// g++ 12 ships std::expected only under -std=c++23; we build as C++20, so the
// runtime carries this minimal stand-in. It is deliberately tiny: a value or
// an error, checked access, nothing else. Replace with std::expected when the
// toolchain moves to C++23.

#include <cassert>
#include <system_error>
#include <utility>
#include <variant>

namespace shardd {

template <typename E>
struct unexpected {
    E error;
};

template <typename E>
unexpected(E) -> unexpected<E>;

template <typename T, typename E = std::error_code>
class [[nodiscard]] expected {
public:
    expected(T value) : _v(std::in_place_index<0>, std::move(value)) {}
    template <typename G>
    expected(unexpected<G> e) : _v(std::in_place_index<1>, std::move(e.error)) {}

    bool has_value() const noexcept { return _v.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & {
        assert(has_value());
        return std::get<0>(_v);
    }
    const T& value() const& {
        assert(has_value());
        return std::get<0>(_v);
    }
    T&& value() && {
        assert(has_value());
        return std::get<0>(std::move(_v));
    }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    E& error() & {
        assert(!has_value());
        return std::get<1>(_v);
    }
    const E& error() const& {
        assert(!has_value());
        return std::get<1>(_v);
    }

private:
    std::variant<T, E> _v;
};

// A negative errno (the io_uring / raw syscall convention) as an error_code.
inline std::error_code errno_code(int err) noexcept { return {err < 0 ? -err : err, std::system_category()}; }

}  // namespace shardd
