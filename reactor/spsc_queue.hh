#pragma once
// A bounded single-producer single-consumer queue: the wire between two
// shards. Lock-free, one acquire load and one release store per operation in
// the common case (each side caches the other's index).

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <optional>
#include <type_traits>

namespace shardd {

template <typename T>
class spsc_queue {
    static_assert(std::is_nothrow_move_constructible_v<T>);

public:
    // `capacity` is rounded up to a power of two.
    explicit spsc_queue(std::size_t capacity) {
        std::size_t c = 2;
        while (c < capacity) {
            c *= 2;
        }
        _mask = c - 1;
        _slots = std::make_unique<slot[]>(c);
    }
    spsc_queue(const spsc_queue&) = delete;
    spsc_queue& operator=(const spsc_queue&) = delete;
    ~spsc_queue() {
        while (pop()) {
        }
    }

    std::size_t capacity() const noexcept { return _mask + 1; }

    // Producer side. False when full.
    bool push(T&& v) noexcept {
        const std::size_t tail = _tail.value.load(std::memory_order_relaxed);
        if (tail - _head_cache >= capacity()) {
            _head_cache = _head.value.load(std::memory_order_acquire);
            if (tail - _head_cache >= capacity()) {
                return false;
            }
        }
        new (_slots[tail & _mask].bytes) T(std::move(v));
        _tail.value.store(tail + 1, std::memory_order_release);
        return true;
    }

    // Consumer side.
    std::optional<T> pop() noexcept {
        const std::size_t head = _head.value.load(std::memory_order_relaxed);
        if (head == _tail_cache) {
            _tail_cache = _tail.value.load(std::memory_order_acquire);
            if (head == _tail_cache) {
                return std::nullopt;
            }
        }
        T* p = std::launder(reinterpret_cast<T*>(_slots[head & _mask].bytes));
        std::optional<T> out(std::move(*p));
        p->~T();
        _head.value.store(head + 1, std::memory_order_release);
        return out;
    }

    // Producer side: whether push() would fail now.
    bool full() const noexcept {
        return _tail.value.load(std::memory_order_relaxed) - _head.value.load(std::memory_order_acquire) >= capacity();
    }

    // Either side; a snapshot.
    bool empty() const noexcept {
        return _head.value.load(std::memory_order_acquire) == _tail.value.load(std::memory_order_acquire);
    }

private:
    struct slot {
        alignas(T) std::byte bytes[sizeof(T)];
    };
    // Every field that one side writes is alone on its cache line, so the
    // other side's reads never bounce a line that the writer needs.
    // Read-only after construction, read by both sides: their own line,
    // which nobody writes (beside the consumer's _tail_cache they would
    // miss in the producer's cache on every consumer pop).
    alignas(64) std::size_t _mask = 0;
    std::unique_ptr<slot[]> _slots;
    struct alignas(64) index {
        std::atomic<std::size_t> value{0};
    };
    index _head;                              // written by the consumer
    index _tail;                              // written by the producer
    alignas(64) std::size_t _head_cache = 0;  // producer's view of _head
    alignas(64) std::size_t _tail_cache = 0;  // consumer's view of _tail
};

}  // namespace shardd
