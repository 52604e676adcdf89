#pragma once
// Starting executors on threads: executor_builder for one, executor_pool for
// one per CPU of a set, connected by a shard_mesh.
//
//   auto pool = executor_pool::start(cpus, executor_builder().name("shardd"),
//                                    [](unsigned shard) -> task<> { ... });
//   ...
//   (*pool)->stop();   // or join() to wait for every main task to return

#include "reactor/cpu_set.hh"
#include "reactor/executor.hh"
#include "reactor/shard_mesh.hh"

#include <barrier>
#include <functional>
#include <latch>
#include <mutex>
#include <optional>
#include <thread>

namespace shardd {

class executor_builder {
public:
    executor_builder& pin_to_cpu(unsigned cpu) {
        _cpu = cpu;
        return *this;
    }
    // Thread name prefix; the thread is called "NAME/ID" (15 characters at
    // most, the kernel's limit for comm).
    executor_builder& name(std::string n) {
        _cfg.name = std::move(n);
        return *this;
    }
    executor_builder& backend(backend_choice b) {
        _cfg.backend = b;
        return *this;
    }
    executor_builder& io_memory(std::size_t bytes) {
        _cfg.io_memory = bytes;
        return *this;
    }
    executor_builder& ring_entries(unsigned n) {
        _cfg.ring_entries = n;
        return *this;
    }
    executor_builder& spin_before_park(nanoseconds d) {
        _cfg.spin_before_park = d;
        return *this;
    }
    executor_builder& preempt_timer(nanoseconds d) {
        _cfg.preempt_timer = d;
        return *this;
    }
    executor_builder& stall_threshold(nanoseconds d) {
        _cfg.stall_threshold = d;
        return *this;
    }

    // Starts one executor on a thread of its own, named name(), pinned to
    // pin_to_cpu() if given (before it allocates anything), running `main`.
    // The returned pool of one is stopped and joined like any other.
    expected<std::unique_ptr<class executor_pool>, std::string> spawn(std::function<task<void>()> main) const;

    const executor_config& config() const noexcept { return _cfg; }
    std::optional<unsigned> cpu() const noexcept { return _cpu; }

private:
    executor_config _cfg;
    std::optional<unsigned> _cpu;
};

using shard_main = std::function<task<void>(unsigned shard)>;

class executor_pool {
public:
    // Starts one executor per CPU in `cpus`, shard i on the i-th CPU. Each
    // thread pins itself before it allocates anything, then creates its
    // executor. If any shard fails to start, every shard is stopped and the
    // error says which shard and CPU failed; no thread is left running.
    static expected<std::unique_ptr<executor_pool>, std::string> start(const cpu_set& cpus,
                                                                       const executor_builder& tmpl, shard_main main);
    ~executor_pool();  // stop() and join
    executor_pool(const executor_pool&) = delete;
    executor_pool& operator=(const executor_pool&) = delete;

    std::size_t size() const noexcept { return _threads.size(); }
    // Asks every shard to stop; returns at once. Thread-safe.
    void request_stop();
    // Waits until every shard's main task has returned (or was stopped),
    // then stops the shards and joins their threads.
    void join();
    // Stops every shard now and joins their threads; pending tasks are
    // cancelled and destroyed.
    void stop();
    // Errors (exceptions) from shard main tasks, "shard N: what" each.
    const std::vector<std::string>& errors() const noexcept { return _errors; }

private:
    friend class executor_builder;
    static expected<std::unique_ptr<executor_pool>, std::string>
    start_impl(const std::vector<std::optional<unsigned>>& placement, const executor_builder& tmpl, shard_main main,
               bool numbered_names);
    executor_pool() = default;
    shard_main _main;
    std::unique_ptr<shard_mesh> _mesh;
    std::vector<std::thread> _threads;
    // Published while a shard's executor exists; guarded by _lock, which
    // request_stop() holds while it writes their eventfds.
    std::mutex _lock;
    std::vector<executor*> _executors;
    std::vector<std::string> _errors;
    std::unique_ptr<std::latch> _mains_done;
    std::unique_ptr<std::barrier<>> _all_stopped;
};

}  // namespace shardd
