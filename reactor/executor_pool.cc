#include "reactor/executor_pool.hh"

#include <future>
#include <pthread.h>
#include <spdlog/spdlog.h>

namespace shardd {

expected<std::unique_ptr<executor_pool>, std::string>
executor_pool::start(const cpu_set& cpus, const executor_builder& tmpl, shard_main main) {
    std::vector<std::optional<unsigned>> placement(cpus.cpus().begin(), cpus.cpus().end());
    return start_impl(placement, tmpl, std::move(main), true);
}

expected<std::unique_ptr<executor_pool>, std::string> executor_builder::spawn(std::function<task<void>()> main) const {
    return executor_pool::start_impl(
        {_cpu}, *this, [main = std::move(main)](unsigned) { return main(); }, false);
}

expected<std::unique_ptr<executor_pool>, std::string>
executor_pool::start_impl(const std::vector<std::optional<unsigned>>& placement, const executor_builder& tmpl,
                          shard_main main, bool numbered_names) {
    std::unique_ptr<executor_pool> pool(new executor_pool());
    const std::size_t n = placement.size();
    // Create spdlog's registry here, before the shards log concurrently. Its
    // lazy initialisation is a thread-safe static, but inside the
    // uninstrumented libspdlog, where ThreadSanitizer cannot see the guard.
    spdlog::default_logger_raw();
    pool->_mesh = std::make_unique<shard_mesh>(n);
    pool->_executors.assign(n, nullptr);
    pool->_errors.resize(n);
    // The pool keeps the callable: a coroutine lambda's captures live in its
    // closure object, which must outlive every shard's main task.
    pool->_main = std::move(main);

    // Start-up handshake: every thread reports its executor (or an error),
    // then waits for "go" — true to run, false to give up because a sibling
    // failed. The mesh needs every executor before any message can flow.
    std::vector<std::promise<expected<executor*, std::string>>> ready(n);
    pool->_mains_done = std::make_unique<std::latch>(static_cast<std::ptrdiff_t>(n));
    pool->_all_stopped = std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(n));
    std::promise<bool> go_promise;
    std::shared_future<bool> go = go_promise.get_future().share();

    for (std::size_t i = 0; i < n; ++i) {
        const std::optional<unsigned> cpu = placement[i];
        pool->_threads.emplace_back([&, i, cpu, go, p = pool.get()] {
            // Pin first: rings, buffers and the stack we touch from here on
            // come from this CPU's NUMA node.
            if (cpu) {
                if (auto ec = pin_current_thread(*cpu)) {
                    ready[i].set_value(unexpected{"shard " + std::to_string(i) + ": cannot pin to CPU " +
                                                  std::to_string(*cpu) + ": " + ec.message()});
                    return;
                }
            }
            const std::string thread_name =
                (numbered_names ? tmpl.config().name + "/" + std::to_string(i) : tmpl.config().name).substr(0, 15);
            pthread_setname_np(pthread_self(), thread_name.c_str());
            executor_config cfg = tmpl.config();
            cfg.name = "shard " + std::to_string(i);
            auto ex = executor::create(cfg);
            if (!ex) {
                ready[i].set_value(unexpected{"shard " + std::to_string(i) + ": " + ex.error().message});
                return;
            }
            p->_mesh->attach(static_cast<unsigned>(i), **ex);
            ready[i].set_value(ex->get());
            if (!go.get()) {
                return;
            }
            try {
                (*ex)->run(p->_main(static_cast<unsigned>(i)));
            } catch (const std::exception& e) {
                if (!(*ex)->stop_requested()) {
                    p->_errors[i] = "shard " + std::to_string(i) + ": " + e.what();
                }
            }
            p->_mains_done->count_down();
            // Keep serving cross-shard messages until the pool stops: other
            // shards may still talk to this one.
            (*ex)->run();
            // Nobody may send to (wake) an executor that is gone: wait until
            // every shard has left its loop, then destroy ours, here on its
            // own thread as SINGLE_ISSUER requires.
            p->_all_stopped->arrive_and_wait();
            // And nobody outside: request_stop() writes our eventfd under
            // this lock, so unpublish before the executor closes it.
            {
                std::lock_guard g(p->_lock);
                p->_executors[i] = nullptr;
            }
            ex->reset();
        });
    }

    std::string failure;
    for (std::size_t i = 0; i < n; ++i) {
        auto r = ready[i].get_future().get();
        if (r) {
            pool->_executors[i] = *r;
        } else if (failure.empty()) {
            failure = r.error();
        }
    }
    go_promise.set_value(failure.empty());
    if (!failure.empty()) {
        for (auto& t : pool->_threads) {
            t.join();
        }
        pool->_threads.clear();
        // Their executors are gone with them.
        std::fill(pool->_executors.begin(), pool->_executors.end(), nullptr);
        return unexpected{failure};
    }
    return pool;
}

executor_pool::~executor_pool() { stop(); }

void executor_pool::stop() {
    request_stop();
    for (auto& t : _threads) {
        t.join();
    }
    _threads.clear();
}

void executor_pool::request_stop() {
    std::lock_guard g(_lock);
    for (executor* ex : _executors) {
        if (ex) {
            ex->request_stop();
        }
    }
}

void executor_pool::join() {
    if (!_threads.empty()) {
        _mains_done->wait();
        request_stop();
    }
    for (auto& t : _threads) {
        if (t.joinable()) {
            t.join();
        }
    }
    _threads.clear();
}

}  // namespace shardd
