#include "reactor/executor.hh"

#include "reactor/internal/epoll_ring.hh"
#include "reactor/internal/uring_ring.hh"
#include "reactor/owned_fd.hh"
#include "reactor/probe.hh"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace shardd {

namespace {

thread_local executor* t_current = nullptr;

std::uint64_t now_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

__kernel_timespec to_kernel(nanoseconds d) {
    __kernel_timespec ts{};
    ts.tv_sec = d.count() / 1'000'000'000;
    ts.tv_nsec = d.count() % 1'000'000'000;
    return ts;
}

// How long shutdown waits for cancelled operations to report back before it
// gives up and leaks them (a kernel that never completes a cancel would
// otherwise hang the process on exit).
constexpr auto shutdown_drain_timeout = 5s;

// A slice reads the clock after this many resumptions: a resumption that
// only queues an I/O takes ~100 ns, a clock read on a VM ~30-50 ns.
constexpr std::uint64_t slice_clock_check_every = 16;

// Main, latency and poll.
constexpr std::size_t rings_per_executor = 3;

// The one warning for a shard that runs with less than it was configured
// for: what it runs with, and what the limit would have to hold per shard
// for the full configuration, all in KiB.
std::string degraded_message(executor& ex, const executor_config& cfg, const expected<std::size_t>& memlock,
                             std::error_code arena_error) {
    internal::ring* rings[] = {&ex.main_ring(), &ex.latency_ring(), &ex.poll_ring()};
    std::size_t locked = 0;
    std::size_t full = 0;
    std::string sizes;
    for (internal::ring* r : rings) {
        locked += r->locked_bytes();
        full += r->locked_bytes_for(cfg.ring_entries);
        sizes += (sizes.empty() ? "" : ", ") + std::string(internal::to_string(r->kind())) + " " +
                 std::to_string(r->entries());
    }
    io_memory* arena = ex.arena();
    const bool memlock_refused = !arena_error || arena_error == std::errc::not_enough_memory;
    if (!memlock_refused) {
        // Not the limit (EFAULT, say): nothing about memlock to tell.
        return "io_memory: " + cfg.name + " cannot register " + memlock_kib(arena->capacity()) + " as fixed buffers (" +
               arena_error.message() + "); running without registered buffers";
    }
    bool same_size = true;
    for (internal::ring* r : rings) {
        same_size = same_size && r->entries() == rings[0]->entries();
    }
    std::string what;
    if (locked < full) {
        what = "with smaller io_uring rings (" + (same_size ? std::to_string(rings[0]->entries()) : sizes) +
               " entries instead of " + std::to_string(cfg.ring_entries) + ": " + memlock_kib(locked) +
               " locked instead of " + memlock_kib(full) + ")";
    }
    const std::size_t arena_charge = arena ? arena->memlock_charge() : 0;
    if (arena_error) {
        what += std::string(what.empty() ? "" : " and ") + "without registered io_memory (" +
                memlock_kib(arena_charge) + " more did not fit: " + arena_error.message() + ")";
    }
    const std::string limit = memlock ? memlock_kib(*memlock) : std::string("unknown");
    // A smaller io_memory is the way out only when the rings fit without it.
    const bool arena_too_big = memlock && full <= *memlock && full + arena_charge > *memlock;
    return "memlock: " + cfg.name + " runs " + what + ": RLIMIT_MEMLOCK is " + limit +
           " for all shards together (and every other process of this user), and without CAP_IPC_LOCK io_uring "
           "memory counts against it. Full speed needs " +
           memlock_kib(full + arena_charge) + " per shard (" + memlock_kib(arena_charge) + " of io_memory + " +
           memlock_kib(full) +
           " of rings, which Linux 6.14+ charges too) plus its receive buffer ring: " + memlock_raise_hint +
           (arena_too_big ? ", or use a smaller io_memory" : "") +
           ". (Logged once: for the first shard that falls short; any other at debug level.)";
}

}  // namespace

executor* executor::current() noexcept { return t_current; }

const char* to_string(backend_choice b) noexcept {
    switch (b) {
    case backend_choice::automatic: return "auto";
    case backend_choice::io_uring: return "io_uring";
    case backend_choice::epoll: return "epoll";
    }
    return "?";
}

