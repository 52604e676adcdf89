#pragma once
// The backend seam: a ring of operations, described as io_uring SQEs and
// answered as io_uring CQEs.
//
// The rest of the reactor asks a ring for SQEs, fills them with liburing's
// io_uring_prep_* helpers, and hands CQEs to `completion`s. Two backends
// implement that contract (in the spirit of Seastar's reactor_backend):
//
//   uring_ring.cc  io_uring itself: the SQEs go to the kernel.
//   epoll_ring.cc  epoll(7) and non-blocking system calls: the SQEs are
//                  interpreted in user space, for where io_uring is denied
//                  (seccomp, kernel.io_uring_disabled, gVisor). It runs the
//                  15 opcodes the reactor issues, and answers any other one
//                  with -EINVAL.
//
// So io_op, the streams and everything above them never know which backend
// they run on. An executor's three rings are of one backend.

#include "reactor/completion.hh"
#include "reactor/expected.hh"

#include <chrono>
#include <cstdint>
#include <liburing.h>
#include <string>
#include <system_error>

namespace shardd::internal {

// Work that a completion callback needs done with SQEs: re-arming or
// stopping a multishot operation. Callbacks never take SQEs themselves (a
// full SQ would make get_sqe() reap, and so run other callbacks, from inside
// one, which can reorder a stream's CQEs or free its state under it); they
// defer() an action and the executor loop runs it after reaping.
struct deferred_action {
    // `discard`: the executor is shutting down; free what must be freed,
    // submit nothing.
    using callback = void (*)(deferred_action* self, bool discard) noexcept;
    callback fn = nullptr;
    deferred_action* next = nullptr;
    bool queued = false;
};

enum class ring_kind {
    main,     // ordinary operations: send, close, timeouts, connect, recv
    latency,  // accept, latency-class recv and timers, the eventfd read, the preemption timer
    poll,     // IORING_SETUP_IOPOLL: O_DIRECT file I/O on pollable devices
};

const char* to_string(ring_kind kind);

class ring {
public:
    virtual ~ring() = default;
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;

    ring_kind kind() const noexcept { return _kind; }
    // "io_uring" or "epoll".
    virtual const char* backend() const noexcept = 0;
    // io_uring: the ring's fd. epoll: the shard's epoll instance.
    virtual int fd() const noexcept = 0;
    // io_uring: the setup flags ("SINGLE_ISSUER|DEFER_TASKRUN", "none").
    // epoll: "epoll".
    virtual std::string describe_flags() const = 0;
    // io_uring's IORING_SETUP_* flags; 0 on epoll.
    virtual unsigned setup_flags() const noexcept { return 0; }
    // SQ entries.
    virtual unsigned entries() const noexcept = 0;
    // Bytes of RLIMIT_MEMLOCK the ring counts for (uring_ring.hh says when);
    // nothing on epoll.
    virtual std::size_t locked_bytes() const noexcept { return 0; }
    virtual std::size_t locked_bytes_for(unsigned /*entries*/) const noexcept { return 0; }

    // An SQE, submitting first when the queue is full. `need` > 1 asks for
    // that many consecutive free slots (an operation and its linked timeout
    // must not be split by a submit).
    virtual io_uring_sqe* get_sqe(unsigned need = 1) = 0;
    // Prepares the user_data and counts the operation as in flight.
    void track(io_uring_sqe* sqe, completion* c) noexcept {
        io_uring_sqe_set_data(sqe, c);
        ++_in_flight;
    }
    virtual unsigned pending_submissions() const noexcept = 0;
    // Operations submitted (or queued) whose final CQE has not been reaped.
    std::size_t in_flight() const noexcept { return _in_flight; }

