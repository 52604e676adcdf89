#pragma once
// The io_uring backend: one io_uring instance, set up with the best flags
// the kernel accepts. This header and uring_ring.cc are where liburing's
// queue functions live; the rest of the reactor sees an internal::ring.

#include "reactor/internal/ring.hh"

#include <memory>
#include <optional>

namespace shardd::internal {

// SQ entries of the rings an executor falls back to when RLIMIT_MEMLOCK cannot
// hold rings of the configured size. Since 6.14 the kernel charges a ring's
// memory to that limit (see locked_bytes()), and no ring locks less than two
// pages: one for the SQ/CQ region, one for the SQE array. 32 is the largest
// ring, CQ included (4x), that still fits those two 4 KiB pages (measured on
// 6.18: 8, 16 and 32 entries lock 8 KiB, 64 lock 12 KiB, 1024 lock 136 KiB).
inline constexpr unsigned memlock_fallback_entries = 32;

class uring_ring final : public ring {
public:
    // Tries the flag sets for `kind` in order (see uring_ring.cc) and keeps
    // the first the kernel accepts. EINVAL moves on to the next set; any
    // other error (ENOMEM, EPERM when io_uring is disabled) is returned.
    // `first_candidate` skips the best sets (tests use it to exercise the
    // fallbacks on a kernel that supports everything).
    static expected<std::unique_ptr<uring_ring>> create(ring_kind kind, unsigned entries, unsigned first_candidate = 0);
    // How many flag sets create() can try for `kind`.
    static unsigned candidate_count(ring_kind kind);
    ~uring_ring() override;

    const char* backend() const noexcept override { return "io_uring"; }
    int fd() const noexcept override { return _ring.ring_fd; }
    io_uring& raw() noexcept { return _ring; }
    unsigned setup_flags() const noexcept override { return _ring.flags; }
    std::string describe_flags() const override;
    bool ring_fd_registered() const noexcept { return _ring_fd_registered; }
    unsigned entries() const noexcept override { return _ring.sq.ring_entries; }

    // Bytes of RLIMIT_MEMLOCK this ring counts for when its creator lacks
    // CAP_IPC_LOCK: its SQ/CQ region and its SQE array, each rounded up to
    // whole pages. Charged since 6.14 ("io_uring: use region api for SQ/CQ":
    // io_create_region() calls __io_account_mem()); 5.12 to 6.13 charged
    // rings to the memory cgroup instead. Registering the ring fd (5.18)
    // charges nothing.
    std::size_t locked_bytes() const noexcept override;
    // The same for a ring of `entries` SQ entries, sized as create() sizes
    // it, with this kernel's ring layout.
    std::size_t locked_bytes_for(unsigned entries) const noexcept override;
    // The same before any ring exists, assuming 6.18's layout (see
    // uring_ring.cc).
    static std::size_t estimate_locked_bytes(unsigned entries) noexcept;
    // Whether this kernel charges ring memory to RLIMIT_MEMLOCK for this
    // thread, whose limit is `limit` bytes: sets up a ring that locks more
    // than that, which fails with ENOMEM exactly when it is charged (6.14+,
    // no CAP_IPC_LOCK), and tears it down. nullopt when it cannot tell: the
    // limit is beyond what one ring locks, or set-up failed otherwise.
    static std::optional<bool> charges_rings(std::size_t limit);

    io_uring_sqe* get_sqe(unsigned need = 1) override;
    unsigned pending_submissions() const noexcept override { return io_uring_sq_ready(&_ring); }
    // With DEFER_TASKRUN this also runs the deferred completions, so that
    // reap() sees them. enters() counts the io_uring_enter(2) calls:
    // liburing enters on a submit only when there is something to submit,
    // except with GETEVENTS (DEFER_TASKRUN and IOPOLL rings, and a wait with
    // no CQE ready), which always enters.
    int submit() override;
    int submit_and_wait() override;
    unsigned poll(bool fresh) override;
    unsigned reap() override;
    void wait_for_completion(std::chrono::nanoseconds d) override;
    bool needs_wake_link() const noexcept override { return true; }

    std::error_code register_buffer_ring(io_uring_buf_ring* br, unsigned entries, std::uint16_t group) override;
    void unregister_buffer_ring(std::uint16_t group) noexcept override;
    void cancel_fd(int fd) noexcept override;

    // TASKRUN_FLAG rings only (always false elsewhere): the kernel holds
    // completion work that only a syscall runs or flushes, i.e. task work
    // (IORING_SQ_TASKRUN) or CQEs that overflowed the CQ.
    bool kernel_has_work() const noexcept {
        return _kflags && (io_uring_smp_load_acquire(_kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW));
    }

private:
    explicit uring_ring(ring_kind kind) noexcept : ring(kind) {}

    io_uring _ring{};
    bool _live = false;  // io_uring_queue_init_params() succeeded
    bool _ring_fd_registered = false;
};

}  // namespace shardd::internal