void internal::fd_closing(int fd) noexcept {
    if (executor* ex = t_current; ex != nullptr && ex->uses_epoll()) {
        ex->main_ring().forget_fd(fd);
    }
}

const char* executor::backend_name() const noexcept { return _epoll ? "epoll" : "io_uring"; }

void internal::report_unobserved(const std::exception_ptr& error) noexcept {
    const executor* ex = executor::current();
    const std::string where = ex ? ex->name() : std::string("executor");
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        spdlog::error("{}: a task nobody awaited failed: {}", where, e.what());
    } catch (...) {
        spdlog::error("{}: a task nobody awaited failed with a non-standard exception", where);
    }
}

executor::executor(const executor_config& cfg) : _cfg(cfg) {}

std::optional<start_error> executor::start_io_uring(const expected<std::size_t>& memlock, bool& refused) {
    // What RLIMIT_MEMLOCK holds goes to the rings first: a shard cannot run
    // without them, and only runs slower with smaller rings or without
    // io_memory. When three rings of the configured size would not fit the
    // limit even alone, and the kernel charges rings to it (6.14+; 5.12 to
    // 6.13 do not, and their rings must not shrink for nothing), every ring
    // starts as small as a ring gets. Otherwise a ring that does not fit
    // (other shards, and every other process of this user, share the limit)
    // is made small, and so are the rings after it. A ring already created
    // stays as it is: a destroyed ring's pages go back to the limit later,
    // from a kernel worker (io_ring_exit_work), so a small ring created right
    // after could still find them charged.
    unsigned entries = _cfg.ring_entries;
    if (memlock && entries > internal::memlock_fallback_entries &&
        rings_per_executor * internal::uring_ring::estimate_locked_bytes(entries) > *memlock &&
        internal::uring_ring::charges_rings(*memlock).value_or(false)) {
        entries = internal::memlock_fallback_entries;
    }
    for (auto kind : {internal::ring_kind::main, internal::ring_kind::latency, internal::ring_kind::poll}) {
        auto r = internal::uring_ring::create(kind, entries);
        if (!r && r.error() == std::errc::not_enough_memory && entries > internal::memlock_fallback_entries) {
            entries = internal::memlock_fallback_entries;
            r = internal::uring_ring::create(kind, entries);
        }
        if (!r) {
            std::string why = std::string("cannot create the ") + internal::to_string(kind) + " io_uring ring";
            if (r.error() == std::errc::not_enough_memory) {
                why += " of " + std::to_string(entries) + " entries (" +
                       memlock_kib(internal::uring_ring::estimate_locked_bytes(entries)) +
                       " locked): " + r.error().message() + "; RLIMIT_MEMLOCK is " +
                       (memlock ? memlock_kib(*memlock) : std::string("unknown")) +
                       ", shared by all shards and every process of this user, and without CAP_IPC_LOCK the kernel "
                       "charges io_uring rings to it (Linux 6.14+). Each shard needs at least " +
                       memlock_kib(rings_per_executor *
                                   internal::uring_ring::estimate_locked_bytes(internal::memlock_fallback_entries)) +
                       " of rings plus its receive buffer ring: " + memlock_raise_hint + ", or run fewer shards";
            } else {
                why += ": " + r.error().message();
                if (const std::string reason = io_uring_refusal_reason(r.error()); !reason.empty()) {
                    why += ": " + reason;
                    refused = true;
                }
            }
            return start_error{r.error(), why};
        }
        switch (kind) {
        case internal::ring_kind::main: _main = std::move(*r); break;
        case internal::ring_kind::latency: _latency = std::move(*r); break;
        case internal::ring_kind::poll: _poll = std::move(*r); break;
        }
    }
    // Every opcode the runtime uses, asked of the kernel rather than inferred
    // from its version: distribution kernels backport, and seccomp or
    // io_uring_disabled can take opcodes away.
    auto probe = probe_opcodes(static_cast<internal::uring_ring&>(*_main).raw(), required_opcodes());
    if (!probe) {
        refused = true;
        return start_error{probe.error(), "cannot probe io_uring opcodes: " + probe.error().message()};
    }
    if (!probe->ok()) {
        refused = true;
        return start_error{std::make_error_code(std::errc::function_not_supported), probe->message()};
    }
    return std::nullopt;
}

