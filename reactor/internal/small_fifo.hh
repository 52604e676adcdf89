#pragma once
// small_fifo<T, N>: a FIFO that keeps up to N elements in place and moves
// to the heap (a ring that doubles) only past that. A stream's queue of
// completions has one or two entries at a time under request/response
// traffic, and an idle connection carries it all the time: a std::vector
// would cost a 32-byte heap block per connection, a std::deque ~600 bytes.
// Once drained, a heap ring bigger than `keep` is freed, so that a burst's
// memory goes back.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

namespace shardd::internal {

template <typename T, std::size_t N, std::size_t keep = 16>
class small_fifo {
    static_assert(std::is_trivially_copyable_v<T>, "elements are copied as bytes when the ring grows");
    static_assert(N > 0 && (N & (N - 1)) == 0, "N is a power of two: the ring masks its indexes");

public:
    small_fifo() = default;
    small_fifo(const small_fifo&) = delete;
    small_fifo& operator=(const small_fifo&) = delete;

    bool empty() const noexcept { return _count == 0; }
    std::size_t size() const noexcept { return _count; }

    void push_back(const T& v) {
        if (_count == _cap) {
            grow();
        }
        data()[(_head + _count) & (_cap - 1)] = v;
        ++_count;
    }
    T pop_front() noexcept {
        const T v = data()[_head];
        _head = (_head + 1) & (_cap - 1);
        if (--_count == 0) {
            _head = 0;
            if (_cap > keep) {
                _heap.reset();
                _cap = N;
            }
        }
        return v;
    }
    // The i-th element from the front.
    const T& operator[](std::size_t i) const noexcept { return data()[(_head + i) & (_cap - 1)]; }
    void clear() noexcept {
        _head = 0;
        _count = 0;
        _heap.reset();
        _cap = N;
    }

private:
    T* data() noexcept { return _heap ? _heap.get() : _inline; }
    const T* data() const noexcept { return _heap ? _heap.get() : _inline; }
    void grow() {
        const std::uint32_t cap = _cap * 2;
        auto bigger = std::make_unique_for_overwrite<T[]>(cap);
        for (std::uint32_t i = 0; i < _count; ++i) {
            bigger[i] = (*this)[i];
        }
        _heap = std::move(bigger);
        _cap = cap;
        _head = 0;
    }

    std::unique_ptr<T[]> _heap;
    std::uint32_t _cap = N;
    std::uint32_t _head = 0;
    std::uint32_t _count = 0;
    T _inline[N];
};

}  // namespace shardd::internal
