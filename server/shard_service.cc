#include "server/shard_service.hh"

#include "server/echo_connection.hh"

#include "reactor/buffer_ring.hh"
#include "reactor/event.hh"
#include "reactor/io.hh"
#include "reactor/net.hh"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd::server {

namespace {

using namespace std::chrono_literals;

// accept() out of file descriptors or memory: wait this long, doubling up
// to the maximum while it keeps failing. Each attempt costs one failed
// accept; at 1 s a saturated shard spends nothing measurable retrying, and
// it still picks up freed descriptors within a second.
constexpr nanoseconds accept_backoff_initial = 10ms;
constexpr nanoseconds accept_backoff_max = 1s;
// The idle sweep looks at every connection this many times per idle_timeout:
// a connection closes between 1 and 1 + 1/N idle_timeouts after its last byte.
constexpr unsigned idle_sweeps_per_timeout = 4;
// Provided-buffer group id of the shard's receive buffer ring.
constexpr std::uint16_t recv_buffer_group = 0;

// Errors accept(2) passes on from the new connection itself: the next
// connection may be fine, try again at once (accept(2), "Error handling").
bool transient_accept_error(const std::error_code& ec) {
    switch (ec.value()) {
    case ECONNABORTED:
    case EPROTO:
    case EPERM:
    case EINTR:
    case EAGAIN:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH: return true;
    default: return false;
    }
}

struct shard_state;

// A connection as the shard sees it: for the idle sweep and the drain.
struct connection_entry {
    echo_connection* conn = nullptr;
    connection_entry* prev = nullptr;
    connection_entry* next = nullptr;
    std::uint64_t seen_activity = 0;
    unsigned idle_sweeps = 0;
};

// One listener on this shard.
struct listener_state {
    const config::listener_config* cfg = nullptr;
    listener_shared* shared = nullptr;
    std::vector<int> fds;
    echo_options echo;
    connection_entry* head = nullptr;
    bool at_limit = false;
    // Cancelled at drain: the accept streams and back-off sleeps.
    std::vector<accept_stream*> streams;
    std::vector<sleep_op*> backoffs;
    sleep_op* sweep_sleep = nullptr;

    void link(connection_entry* e) {
        e->next = head;
        if (head) {
            head->prev = e;
        }
        head = e;
    }
    void unlink(connection_entry* e) {
        (e->prev ? e->prev->next : head) = e->next;
        if (e->next) {
            e->next->prev = e->prev;
        }
        e->prev = e->next = nullptr;
    }
};

struct shard_state {
    unsigned id = 0;
    const config::config* cfg = nullptr;
    shard_counters* counters = nullptr;
    std::unique_ptr<buffer_ring> buffers;
    std::vector<std::unique_ptr<listener_state>> listeners;
    std::size_t connections = 0;
    bool draining = false;
    event drained;  // draining and the last connection closed (or the deadline)