expected<std::unique_ptr<executor>, start_error> executor::create(const executor_config& cfg) {
    if (t_current != nullptr) {
        return unexpected{start_error{std::make_error_code(std::errc::device_or_resource_busy),
                                      "this thread already runs an executor"}};
    }
    std::unique_ptr<executor> ex(new executor(cfg));
    // Raise RLIMIT_MEMLOCK's soft limit to the hard one first: since 6.14 the
    // rings themselves count against it for a process without CAP_IPC_LOCK,
    // and the arena registered below always does.
    const auto memlock = raise_memlock_limit();
    if (cfg.io_memory > 0) {
        auto arena = io_memory::create(cfg.io_memory);
        if (!arena) {
            return unexpected{start_error{arena.error(), "cannot map " + std::to_string(cfg.io_memory >> 10) +
                                                             " KiB of io_memory: " + arena.error().message()}};
        }
        ex->_arena.emplace(std::move(*arena));
    }
    backend_choice want = cfg.backend;
    if (want == backend_choice::automatic) {
        // For the test suite, which runs once per backend, and for trying
        // epoll without editing a configuration.
        if (const char* env = std::getenv("SHARDD_BACKEND"); env != nullptr && *env != '\0') {
            if (std::strcmp(env, "io_uring") == 0) {
                want = backend_choice::io_uring;
            } else if (std::strcmp(env, "epoll") == 0) {
                want = backend_choice::epoll;
            } else if (std::strcmp(env, "auto") != 0) {
                return unexpected{
                    start_error{std::make_error_code(std::errc::invalid_argument),
                                std::string("SHARDD_BACKEND is \"") + env + "\"; expected io_uring, epoll or auto"}};
            }
        }
    }
    if (want != backend_choice::epoll) {
        bool refused = false;
        if (auto failed = ex->start_io_uring(memlock, refused)) {
            // Under `automatic`, io_uring refused by the kernel or a sandbox
            // (EPERM, ENOSYS, a missing opcode) means epoll; a limit to raise
            // (ENOMEM: RLIMIT_MEMLOCK) is still an error to fix.
            if (want == backend_choice::io_uring || !refused) {
                return unexpected{std::move(*failed)};
            }
            ex->_fallback_reason = std::move(failed->message);
            ex->_poll.reset();
            ex->_latency.reset();
            ex->_main.reset();
            want = backend_choice::epoll;
            spdlog::debug("{}: io_uring is not usable ({}): epoll backend", cfg.name, ex->_fallback_reason);
        }
    }
    if (want == backend_choice::epoll) {
        auto rings = internal::epoll_ring::create_set(cfg.ring_entries);
        if (!rings) {
            return unexpected{
                start_error{rings.error(), "cannot create an epoll instance: " + rings.error().message()}};
        }
        ex->_main = std::move(rings->main);
        ex->_latency = std::move(rings->latency);
        ex->_poll = std::move(rings->poll);
        ex->_epoll = true;
    }
    // Blocking on purpose: io_uring returns -EAGAIN for a read on an
    // O_NONBLOCK file instead of waiting for it to become readable.
    ex->_event_fd = eventfd(0, EFD_CLOEXEC);
    if (ex->_event_fd < 0) {
        return unexpected{start_error{errno_code(errno), std::string("eventfd: ") + std::strerror(errno)}};
    }
    std::error_code arena_error;
    if (ex->_arena && !ex->_epoll) {
        // epoll has no registered buffers: the arena serves as plain memory.
        io_uring* rings[] = {&static_cast<internal::uring_ring&>(*ex->_main).raw(),
                             &static_cast<internal::uring_ring&>(*ex->_poll).raw()};
        arena_error = ex->_arena->register_with(rings);
    }
    const bool small_rings = ex->_main->entries() < cfg.ring_entries || ex->_latency->entries() < cfg.ring_entries ||
                             ex->_poll->entries() < cfg.ring_entries;
    if (arena_error || small_rings) {
        // Not fatal: smaller rings batch less, and without registered
        // buffers operations use ordinary ones. One warning per process, not
        // one per shard.
        static std::atomic<bool> warned{false};
        const std::string why = degraded_message(*ex, cfg, memlock, arena_error);
        if (!warned.exchange(true)) {
            spdlog::warn("{}", why);
        } else {
            spdlog::debug("{}", why);
        }
    }
    spdlog::debug("{}: rings main {} x {} (fd {}), latency {} x {} (fd {}), poll {} x {} (fd {}); eventfd {}; "
                  "io_memory {}",
                  cfg.name, ex->_main->describe_flags(), ex->_main->entries(), ex->_main->fd(),
                  ex->_latency->describe_flags(), ex->_latency->entries(), ex->_latency->fd(),
                  ex->_poll->describe_flags(), ex->_poll->entries(), ex->_poll->fd(), ex->_event_fd,
                  !ex->_arena ? std::string("none")
                              : memlock_kib(ex->_arena->capacity()) +
                                    (ex->_arena->registered() ? " registered" : " unregistered"));

    ex->_queues.push_back(std::make_unique<internal::task_queue>());
    ex->_queues[0]->stats.name = "default";

    ex->_eventfd_op.self = ex.get();
    ex->_eventfd_op.fn = [](completion* c, int res, std::uint32_t) {
        auto* self = static_cast<internal_op*>(c)->self;
        self->_eventfd_armed = false;
        if (res > 0) {
            ++self->_eventfd_wakeups;
        }
    };
    ex->_latency_poll_op.self = ex.get();
    ex->_latency_poll_op.fn = [](completion* c, int, std::uint32_t) {
        static_cast<internal_op*>(c)->self->_latency_poll_armed = false;
    };
    ex->_preempt_op.self = ex.get();
    ex->_preempt_op.fn = [](completion* c, int, std::uint32_t) {
        static_cast<internal_op*>(c)->self->_preempt_armed = false;
    };
    t_current = ex.get();
    ex->arm_eventfd_read();
    return ex;
}

