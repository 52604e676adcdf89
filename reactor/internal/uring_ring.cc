#include "reactor/internal/uring_ring.hh"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <span>
#include <spdlog/spdlog.h>
#include <unistd.h>

namespace shardd::internal {

namespace {

// Flags that do not exist in liburing 2.3's header on older build hosts are
// all present there; these names are only for the log.
struct flag_name {
    unsigned flag;
    const char* name;
};
constexpr flag_name flag_names[] = {
    {IORING_SETUP_IOPOLL, "IOPOLL"},
    {IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER"},
    {IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"},
    {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
    {IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"},
    {IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL"},
    {IORING_SETUP_CQSIZE, "CQSIZE"},
};

std::string flags_to_string(unsigned flags) {
    std::string out;
    for (const auto& f : flag_names) {
        if (flags & f.flag) {
            if (!out.empty()) {
                out += '|';
            }
            out += f.name;
        }
    }
    return out.empty() ? "none" : out;
}

// Flag sets to try, best first.
//
// main: SINGLE_ISSUER|DEFER_TASKRUN (6.1) runs completions only when we ask
//   (io_uring_enter with GETEVENTS), so the kernel never interrupts a running
//   task to post them: fewer context switches, batched completion work.
//   Not with TASKRUN_FLAG: it would let the loop skip the io_uring_enter
//   when no deferred work is waiting (one load instead of a ~2 us syscall),
//   but measured at 256 x 4 x 64 B it cost 15% more CPU per message
//   (800 vs 700 ns, 3 interleaved rounds, 2026-11; why is not established:
//   the kernel sets and clears the flag with atomics from both CPUs). Used
//   only to skip the enters of spin_before_park's busy-poll, it made the
//   ping-pong round trip no shorter (15.3 vs 14.7 us p50).
//   Fallback COOP_TASKRUN|TASKRUN_FLAG (5.19) gives the same "no IPI" with the
//   pending work visible in sq.kflags.
// latency: must interrupt. Its CQEs are what need_preempt() watches, and a
//   thread asleep on the main ring must be woken by them: with COOP or DEFER
//   task-run a completion here would wait for our next syscall. So only
//   SINGLE_ISSUER (6.0), which changes no notification behaviour.
// poll: IOPOLL completions are reaped by polling from io_uring_enter anyway.
std::span<const unsigned> candidates(ring_kind kind) {
    static constexpr unsigned main_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        0,
    };
    static constexpr unsigned latency_sets[] = {IORING_SETUP_SINGLE_ISSUER, 0};
    static constexpr unsigned poll_sets[] = {IORING_SETUP_IOPOLL | IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_IOPOLL};
    switch (kind) {
    case ring_kind::main: return main_sets;
    case ring_kind::latency: return latency_sets;
    case ring_kind::poll: return poll_sets;
    }
    return {};
}

// The CQ is sized at 4x the SQ: multishot accept and recv post many CQEs per
// SQE, and an overflowing CQ costs an extra kernel list (IORING_FEAT_NODROP).
constexpr unsigned cq_factor = 4;

// What a ring locks, as rings_size() and io_allocate_scq_urings() in
// io_uring/io_uring.c (6.14+) lay it out: a header, the CQEs (aligned to
// SMP_CACHE_BYTES), the SQ index array, all in one region rounded up to
// pages; the SQEs in a second region. `header` is the CQEs' offset
// (io_uring_params.cq_off.cqes).
constexpr std::size_t kernel_cache_line = 64;  // SMP_CACHE_BYTES on x86-64 and arm64
// cq_off.cqes on 6.18 x86-64, for estimates made before a ring exists; a
// created ring's own offset is used wherever there is one.
constexpr std::size_t estimated_ring_header = 64;

std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }

std::size_t page_bytes() noexcept {
    const long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<std::size_t>(p) : 4096;
}

std::size_t locked_bytes_with(std::size_t header, unsigned entries) noexcept {
    const std::size_t sq = entries;
    const std::size_t cq = sq * cq_factor;
    const std::size_t region = round_up(header + cq * sizeof(io_uring_cqe), kernel_cache_line) + sq * sizeof(unsigned);
    return round_up(region, page_bytes()) + round_up(sq * sizeof(io_uring_sqe), page_bytes());
}

}  // namespace

unsigned uring_ring::candidate_count(ring_kind kind) { return static_cast<unsigned>(candidates(kind).size()); }

expected<std::unique_ptr<uring_ring>> uring_ring::create(ring_kind kind, unsigned entries, unsigned first_candidate) {
    std::unique_ptr<uring_ring> r(new uring_ring(kind));
    int rc = -EINVAL;
    unsigned tried_before = 0;
    bool first = true;
    for (unsigned flags : candidates(kind).subspan(std::min<std::size_t>(first_candidate, candidates(kind).size()))) {
        io_uring_params p{};
        // SUBMIT_ALL (5.18): keep submitting the batch past a failing SQE;
        // each failure is reported in its own CQE.
        p.flags = flags | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * cq_factor;
        rc = io_uring_queue_init_params(entries, &r->_ring, &p);
        if (rc == -EINVAL) {
            // Maybe only SUBMIT_ALL is unknown (kernel < 5.18).
            p = {};
            p.flags = flags | IORING_SETUP_CQSIZE;
            p.cq_entries = entries * cq_factor;
            rc = io_uring_queue_init_params(entries, &r->_ring, &p);
        }
        if (rc == 0) {
            r->_live = true;
            if (!first) {
                spdlog::info("{} ring: kernel refused {}, using {}", to_string(kind), flags_to_string(tried_before),
                             flags_to_string(r->_ring.flags));
            }
            break;
        }
        if (rc != -EINVAL) {
            return unexpected{errno_code(rc)};
        }
        tried_before = flags;
        first = false;
    }
    if (rc != 0) {
        return unexpected{errno_code(rc)};
    }
    r->_cq_head = r->_ring.cq.khead;
    r->_cq_tail = r->_ring.cq.ktail;
    if (r->_ring.flags & IORING_SETUP_TASKRUN_FLAG) {
        r->_kflags = r->_ring.sq.kflags;
    }
    // Registered ring fd (5.18): io_uring_enter skips the fget/fput of the
    // ring's file on every call. Optional: without it each enter costs a few
    // more nanoseconds.
    r->_ring_fd_registered = io_uring_register_ring_fd(&r->_ring) == 1;
    return r;
}

uring_ring::~uring_ring() {
    // Only a ring that was set up: io_uring_queue_exit() on the zeroed
    // struct of a failed create() would close(0), which under the epoll
    // fallback may be another shard's epoll instance.
    if (_live) {
        io_uring_queue_exit(&_ring);
    }
}

std::size_t uring_ring::locked_bytes() const noexcept {
    // liburing sizes both mappings of the one region (IORING_FEAT_SINGLE_MMAP)
    // to the larger of the SQ and CQ parts.
    const std::size_t region = std::max(_ring.sq.ring_sz, _ring.cq.ring_sz);
    return round_up(region, page_bytes()) + round_up(std::size_t{entries()} * sizeof(io_uring_sqe), page_bytes());
}

std::size_t uring_ring::locked_bytes_for(unsigned n) const noexcept {
    const auto header = static_cast<std::size_t>(reinterpret_cast<const char*>(_ring.cq.cqes) -
                                                 static_cast<const char*>(_ring.cq.ring_ptr));
    return locked_bytes_with(header, n);
}

std::size_t uring_ring::estimate_locked_bytes(unsigned n) noexcept {
    return locked_bytes_with(estimated_ring_header, n);
}

std::optional<bool> uring_ring::charges_rings(std::size_t limit) {
    // The smallest ring that locks more than `limit`, within
    // IORING_MAX_CQ_ENTRIES (65536) for its 4x CQ.
    constexpr unsigned max_cq_entries = 65536;
    unsigned n = memlock_fallback_entries;
    while (locked_bytes_with(estimated_ring_header, n) <= limit) {
        if (n * 2 * cq_factor > max_cq_entries) {
            return std::nullopt;
        }
        n *= 2;
    }
    io_uring probe{};
    io_uring_params p{};
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = n * cq_factor;
    const int rc = io_uring_queue_init_params(n, &probe, &p);
    if (rc == 0) {
        io_uring_queue_exit(&probe);
        return false;
    }
    if (rc == -ENOMEM) {
        return true;
    }
    return std::nullopt;
}

std::string uring_ring::describe_flags() const {
    return flags_to_string(_ring.flags & ~(IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL));
}

io_uring_sqe* uring_ring::get_sqe(unsigned need) {
    assert(!_reaping && "a completion callback took an SQE: defer() it instead");
    if (io_uring_sq_space_left(&_ring) < need) {
        submit();
    }
    // After a submit the whole SQ is free unless the kernel could not take
    // it (-EBUSY with a full CQ): then loop reaping until there is room.
    while (io_uring_sq_space_left(&_ring) < need) {
        reap();
        submit();
    }
    return io_uring_get_sqe(&_ring);
}

int uring_ring::submit() {
    if (_ring.flags & IORING_SETUP_DEFER_TASKRUN) {
        ++_enters;
        return io_uring_submit_and_get_events(&_ring);
    }
    if (io_uring_sq_ready(&_ring) == 0 && !(_ring.flags & IORING_SETUP_IOPOLL)) {
        return 0;
    }
    ++_enters;
    if (_ring.flags & IORING_SETUP_IOPOLL) {
        // IOPOLL completions appear only while someone polls for them.
        return io_uring_submit_and_get_events(&_ring);
    }
    return io_uring_submit(&_ring);
}

int uring_ring::submit_and_wait() {
    ++_enters;
    return io_uring_submit_and_wait(&_ring, 1);
}

unsigned uring_ring::reap() {
    unsigned count = 0;
    io_uring_cqe* cqe = nullptr;
    // One CQE at a time, marked seen before its callback runs. Callbacks
    // only record and schedule; what needs an SQE they defer().
    while (io_uring_peek_cqe(&_ring, &cqe) == 0) {
        auto* c = static_cast<completion*>(io_uring_cqe_get_data(cqe));
        const int res = cqe->res;
        const std::uint32_t flags = cqe->flags;
        io_uring_cqe_seen(&_ring, cqe);
        if (!(flags & IORING_CQE_F_MORE)) {
            --_in_flight;
        }
        ++count;
        ++_cqes_reaped;
        if (c != nullptr) {
            _reaping = true;
            c->fn(c, res, flags);
            _reaping = false;
        }
    }
    return count;
}

unsigned uring_ring::poll(bool fresh) {
    // An idle poll ring costs nothing: even peeking at an IOPOLL ring's CQ
    // makes liburing enter the kernel to poll (2 syscalls per loop iteration
    // instead of 1, measured with shardd-micro).
    const bool iopoll = _ring.flags & IORING_SETUP_IOPOLL;
    if (iopoll && in_flight() == 0 && pending_submissions() == 0) {
        return 0;
    }
    // The main ring with DEFER_TASKRUN posts completions only inside
    // io_uring_enter: enter unless the executor's wait has just run them. On
    // the COOP_TASKRUN|TASKRUN_FLAG fallback, enter when the flags say
    // completion work is waiting: park() will not sleep while it is, so not
    // entering here would spin until a timer tick ran it. The poll ring
    // completes only while polled.
    const bool must_enter =
        pending_submissions() > 0 ||
        (_kind == ring_kind::main && (((_ring.flags & IORING_SETUP_DEFER_TASKRUN) && !fresh) || kernel_has_work())) ||
        (iopoll && in_flight() > 0);
    if (must_enter) {
        submit();
    }
    return reap();
}

void uring_ring::wait_for_completion(std::chrono::nanoseconds d) {
    __kernel_timespec ts{};
    ts.tv_sec = d.count() / 1'000'000'000;
    ts.tv_nsec = d.count() % 1'000'000'000;
    io_uring_cqe* cqe = nullptr;
    io_uring_wait_cqe_timeout(&_ring, &cqe, &ts);
}

std::error_code uring_ring::register_buffer_ring(io_uring_buf_ring* br, unsigned entries, std::uint16_t group) {
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(br);
    reg.ring_entries = entries;
    reg.bgid = group;
    if (int rc = io_uring_register_buf_ring(&_ring, &reg, 0); rc < 0) {
        return errno_code(rc);
    }
    return {};
}

void uring_ring::unregister_buffer_ring(std::uint16_t group) noexcept { io_uring_unregister_buf_ring(&_ring, group); }

void uring_ring::cancel_fd(int fd) noexcept {
    // The synchronous cancel reaches only what the kernel holds. An operation
    // on `fd` still in a deferred action (a multishot recv re-armed from its
    // last CQE) or in the SQ would be submitted after the close, and fail
    // with EBADF, or worse, land on the next socket given that number.
    // Submit those first, so that they are cancelled.
    run_deferred();
    submit();
    io_uring_sync_cancel_reg reg{};
    reg.fd = fd;
    reg.flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
    reg.timeout.tv_sec = -1;  // no timeout: socket operations cancel at once
    reg.timeout.tv_nsec = -1;
    // 0 (cancelled) or -ENOENT (nothing pending) are the answers; the
    // cancelled operations' CQEs are reaped by the loop as usual.
    io_uring_register_sync_cancel(&_ring, &reg);
}

}  // namespace shardd::internal