    void connection_closed() {
        --connections;
        if (draining && connections == 0) {
            drained.set();
        }
    }
    void shutdown_all() {
        for (auto& l : listeners) {
            for (auto* e = l->head; e; e = e->next) {
                ::shutdown(e->conn->fd(), SHUT_RDWR);
            }
        }
    }
};

task<void> serve(shard_state& sh, listener_state& l, int fd) {
    if (l.cfg->nodelay) {
        set_nodelay(fd, true);  // best effort: the echo still works without
    }
    echo_connection conn(fd, *sh.buffers, l.echo, *sh.counters);
    connection_entry entry;
    entry.conn = &conn;
    l.link(&entry);
    // Unlinked before the fd closes (its number may be reused at once by a
    // new connection, which the sweep must not shut down), or, when the
    // frame is destroyed at a forced stop, by this guard.
    struct unlink_on_exit {
        listener_state& l;
        connection_entry* e;
        ~unlink_on_exit() {
            if (e) {
                l.unlink(e);
            }
        }
    } unlink{l, &entry};

    const echo_end end = co_await conn.run();
    if (end == echo_end::closed) {
        // Everything the peer sent went back; now say we are done too.
        co_await shutdown_socket(fd, SHUT_WR);
    } else {
        sh.counters->errors.add();
    }
    l.unlink(std::exchange(unlink.e, nullptr));
    co_await close_socket(fd);
    sh.counters->closed.add();
    l.shared->connections.fetch_sub(1, std::memory_order_relaxed);
    sh.connection_closed();
}

task<void> accept_loop(shard_state& sh, listener_state& l, int lfd) {
    {
        accept_stream incoming(lfd);
        l.streams.push_back(&incoming);
        nanoseconds backoff{0};
        std::uint64_t backoffs_this_episode = 0;
        while (!sh.draining) {
            auto fd = co_await incoming.next();
            if (!fd) {
                const std::error_code ec = fd.error();
                if (ec == std::errc::operation_canceled) {
                    break;
                }
                if (transient_accept_error(ec)) {
                    continue;
                }
                // EMFILE, ENFILE, ENOBUFS, ENOMEM, or something unexpected:
                // never retry at once.
                backoff = backoff.count() == 0 ? accept_backoff_initial : std::min(backoff * 2, accept_backoff_max);
                sh.counters->accept_backoffs.add();
                if (backoffs_this_episode++ == 0) {
                    spdlog::warn("listener {}: accept: {}; retrying with back-off up to {} ms", l.cfg->name,
                                 ec.message(),
                                 std::chrono::duration_cast<std::chrono::milliseconds>(accept_backoff_max).count());
                }
                sleep_op pause = sleep_for(backoff);
                l.backoffs.push_back(&pause);
                co_await pause;
                std::erase(l.backoffs, &pause);
                continue;
            }
            if (backoffs_this_episode > 0) {
                spdlog::info("listener {}: accepting again after {} back-off{}", l.cfg->name, backoffs_this_episode,
                             backoffs_this_episode == 1 ? "" : "s");
                backoffs_this_episode = 0;
            }
            backoff = nanoseconds{0};
            // max_connections: accept and close at once (the client sees EOF
            // straight away rather than hanging in the backlog), counted.
            if (l.shared->connections.fetch_add(1, std::memory_order_relaxed) >= l.cfg->max_connections) {
                l.shared->connections.fetch_sub(1, std::memory_order_relaxed);
                sh.counters->refused.add();
                ::close(*fd);
                if (!l.at_limit) {
                    l.at_limit = true;
                    spdlog::warn("listener {}: max_connections ({}) reached; closing new connections", l.cfg->name,
                                 l.cfg->max_connections);
                }
                continue;
            }
            l.at_limit = false;
            sh.counters->accepted.add();
            ++sh.connections;
            // Detached: the connection ends by itself; the drain counts it.
            (void)executor::current()->spawn(serve(sh, l, *fd));
        }
        std::erase(l.streams, &incoming);
    }
    co_await close_socket(lfd);
}

// Closes connections with no byte in either direction for idle_timeout.
task<void> idle_sweep(shard_state& sh, listener_state& l) {
    const nanoseconds period = l.cfg->idle_timeout / idle_sweeps_per_timeout;
    while (true) {
        sleep_op tick = sleep_for(period);
        l.sweep_sleep = &tick;
        const bool expired = co_await tick;
        l.sweep_sleep = nullptr;
        if (!expired) {
            co_return;
        }
        for (auto* e = l.head; e; e = e->next) {
            const std::uint64_t a = e->conn->activity();
            if (a != e->seen_activity) {
                e->seen_activity = a;
                e->idle_sweeps = 0;
            } else if (++e->idle_sweeps >= idle_sweeps_per_timeout) {
                // The connection's receive ends (EOF) and it closes itself.
                ::shutdown(e->conn->fd(), SHUT_RDWR);
                sh.counters->idle_closed.add();
            }
        }
    }
}

task<void> deadline(nanoseconds d, event& e, sleep_op*& slot) {
    sleep_op s = sleep_for(d);
    slot = &s;
    const bool expired = co_await s;
    slot = nullptr;
    if (expired) {
        e.set();
    }
}

task<void> drain(shard_state& sh, std::vector<join_handle<void>>& accepts) {
    sh.draining = true;
    for (auto& l : sh.listeners) {
        for (auto* s : l->streams) {
            s->cancel();
        }
        for (auto* b : l->backoffs) {
            b->cancel();
        }
    }
    for (auto& a : accepts) {
        co_await a;
    }
    if (sh.connections > 0) {
        spdlog::info("draining: {} connection{} open, closing them in at most {}", sh.connections,
                     sh.connections == 1 ? "" : "s", config::format_duration(sh.cfg->runtime.shutdown_timeout));
        sleep_op* timer = nullptr;
        auto timeout = executor::current()->spawn(deadline(sh.cfg->runtime.shutdown_timeout, sh.drained, timer));
        co_await sh.drained.wait();
        if (sh.connections > 0) {
            spdlog::warn("shutdown_timeout: closing {} connection{}", sh.connections, sh.connections == 1 ? "" : "s");
            sh.drained.reset();
            sh.shutdown_all();
            co_await sh.drained.wait();
        }
        if (timer) {
            timer->cancel();
        }
        co_await timeout;
    }
    for (auto& l : sh.listeners) {
        if (l->sweep_sleep) {
            l->sweep_sleep->cancel();
        }
    }
}

}  // namespace

