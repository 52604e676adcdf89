#pragma once
// One io_uring instance, set up with the best flags the kernel accepts.
//
// This header and ring.cc are where liburing lives; the rest of the reactor
// asks a ring for SQEs and hands CQEs to `completion`s. An epoll backend would
// replace this seam, not the executor or the network API.

#include "reactor/completion.hh"
#include "reactor/expected.hh"

#include <atomic>
#include <liburing.h>
#include <memory>
#include <optional>
#include <string>

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

// SQ entries of the rings an executor falls back to when RLIMIT_MEMLOCK cannot
// hold rings of the configured size. Since 6.14 the kernel charges a ring's
// memory to that limit (see locked_bytes()), and no ring locks less than two
// pages: one for the SQ/CQ region, one for the SQE array. 32 is the largest
// ring, CQ included (4x), that still fits those two 4 KiB pages (measured on
// 6.18: 8, 16 and 32 entries lock 8 KiB, 64 lock 12 KiB, 1024 lock 136 KiB).
inline constexpr unsigned memlock_fallback_entries = 32;

class ring {
public:
    // Tries the flag sets for `kind` in order (see ring.cc) and keeps the
    // first the kernel accepts. EINVAL moves on to the next set; any other
    // error (ENOMEM, EPERM when io_uring is disabled) is returned.
    // `first_candidate` skips the best sets (tests use it to exercise the
    // fallbacks on a kernel that supports everything).
    static expected<std::unique_ptr<ring>> create(ring_kind kind, unsigned entries, unsigned first_candidate = 0);
    // How many flag sets create() can try for `kind`.
    static unsigned candidate_count(ring_kind kind);
    ~ring();
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;

    ring_kind kind() const noexcept { return _kind; }
    int fd() const noexcept { return _ring.ring_fd; }
    io_uring& raw() noexcept { return _ring; }
    unsigned setup_flags() const noexcept { return _ring.flags; }
    // "SINGLE_ISSUER|DEFER_TASKRUN", "COOP_TASKRUN|TASKRUN_FLAG", "IOPOLL", "none".
    std::string describe_flags() const;
    bool ring_fd_registered() const noexcept { return _ring_fd_registered; }
    unsigned entries() const noexcept { return _ring.sq.ring_entries; }

    // Bytes of RLIMIT_MEMLOCK this ring counts for when its creator lacks
    // CAP_IPC_LOCK: its SQ/CQ region and its SQE array, each rounded up to
    // whole pages. Charged since 6.14 ("io_uring: use region api for SQ/CQ":
    // io_create_region() calls __io_account_mem()); 5.12 to 6.13 charged
    // rings to the memory cgroup instead. Registering the ring fd (5.18)
    // charges nothing.
    std::size_t locked_bytes() const noexcept;
    // The same for a ring of `entries` SQ entries, sized as create() sizes
    // it, with this kernel's ring layout.
    std::size_t locked_bytes_for(unsigned entries) const noexcept;
    // The same before any ring exists, assuming 6.18's layout (see ring.cc).
    static std::size_t estimate_locked_bytes(unsigned entries) noexcept;
    // Whether this kernel charges ring memory to RLIMIT_MEMLOCK for this
    // thread, whose limit is `limit` bytes: sets up a ring that locks more
    // than that, which fails with ENOMEM exactly when it is charged (6.14+,
    // no CAP_IPC_LOCK), and tears it down. nullopt when it cannot tell: the
    // limit is beyond what one ring locks, or set-up failed otherwise.
    static std::optional<bool> charges_rings(std::size_t limit);

    // An SQE, submitting first when the queue is full. `need` > 1 asks for
    // that many consecutive free slots (an operation and its linked timeout
    // must not be split by a submit).
    io_uring_sqe* get_sqe(unsigned need = 1);
    // Prepares the user_data and counts the operation as in flight.
    void track(io_uring_sqe* sqe, completion* c) noexcept {
        io_uring_sqe_set_data(sqe, c);
        ++_in_flight;
    }
    unsigned pending_submissions() const noexcept { return io_uring_sq_ready(&_ring); }
    // Operations submitted (or queued) whose final CQE has not been reaped.
    std::size_t in_flight() const noexcept { return _in_flight; }

    // Submits what is queued. With DEFER_TASKRUN this also runs the deferred
    // completions, so that reap() sees them. Returns -errno on failure.
    int submit();
    // Submits and blocks until at least one CQE is ready.
    int submit_and_wait();

    // Hands every ready CQE to its completion; returns how many.
    unsigned reap();

    // Counters, for stats (read on the ring's own thread; a shard publishes
    // them for other threads). enters() counts the io_uring_enter(2) calls
    // submit() and submit_and_wait() make: liburing enters on a submit only
    // when there is something to submit, except with GETEVENTS (DEFER_TASKRUN
    // and IOPOLL rings, and a wait with no CQE ready), which always enters.
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

    // True when a CQE is ready, or (COOP_TASKRUN|TASKRUN_FLAG rings) when the
    // kernel has completions waiting to be run. Two loads, no syscall: this is
    // need_preempt().
    bool has_work() const noexcept {
        const unsigned head = *_ring.cq.khead;
        const unsigned tail = io_uring_smp_load_acquire(_ring.cq.ktail);
        if (head != tail) {
            return true;
        }
        return kernel_has_work();
    }

    // TASKRUN_FLAG rings only (always false elsewhere): the kernel holds
    // completion work that only a syscall runs or flushes, i.e. task work
    // (IORING_SQ_TASKRUN) or CQEs that overflowed the CQ.
    bool kernel_has_work() const noexcept {
        return (_ring.flags & IORING_SETUP_TASKRUN_FLAG) &&
               (io_uring_smp_load_acquire(_ring.sq.kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW));
    }

private:
    explicit ring(ring_kind kind) : _kind(kind) {}

    ring_kind _kind;
    io_uring _ring{};
    bool _ring_fd_registered = false;
    bool _reaping = false;  // inside a completion callback
    std::size_t _in_flight = 0;
    std::uint64_t _enters = 0;
    std::uint64_t _cqes_reaped = 0;
    deferred_action* _deferred_head = nullptr;
    deferred_action* _deferred_tail = nullptr;
};

}  // namespace shardd::internal