executor::~executor() {
    drain_for_shutdown();
    _roots.destroy_all();
    // What the destroyed frames' streams deferred: free, submit nothing.
    for (internal::ring* r : {_latency.get(), _main.get(), _poll.get()}) {
        if (r) {
            r->run_deferred(true);
        }
    }
    if (_event_fd >= 0) {
        close(_event_fd);
    }
    if (t_current == this) {
        t_current = nullptr;
    }
}

task_queue_handle executor::create_task_queue(std::string name, unsigned shares, std::optional<nanoseconds> latency) {
    auto q = std::make_unique<internal::task_queue>();
    q->stats.name = std::move(name);
    q->stats.shares = shares == 0 ? 1 : shares;
    q->stats.latency = latency;
    q->index = static_cast<unsigned>(_queues.size());
    _queues.push_back(std::move(q));
    return {_queues.back()->index};
}

internal::ring& executor::ring_for_current() noexcept {
    return (_current && _current->stats.latency) ? *_latency : *_main;
}

void executor::schedule(std::coroutine_handle<> h, internal::task_queue* q) {
    if (q == nullptr) {
        q = _queues[0].get();
    }
    q->runnable.push_back(h);
    if (!q->active) {
        q->active = true;
        ++_active_count;
        // A queue that slept does not bank credit: it rejoins at the
        // smallest virtual runtime of the running queues (CFS's rule), so a
        // long-idle queue cannot monopolise the CPU when it wakes.
        q->vruntime = std::max(q->vruntime, _min_vruntime);
    }
}

void executor::request_stop() noexcept {
    _stop.store(true, std::memory_order_release);
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = write(_event_fd, &one, sizeof(one));
}

void executor::wake() noexcept {
    // The lost-wake-up guard (Dekker). Sender: publish work, then an RMW on
    // _sleeping. Sleeper (park): an RMW setting _sleeping, then look for
    // work. Both RMWs are on one variable, so one reads the other's write:
    // either the sleeper's exchange reads ours and, through acq_rel,
    // happens-after the work we published (it sees the work and does not
    // sleep), or our fetch_or reads its "true" and we write the eventfd.
    // RMWs rather than fences because ThreadSanitizer cannot model fences,
    // and the channel tests run under it.
    if (_sleeping.fetch_or(0, std::memory_order_acq_rel) != 0 &&
        _sleeping.exchange(0, std::memory_order_acq_rel) != 0) {
        const std::uint64_t one = 1;
        [[maybe_unused]] auto n = write(_event_fd, &one, sizeof(one));
    }
}