std::string shard_counters::summary() const {
    return "connections accepted " + std::to_string(accepted.get()) + ", closed " + std::to_string(closed.get()) +
           ", refused " + std::to_string(refused.get()) + ", idle-closed " + std::to_string(idle_closed.get()) +
           ", errors " + std::to_string(errors.get()) + "; bytes in " + std::to_string(bytes_in.get()) + ", out " +
           std::to_string(bytes_out.get()) + "; ENOBUFS " + std::to_string(enobufs.get()) + ", backpressure pauses " +
           std::to_string(backpressure_pauses.get()) + ", accept back-offs " + std::to_string(accept_backoffs.get());
}

task<void> run_shard(shard_plan plan) {
    shard_state sh;
    sh.id = plan.id;
    sh.cfg = plan.cfg;
    sh.counters = plan.counters;
    executor* ex = executor::current();
    const auto& rt = plan.cfg->runtime;
    auto buffers = buffer_ring::create(ex->main_ring(), recv_buffer_group, rt.recv_buffers, rt.recv_buffer_size);
    if (!buffers) {
        *plan.error = "cannot set up the receive buffer ring (" + std::to_string(rt.recv_buffers) + " x " +
                      config::format_size(rt.recv_buffer_size) + "): " + buffers.error().message();
        for (auto& b : *plan.listeners) {
            for (int fd : b.fds[plan.id]) {
                ::close(fd);
            }
            b.fds[plan.id].clear();
        }
        plan.up->count_down();
        co_return;
    }
    sh.buffers = std::move(*buffers);

    std::vector<join_handle<void>> accepts;
    std::vector<join_handle<void>> sweeps;
    for (auto& b : *plan.listeners) {
        auto l = std::make_unique<listener_state>();
        l->cfg = b.cfg;
        l->shared = b.shared.get();
        l->fds = std::exchange(b.fds[plan.id], {});
        l->echo.protocol = b.cfg->protocol;
        l->echo.max_pending = b.cfg->max_pending;
        l->echo.max_message = b.cfg->max_message;
        sh.listeners.push_back(std::move(l));
    }
    for (auto& l : sh.listeners) {
        for (int fd : l->fds) {
            accepts.push_back(ex->spawn(accept_loop(sh, *l, fd)));
        }
        if (l->cfg->idle_timeout.count() > 0) {
            sweeps.push_back(ex->spawn(idle_sweep(sh, *l)));
        }
    }
    plan.up->count_down();

    std::uint64_t signalled = 0;
    auto r = co_await read(plan.drain_fd, &signalled, sizeof(signalled), 0);
    if (!r) {
        spdlog::error("drain signal: {}", r.error().message());
    }
    co_await drain(sh, accepts);
    for (auto& s : sweeps) {
        co_await s;
    }
    spdlog::info("drained: {}", sh.counters->summary());
    const std::uint64_t one = 1;
    if (::write(plan.done_fd, &one, sizeof(one)) != sizeof(one)) {
        spdlog::error("cannot tell the main thread this shard is done: {}", std::strerror(errno));
    }
}

}  // namespace shardd::server
