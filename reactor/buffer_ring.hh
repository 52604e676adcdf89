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
    // The kernel took a buffer (a CQE named it): it is ours until
    // release().
    void taken() noexcept {
        ++_in_use;
        --_in_ring;
        if (++_taken_since_exhausted > decay_after * _target) [[unlikely]] {
            shrink_target();
        }
        refill();
    }
    // Hands buffer `bid` back: to the kernel's ring if it is below its
    // target, else to the top of the spare stack, whence it is the next to
    // go in.
    void release(std::uint16_t bid) noexcept {
        --_in_use;
        if (_in_ring < _target) {
            add_at(bid, 0);
            advance(1);
        } else {
            _spare.push_back(bid);
        }
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
    // A receive ended with -ENOBUFS. With spares left, the ring's target
    // was too small for a burst: double it, and fill the ring up.
    void count_exhausted() noexcept;
    // How many buffers the kernel's ring is kept at (see "Hot buffers").
    unsigned ring_target() const noexcept { return _target; }

private:
    // Hot buffers. The kernel takes buffers from its ring in order, so a
    // ring holding the whole pool hands out the buffer released longest
    // ago: a bulk stream through 1024 x 16 KiB then writes to and reads
    // from 16 MiB of cold memory, where a textbook epoll server reuses one
    // warm 64 KiB buffer. perf (16 connections x 64 KiB messages, CPU 0):
    // _copy_to_iter and _copy_from_iter took 11.5 us per message, against
    // 4.8 us for the epoll server, the whole of the gap between the two.
    // So the ring holds only `_target` buffers, and the rest wait on a
    // stack, the last released on top: the buffers in use cycle through a
    // working set the size of the traffic, not of the pool.
    //
    // A burst that takes more than the target in one io_uring_enter ends
    // some receives with -ENOBUFS while spares are left; the target then
    // doubles (a re-armed receive costs little, and only while it grows).
    // It halves again after decay_after x target buffers taken without one.
    static constexpr unsigned initial_target = 64;
    static constexpr unsigned decay_after = 256;

    buffer_ring(internal::ring& on, std::uint16_t group, unsigned count, std::size_t size)
        : _on(on), _group(group), _count(count), _size(size) {}
    // Writes the ring entry `offset` places past the tail; advance() makes
    // entries visible to the kernel.
    void add_at(std::uint16_t bid, unsigned offset) noexcept;
    void advance(unsigned n) noexcept;
    void refill() noexcept {
        unsigned n = 0;
        while (_in_ring + n < _target && !_spare.empty()) {
            add_at(_spare.back(), n++);
            _spare.pop_back();
        }
        if (n > 0) {
            advance(n);
        }
    }
    void shrink_target() noexcept;
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
    // Entries in the kernel's ring (added, and not yet named by a CQE).
    unsigned _in_ring = 0;
    unsigned _target = initial_target;
    std::uint64_t _taken_since_exhausted = 0;
    // Free buffers not in the ring; the most recently released last.
    std::vector<std::uint16_t> _spare;
    std::uint64_t _exhausted = 0;
    // available() waiters, oldest first (intrusive: the awaitables).
    available_op* _waiters_head = nullptr;
    available_op* _waiters_tail = nullptr;
    std::size_t _waiter_count = 0;
    // Wake tokens out: woken waiters that have not used their buffer yet.
    unsigned _waking = 0;
};

}  // namespace shardd