void executor::arm_eventfd_read() {
    if (_eventfd_armed) {
        return;
    }
    io_uring_sqe* sqe = _latency->get_sqe();
    io_uring_prep_read(sqe, _event_fd, &_eventfd_value, sizeof(_eventfd_value), 0);
    _latency->track(sqe, &_eventfd_op);
    _eventfd_armed = true;
}

void executor::arm_latency_poll() {
    if (_latency_poll_armed) {
        return;
    }
    // The main ring wakes when the latency ring has a CQE: a one-shot poll on
    // the latency ring's fd (Glommio's link_rings_and_sleep).
    io_uring_sqe* sqe = _main->get_sqe();
    io_uring_prep_poll_add(sqe, _latency->fd(), POLLIN);
    _main->track(sqe, &_latency_poll_op);
    _latency_poll_armed = true;
}

nanoseconds executor::preempt_period() const noexcept {
    nanoseconds period = _cfg.preempt_timer;
    for (const auto& q : _queues) {
        if (q->active && q->stats.latency && *q->stats.latency < period) {
            period = *q->stats.latency;
        }
    }
    return period;
}

void executor::arm_preempt_timer() {
    if (_preempt_armed) {
        return;
    }
    _preempt_ts = to_kernel(preempt_period());
    io_uring_sqe* sqe = _latency->get_sqe();
    io_uring_prep_timeout(sqe, &_preempt_ts, 0, 0);
    _latency->track(sqe, &_preempt_op);
    _preempt_armed = true;
    // The timer only runs once the kernel has it.
    _latency->submit();
}

bool executor::poll_io() {
    unsigned n = 0;
    // Latency first: on epoll its poll() is the loop's one epoll_wait.
    for (internal::ring* r : {_latency.get(), _main.get(), _poll.get()}) {
        n += r->poll(_main_fresh);
    }
    _main_fresh = false;
    bool did = n > 0;
    // What the callbacks asked for that takes SQEs (re-arming or stopping
    // a multishot stream): submitted with the next enter.
    for (internal::ring* r : {_latency.get(), _main.get(), _poll.get()}) {
        did |= r->run_deferred();
    }
    for (work_source* s : _sources) {
        did |= s->poll();
    }
    if (!_eventfd_armed) {
        arm_eventfd_read();
    }
    return did;
}

bool executor::run_one_slice() {
    if (_active_count == 0) {
        return false;
    }
    internal::task_queue* q = nullptr;
    for (const auto& c : _queues) {
        // Ties go to latency-class queues.
        if (c->active && (!q || c->vruntime < q->vruntime ||
                          (c->vruntime == q->vruntime && c->stats.latency && !q->stats.latency))) {
            q = c.get();
        }
    }
    // The slice ends when latency work is waiting (a latency-ring CQE), or
    // when it has run for the preemption period: the clock is read every
    // few resumptions, which costs less than keeping the kernel timer
    // armed for every slice. A task that runs long between suspensions is
    // preempted through should_yield() and the timer instead.
    _current = q;
    const std::uint64_t start = now_ns();
    const auto budget = static_cast<std::uint64_t>(preempt_period().count());
    std::uint64_t ran = 0;
    bool preempted = false;
    while (!q->runnable.empty()) {
        auto h = q->runnable.front();
        q->runnable.pop_front();
        h.resume();
        ++ran;
        if (need_preempt() || (ran % slice_clock_check_every == 0 && now_ns() - start >= budget)) {
            preempted = !q->runnable.empty();
            break;
        }
    }
    const std::uint64_t elapsed = now_ns() - start;
    _current = nullptr;
    q->stats.runtime += nanoseconds(elapsed);
    q->stats.tasks_run += ran;
    ++q->stats.slices;
    q->stats.preempted += preempted ? 1 : 0;
    q->vruntime += elapsed * reference_shares / q->stats.shares;
    if (q->runnable.empty()) {
        q->active = false;
        --_active_count;
    }
    std::uint64_t min_v = UINT64_MAX;
    for (const auto& c : _queues) {
        if (c->active) {
            min_v = std::min(min_v, c->vruntime);
        }
    }
    if (min_v != UINT64_MAX) {
        _min_vruntime = std::max(_min_vruntime, min_v);
    }
    if (_cfg.stall_threshold.count() > 0 && elapsed > static_cast<std::uint64_t>(_cfg.stall_threshold.count())) {
        ++_stalls;
        spdlog::warn("{}: task queue {} held the CPU for {}us in one slice ({} task resumption{}; threshold {}us)",
                     _cfg.name, q->stats.name, elapsed / 1000, ran, ran == 1 ? "" : "s",
                     _cfg.stall_threshold.count() / 1000);
    }
    return true;
}