    // Submits what is queued. Returns -errno on failure.
    virtual int submit() = 0;
    // Submits and blocks until at least one CQE is ready on this ring (on
    // epoll: on any ring of the executor).
    virtual int submit_and_wait() = 0;
    // One pass of the executor loop over this ring: submits what is queued,
    // collects what completed, and hands it to its completions; returns how
    // many CQEs. `fresh`: the executor's last call was submit_and_wait() on
    // its main ring (or a poll() that found work while spinning), and
    // nothing ran since, so completions need not be collected again.
    virtual unsigned poll(bool fresh) = 0;
    // Hands every ready CQE to its completion; returns how many.
    virtual unsigned reap() = 0;
    // Shutdown only: waits up to `d` for a CQE.
    virtual void wait_for_completion(std::chrono::nanoseconds d) = 0;
    // Whether a thread asleep in the main ring's submit_and_wait() misses
    // this ring's completions unless the main ring polls this ring's fd
    // (io_uring: each ring is its own queue), or one wait covers every ring
    // of the executor (epoll).
    virtual bool needs_wake_link() const noexcept = 0;

    // A provided-buffer ring (buffer_ring.hh): `br` of `entries` buffers,
    // for receives that name `group`.
    virtual std::error_code register_buffer_ring(io_uring_buf_ring* br, unsigned entries, std::uint16_t group) = 0;
    virtual void unregister_buffer_ring(std::uint16_t group) noexcept = 0;
    // Cancels every operation on `fd` now (close_socket()); their CQEs
    // (-ECANCELED) are reaped as usual. Runs the deferred actions and
    // submits first, so that nothing on `fd` is still queued.
    virtual void cancel_fd(int fd) noexcept = 0;
    // `fd` is being closed: a backend that keeps state per descriptor
    // (epoll's registrations) forgets it, so that the next file given that
    // number starts clean. io_uring needs nothing.
    virtual void forget_fd(int /*fd*/) noexcept {}

    // Counters, for stats (read on the ring's own thread; a shard publishes
    // them for other threads). enters(): system calls made to submit or
    // wait (io_uring_enter(2); epoll_wait(2) on epoll).
    std::uint64_t enters() const noexcept { return _enters; }
    std::uint64_t cqes_reaped() const noexcept { return _cqes_reaped; }

    // Queues `a` (once, however often it is deferred before it runs).
    void defer(deferred_action* a) noexcept {
        if (a->queued) {
            return;
        }
        a->queued = true;
        a->next = nullptr;
        (_deferred_tail ? _deferred_tail->next : _deferred_head) = a;
        _deferred_tail = a;
    }
    bool has_deferred() const noexcept { return _deferred_head != nullptr; }
    // Runs the deferred actions, oldest first, including any they defer in
    // turn; returns whether there were any.
    bool run_deferred(bool discard = false) noexcept;

    // True when a CQE is ready; on io_uring's COOP_TASKRUN|TASKRUN_FLAG
    // rings also when the kernel has completions waiting to be run; on epoll
    // also when one of this ring's timers is due. Two loads and no system
    // call while no epoll timer is pending on the ring: this is
    // need_preempt().
    bool has_work() const noexcept {
        if (*_cq_head != io_uring_smp_load_acquire(_cq_tail)) {
            return true;
        }
        if (_kflags && (io_uring_smp_load_acquire(_kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW))) {
            return true;
        }
        return _next_deadline != no_deadline && deadline_passed();
    }

protected:
    explicit ring(ring_kind kind) noexcept : _kind(kind) {}

    static constexpr std::uint64_t no_deadline = UINT64_MAX;
    // CLOCK_MONOTONIC has reached _next_deadline (one vDSO clock read).
    bool deadline_passed() const noexcept;

    ring_kind _kind;
    // What has_work() reads: the CQ's head and tail, io_uring's SQ flags
    // (set only for TASKRUN_FLAG rings), and the earliest epoll timer of
    // this ring in CLOCK_MONOTONIC nanoseconds.
    const unsigned* _cq_head = nullptr;
    const unsigned* _cq_tail = nullptr;
    const unsigned* _kflags = nullptr;
    std::uint64_t _next_deadline = no_deadline;

    bool _reaping = false;  // inside a completion callback
    std::size_t _in_flight = 0;
    std::uint64_t _enters = 0;
    std::uint64_t _cqes_reaped = 0;

private:
    deferred_action* _deferred_head = nullptr;
    deferred_action* _deferred_tail = nullptr;
};

}  // namespace shardd::internal
