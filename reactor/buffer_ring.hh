#pragma once
// A provided-buffer ring (kernel 5.19+): buffers the kernel picks from when a
// receive completes, so idle connections hold no memory. One per shard and
// ring; multishot receives name its group.
//
// liburing 2.3 has no io_uring_setup_buf_ring(), so the ring memory is
// mapped and registered here by hand (io_uring_register_buf_ring).

#include "reactor/expected.hh"
#include "reactor/internal/ring.hh"

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace shardd {

class executor;
namespace internal {
struct task_queue;
}

class buffer_ring {
public:
    // `count` buffers of `size` bytes; `count` is a power of two, at most
    // 32768 (the kernel's limit for a buffer ring).
    static expected<std::unique_ptr<buffer_ring>> create(internal::ring& on, std::uint16_t group, unsigned count,
                                                         std::size_t size);
    ~buffer_ring();
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    std::uint16_t group() const noexcept { return _group; }
    internal::ring& ring() noexcept { return _on; }
    std::size_t buffer_size() const noexcept { return _size; }
    unsigned count() const noexcept { return _count; }

    // The bytes of buffer `bid` that a receive filled.
    std::span<std::byte> data(std::uint16_t bid, std::size_t len) noexcept {
        return {_buffers + static_cast<std::size_t>(bid) * _size, len};
    }
    // The kernel took buffer `bid` (a CQE named it): it is ours until
    // release().
    void taken() noexcept { ++_in_use; }
    // Hands buffer `bid` back to the kernel.
    void release(std::uint16_t bid) noexcept {
        add(bid);
        --_in_use;
        if (!_waiters.empty() && free_buffers() >= _wake_at) [[unlikely]] {
            wake_waiters();
        }
    }

    unsigned free_buffers() const noexcept { return _count - _in_use; }

    // Waits until at least 1/8 of the buffers are free again: what a
    // receive that ended with -ENOBUFS does before it re-arms. Waking at a
    // fraction rather than at one free buffer keeps a crowd of starved
    // connections from re-arming (and failing) once per released buffer.
    struct available_op {
        buffer_ring* br;
        bool await_ready() const noexcept { return br->free_buffers() >= br->_wake_at; }
        void await_suspend(std::coroutine_handle<> h);
        void await_resume() const noexcept {}
    };
    available_op available() noexcept { return {this}; }

    // Buffers handed out and not yet released.
    unsigned in_use() const noexcept { return _in_use; }
    // Receives that ended because the ring was empty (-ENOBUFS).
    std::uint64_t exhausted() const noexcept { return _exhausted; }
    void count_exhausted() noexcept { ++_exhausted; }

private:
    buffer_ring(internal::ring& on, std::uint16_t group, unsigned count, std::size_t size)
        : _on(on), _group(group), _count(count), _size(size), _wake_at(count >= 8 ? count / 8 : 1) {}
    void add(std::uint16_t bid) noexcept;
    void wake_waiters();

    struct waiter {
        std::coroutine_handle<> h;
        executor* exec;
        internal::task_queue* queue;
    };

    internal::ring& _on;
    std::uint16_t _group;
    unsigned _count;
    std::size_t _size;
    io_uring_buf_ring* _br = nullptr;
    std::size_t _ring_bytes = 0;
    std::byte* _buffers = nullptr;
    std::size_t _buffer_bytes = 0;
    bool _registered = false;
    unsigned _wake_at;
    unsigned _in_use = 0;
    std::uint64_t _exhausted = 0;
    std::vector<waiter> _waiters;
};

}  // namespace shardd
