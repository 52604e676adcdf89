#pragma once
// recv_stream: the bytes of a connected socket, through one multishot
// receive into a provided buffer ring.
//
// Kernel: multishot recv and provided buffer rings, Linux 6.0. The byte
// limit on a multishot receive (sqe->optlen) is newer; where the kernel
// refuses it (EINVAL, learnt once per process) the stream cancels itself
// once over its limit instead, which lands after what the kernel already
// moved in that io_uring_enter.
//
//   recv_stream rx(fd, buffers, &conn_abort);
//   rx.limit_unread(256 * 1024);
//   auto r = co_await rx.next();             // a buffer, EOF, or an error
//   buffers.release(r->buffer_id);           // once its bytes are used
//   co_await rx.pause();                     // stop taking buffers; settled
//   co_await rx.stop();                      // before closing the socket

#include "reactor/abort_source.hh"
#include "reactor/buffer_ring.hh"
#include "reactor/expected.hh"
#include "reactor/internal/small_fifo.hh"
#include "reactor/internal/stream_core.hh"

#include <cstdint>
#include <limits>
#include <span>

namespace shardd {

struct received {
    std::span<std::byte> data;  // empty: the peer closed its write side
    std::uint16_t buffer_id = 0;
};

namespace internal {

class recv_state final : public stream_core {
public:
    recv_state(int fd, buffer_ring& buffers, abort_source* abort);

    expected<received> take();
    bool has_ready() const noexcept override { return !_ready.empty(); }
    // pause(), and after it pull one buffer at a time where the kernel
    // lacks the byte limit.
    void pause_receive();

    buffer_ring* buffers;
    // Woken by wait_for_buffers() and not yet past the next completion.
    bool wake_token = false;
    void return_wake_token() noexcept {
        if (std::exchange(wake_token, false)) {
            buffers->token_returned();
        }
    }
    std::size_t unread_limit = std::numeric_limits<std::size_t>::max();
    std::size_t ready_bytes = 0;
    std::size_t ready_buffers = 0;
    std::uint64_t pauses() const noexcept { return _pauses; }

private:
    void prep(io_uring_sqe* sqe) override;
    void release_ready() noexcept override;
    static void on_cqe(completion* c, int res, std::uint32_t flags) noexcept;

    struct record {
        int res;
        std::uint32_t flags;
    };
    // Completions not yet taken. Two in place: ping-pong traffic has one
    // or two ready at a time, and an idle connection carries this.
    small_fifo<record, 2> _ready;
    // After a pause on a kernel without the byte limit: receive one buffer
    // per next() (one-shot receives) until one comes back short, i.e. the
    // socket's queue is drained; only then go back to multishot. A
    // multishot receive re-armed on a full queue would take all of it at
    // once (the kernel loops while data and buffers last).
    bool _pull = false;
    // The armed multishot carries a byte limit.
    bool _limited = false;
};

}  // namespace internal

// next() gives the next chunk (holding a buffer until buffers.release()),
// empty data at end of stream, or an error: errc::no_buffer_space when the
// ring ran dry (release buffers, or wait on buffers.available(), then call
// next() again: it re-arms), errc::operation_canceled after stop() or the
// abort_source. Chunks that arrived before a stop are still delivered; after
// an abort, next() ends at once.
class recv_stream {
public:
    recv_stream(int fd, buffer_ring& buffers, abort_source* abort = nullptr);
    ~recv_stream() { _s->retire(); }
    recv_stream(const recv_stream&) = delete;
    recv_stream& operator=(const recv_stream&) = delete;

    internal::stream_next_op<internal::recv_state> next() { return {_s}; }

    // Whether next() has something at once (no suspension, no syscall).
    bool has_ready() const noexcept { return _s->has_ready() && !_s->aborted(); }
    // Buffers received that next() has not returned yet.
    std::size_t ready_buffers() const noexcept { return _s->ready_buffers; }

    // The receive takes at most `bytes` (rounded up to whole buffers) each
    // time it is armed: the kernel ends the multishot there. The reader sets
    // it, before next(), to what it may still take.
    void limit_unread(std::size_t bytes) noexcept { _s->unread_limit = bytes; }

    // Stops receiving until the next next(), and waits until the kernel has
    // let go of the receive: from then on no buffer is taken for this
    // socket. What arrived before is still delivered (has_ready()).
    internal::stream_settle_op pause() {
        _s->pause_receive();
        return {_s};
    }
    // After errc::no_buffer_space: waits, first come first served, until
    // the ring has a buffer for this receive (see buffer_ring::available());
    // false when the abort_source fired. Then call next() again.
    struct [[nodiscard]] buffers_op {
        buffer_ring::available_op op;
        internal::recv_state* s;
        bool await_ready() const noexcept { return op.await_ready(); }
        void await_suspend(std::coroutine_handle<> h) { op.await_suspend(h); }
        bool await_resume() noexcept {
            const bool ok = op.await_resume();
            s->wake_token = op.holds_token();
            return ok;
        }
    };
    buffers_op wait_for_buffers(abort_source* abort = nullptr) { return {_s->buffers->available(abort, true), _s}; }

    // Stops receiving for good and waits for the kernel to let go.
    internal::stream_settle_op stop() {
        _s->stop();
        return {_s};
    }
    // How many times the stream paused itself over limit_unread() (kernels
    // without the multishot byte limit only).
    std::uint64_t pauses() const noexcept { return _s->pauses(); }

    // Whether receives armed from now on (every stream of the process) ask
    // the kernel for the multishot byte limit. True to start with; the first
    // EINVAL sets it false. Tests set it false to run the fallback (pausing
    // over the limit) on kernels that have the limit.
    static void use_multishot_limit(bool use) noexcept;

private:
    internal::recv_state* _s;
};

}  // namespace shardd
