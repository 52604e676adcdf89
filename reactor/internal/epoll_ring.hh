#pragma once
// The epoll backend's rings: one executor's main, latency and poll rings,
// sharing one epoll instance (the engine, epoll_engine.hh).
//
// Each ring keeps its own submission queue of io_uring SQEs and its own
// completion queue, so that io_op, the streams and the executor use it as
// they use an io_uring. submit() runs the queued SQEs in order: each is
// tried at once with a non-blocking system call, as io_uring tries it, and
// only what would block waits in the engine for epoll to say its descriptor
// is ready. CQEs go to the ring the SQE came from.
//
// How the three rings map onto one epoll instance (docs/architecture.md):
// - main: sockets' operations and timers; its submit_and_wait() is the
//   executor's one epoll_wait, which covers all three rings.
// - latency: its own SQ, CQ and timers, so that need_preempt() still reads
//   only this ring's CQ (and, while one of its timers is pending, the
//   clock). Readiness has no interrupt here: a latency-class receive that
//   became ready while a task runs is seen at the next epoll_wait, at the
//   latest when the slice ends (preempt_timer).
// - poll: no IOPOLL on epoll. O_DIRECT reads and writes run synchronously
//   in the shard's thread (pread/pwrite), as regular files do on every
//   ring here.

#include "reactor/internal/ring.hh"

#include <memory>
#include <vector>

namespace shardd::internal {

class epoll_engine;
struct epoll_op;

class epoll_ring final : public ring {
public:
    struct set {
        std::unique_ptr<epoll_ring> main, latency, poll;
    };
    // The three rings of one executor, `entries` SQ entries each, on a new
    // epoll instance.
    static expected<set> create_set(unsigned entries);
    ~epoll_ring() override;

    const char* backend() const noexcept override { return "epoll"; }
    int fd() const noexcept override;
    std::string describe_flags() const override { return "epoll"; }
    unsigned entries() const noexcept override { return _sq_mask + 1; }

    io_uring_sqe* get_sqe(unsigned need = 1) override;
    unsigned pending_submissions() const noexcept override { return _sq_tail - _sq_head; }
    int submit() override;
    int submit_and_wait() override;
    unsigned poll(bool fresh) override;
    unsigned reap() override;
    void wait_for_completion(std::chrono::nanoseconds d) override;
    bool needs_wake_link() const noexcept override { return false; }

    std::error_code register_buffer_ring(io_uring_buf_ring* br, unsigned entries, std::uint16_t group) override;
    void unregister_buffer_ring(std::uint16_t group) noexcept override;
    void cancel_fd(int fd) noexcept override;
    void forget_fd(int fd) noexcept override;

private:
    friend class epoll_engine;
    struct cqe_record {
        std::uint64_t user_data;
        std::int32_t res;
        std::uint32_t flags;
    };

    epoll_ring(ring_kind kind, unsigned entries, std::shared_ptr<epoll_engine> engine);
    // Runs the queued SQEs, oldest first; returns how many.
    unsigned run_sqes();
    void post(std::uint64_t user_data, std::int32_t res, std::uint32_t flags);
    bool cq_empty() const noexcept { return _cq_head_value == _cq_tail_value; }

    std::shared_ptr<epoll_engine> _engine;
    std::vector<io_uring_sqe> _sq;
    unsigned _sq_head = 0;
    unsigned _sq_tail = 0;
    unsigned _sq_mask;
    // Grows when full (a CQ here never overflows); head and tail count up
    // and wrap, as io_uring's do.
    std::vector<cqe_record> _cq;
    unsigned _cq_head_value = 0;
    unsigned _cq_tail_value = 0;
    // This ring's timers, a binary heap on the deadline (the engine keeps it).
    std::vector<epoll_op*> _timers;
};

}  // namespace shardd::internal
