#pragma once
// A provided-buffer ring (kernel 5.19+): buffers the kernel picks from when a
// receive completes, so idle connections hold no memory. One per shard and
// ring; multishot receives name its group.
//
// liburing 2.3 has no io_uring_setup_buf_ring(), so the ring memory is
// mapped and registered here by hand (io_uring_register_buf_ring).

#include "reactor/abort_source.hh"
#include "reactor/expected.hh"
#include "reactor/internal/ring.hh"

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
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
    // Why create() failed, for the log: the error's message, and for ENOMEM
    // the RLIMIT_MEMLOCK numbers and how to raise the limit. Since 6.14 the
    // kernel charges the ring of `count` 16-byte descriptors to that limit
    // (io_register_pbuf_ring() -> io_create_region(), whether the memory is
    // ours or, with IOU_PBUF_RING_MMAP, the kernel's), and by then the
    // executors' rings may have used it up.
    static std::string describe_error(std::error_code ec, unsigned count);
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
        maybe_wake();
    }

    unsigned free_buffers() const noexcept { return _count - _in_use; }

    // Waits until a buffer is free: what a receive that ended with -ENOBUFS
    // does before it re-arms. First come, first served: each release wakes
    // the oldest waiter, and only while there are more free buffers than
    // woken waiters that have not used theirs yet, so a crowd of starved
    // connections re-arms as fast as buffers come back, not all at once to
    // fail again. With an abort_source the wait ends early; await_resume()
    // says false then.
    //
    // A woken waiter holds a wake token until it has used the buffer it was
    // woken for. A plain waiter gives it back when it resumes; a receive
    // (`keep_token`, recv_stream::wait_for_buffers()) keeps it until its
    // next completion, which either took a buffer (token_spent()) or did not
    // (token_returned(): the next waiter gets its turn).
    class [[nodiscard]] available_op {
    public:
        available_op(buffer_ring& br, abort_source* abort, bool keep_token)
            : _br(br), _abort(abort), _keep_token(keep_token) {}
        available_op(const available_op&) = delete;
        ~available_op();
        bool await_ready() const noexcept;
        void await_suspend(std::coroutine_handle<> h);
        bool await_resume() noexcept;
        // After await_resume(): whether the caller now holds a wake token.
        bool holds_token() const noexcept { return _token; }

    private:
        friend class buffer_ring;
        static void on_abort(void* self) noexcept;
        buffer_ring& _br;
        abort_source* _abort;
        bool _keep_token;
        abort_subscription _abort_sub;
        available_op* _prev = nullptr;
        available_op* _next = nullptr;
        bool _queued = false;
        bool _woken = false;
        bool _token = false;
        std::coroutine_handle<> _h;
        executor* _exec = nullptr;
        internal::task_queue* _queue = nullptr;
    };
    available_op available(abort_source* abort = nullptr, bool keep_token = false) noexcept {
        return available_op(*this, abort, keep_token);
    }
    // Receives waiting in available().
    std::size_t waiters() const noexcept { return _waiter_count; }
    // A kept wake token: its holder's receive took a buffer, or did not.
    void token_spent() noexcept { --_waking; }
    void token_returned() noexcept {
        --_waking;
        maybe_wake();
    }

    // Buffers handed out and not yet released.
    unsigned in_use() const noexcept { return _in_use; }
    // Receives that ended because the ring was empty (-ENOBUFS).
    std::uint64_t exhausted() const noexcept { return _exhausted; }
    void count_exhausted() noexcept { ++_exhausted; }

private:
    buffer_ring(internal::ring& on, std::uint16_t group, unsigned count, std::size_t size)
        : _on(on), _group(group), _count(count), _size(size) {}
    void add(std::uint16_t bid) noexcept;
    void wake_one() noexcept;
    void maybe_wake() noexcept {
        if (_waiters_head && free_buffers() > _waking) [[unlikely]] {
            wake_one();
        }
    }
    void unlink(available_op* w) noexcept;

    internal::ring& _on;
    std::uint16_t _group;
    unsigned _count;
    std::size_t _size;
    io_uring_buf_ring* _br = nullptr;
    std::size_t _ring_bytes = 0;
    std::byte* _buffers = nullptr;
    std::size_t _buffer_bytes = 0;
    bool _registered = false;
    unsigned _in_use = 0;
    std::uint64_t _exhausted = 0;
    // available() waiters, oldest first (intrusive: the awaitables).
    available_op* _waiters_head = nullptr;
    available_op* _waiters_tail = nullptr;
    std::size_t _waiter_count = 0;
    // Wake tokens out: woken waiters that have not used their buffer yet.
    unsigned _waking = 0;
};

}  // namespace shardd