void executor::park() {
    // Callbacks run by a reap inside get_sqe() (a task filled the SQ) may
    // have deferred actions since the last poll_io(); their SQEs go out
    // with the wait below.
    for (internal::ring* r : {_latency.get(), _main.get(), _poll.get()}) {
        r->run_deferred();
    }
    if (_cfg.spin_before_park.count() > 0) {
        const std::uint64_t until = now_ns() + static_cast<std::uint64_t>(_cfg.spin_before_park.count());
        do {
            if (poll_io() || _active_count > 0 || stop_requested()) {
                // That poll_io() entered the main ring and reaped it, and
                // nothing has run since: the loop's next poll_io() need not
                // enter again. One io_uring_enter (~2 us here) less between
                // a request landing and its reply leaving.
                _main_fresh = true;
                return;
            }
        } while (now_ns() < until);
    }
    // The poll ring cannot wake a sleeper: while it has operations in flight,
    // keep polling instead of sleeping.
    if (_poll->in_flight() > 0) {
        return;
    }
    arm_eventfd_read();
    if (_latency->needs_wake_link()) {
        arm_latency_poll();
    }
    _latency->submit();
    _sleeping.exchange(1, std::memory_order_acq_rel);  // see wake()
    bool work = stop_requested() || need_preempt() || _main->has_work() || _active_count > 0;
    for (work_source* s : _sources) {
        work = work || s->has_work();
    }
    if (!work) {
        ++_parks;
        _main->submit_and_wait();
        _main_fresh = true;
    }
    // An RMW, not a plain store: wake()'s argument needs every write to
    // _sleeping to be an RMW, so that each reads the one before it and the
    // writes form one release sequence. A relaxed store would start a new
    // one, and a waker whose RMW read it would synchronise with nothing the
    // sleeper did before. Harmless on x86 (stores are ordered anyway), not
    // on ARM.
    _sleeping.exchange(0, std::memory_order_acq_rel);
}

void executor::run_until(const bool& done) {
    executor* previous = t_current;
    t_current = this;
    while (!done && !stop_requested()) {
        poll_io();
        // Run until nothing is runnable, then go straight to park(): its
        // wait submits what the tasks queued and returns at once if that
        // (or anything else) completed, so a request/response round trip
        // costs two io_uring_enter calls (submit+wait, wait), not four.
        while (run_one_slice()) {
            if (_active_count > 0) {
                poll_io();
            }
        }
        if (done || stop_requested()) {
            break;
        }
        park();
    }
    t_current = previous;
}

void executor::run() {
    const bool never = false;
    run_until(never);
}

void executor::drain_for_shutdown() {
    // Cancel everything in flight on every ring and wait for the final CQEs,
    // so that no completion can land in a coroutine frame destroyed below.
    // Callbacks still run (they only mark state and queue handles); nothing
    // is resumed.
    const std::uint64_t deadline =
        now_ns() + static_cast<std::uint64_t>(std::chrono::nanoseconds(shutdown_drain_timeout).count());
    for (internal::ring* r : {_latency.get(), _main.get(), _poll.get()}) {
        if (!r) {
            continue;
        }
        if (r->in_flight() > 0) {
            io_uring_sqe* sqe = r->get_sqe();
            io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
            r->track(sqe, nullptr);
        }
        while (r->in_flight() > 0 && now_ns() < deadline) {
            r->submit();
            if (r->reap() == 0) {
                r->wait_for_completion(1ms);
            }
        }
        if (r->in_flight() > 0) {
            spdlog::warn("{}: {} ring still has {} operations in flight at shutdown", _cfg.name,
                         internal::to_string(r->kind()), r->in_flight());
        }
        r->run_deferred(true);
    }
    for (auto& q : _queues) {
        q->runnable.clear();
    }
}

}  // namespace shardd
