#include "server/admin/admin_server.hh"

#include "server/admin/endpoints.hh"
#include "server/logging.hh"

#include "reactor/abort_source.hh"
#include "reactor/accept_stream.hh"
#include "reactor/event.hh"
#include "reactor/executor.hh"
#include "reactor/io.hh"
#include "reactor/join_handle.hh"
#include "reactor/net.hh"

#include <cerrno>
#include <cstring>
#include <future>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace shardd::server::admin {

namespace {

// The admin thread's executor: one small ring, no registered memory (it
// does no fixed-buffer I/O), no preemption worth the name. It is not pinned:
// the scheduler puts it wherever there is room, away from nothing in
// particular; it sleeps between requests.
executor_config admin_executor_config() {
    executor_config c;
    c.name = "admin";
    c.ring_entries = 64;
    c.io_memory = 0;
    c.stall_threshold = std::chrono::milliseconds(0);
    return c;
}

struct admin_state {
    admin_sources src;
    abort_source stop;
    std::size_t connections = 0;
    event idle;  // set when `connections` drops to 0
};

// Sends all of `data` before `deadline`, or stops on an error or the stop.
task<bool> send_before(admin_state& st, int fd, std::string_view data, std::chrono::steady_clock::time_point deadline) {
    while (!data.empty()) {
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= std::chrono::steady_clock::duration::zero()) {
            co_return false;
        }
        auto op = send_some(fd, data.data(), static_cast<std::uint32_t>(std::min<std::size_t>(data.size(), 1u << 30)))
                      .with_timeout(left)
                      .with_abort(st.stop);
        auto n = co_await op;
        if (!n || *n == 0) {
            co_return false;
        }
        data.remove_prefix(*n);
    }
    co_return true;
}

task<void> serve_connection(admin_state& st, owned_fd fd) {
    struct count_guard {
        admin_state& st;
        ~count_guard() {
            if (--st.connections == 0) {
                st.idle.set();
            }
        }
    } guard{st};
    std::string in;
    char buf[4096];
    http_request_parser parser;
    while (!st.stop.abort_requested()) {
        // A request: an idle keep-alive connection may wait for its first
        // byte for keep_alive_timeout; from then on, the head must be whole
        // within header_timeout.
        auto deadline = std::chrono::steady_clock::now() + (in.empty() ? keep_alive_timeout : header_timeout);
        parse_result r = in.empty() ? parse_result{} : parser.parse(in);
        while (r.state == parse_state::incomplete) {
            const auto left = deadline - std::chrono::steady_clock::now();
            if (left <= std::chrono::steady_clock::duration::zero()) {
                co_return;
            }
            auto op = recv_some(fd.get(), buf, sizeof(buf)).with_timeout(left).with_abort(st.stop);
            auto n = co_await op;
            if (!n || *n == 0) {
                co_return;  // closed, reset, timed out or stopping
            }
            if (in.empty()) {
                deadline = std::chrono::steady_clock::now() + header_timeout;
            }
            in.append(buf, *n);
            r = parser.parse(in);
        }
        const auto send_deadline = std::chrono::steady_clock::now() + header_timeout;
        if (r.state == parse_state::error) {
            const std::string out = render(refusal(r.status, r.reason), false, false);
            (void)co_await send_before(st, fd.get(), out, send_deadline);
            (void)shutdown_socket(fd.get(), SHUT_WR);
            co_return;
        }
        const http_request& req = parser.request();
        const bool keep_alive = req.keep_alive && !st.stop.abort_requested();
        const std::string out = render(answer(req, st.src), req.method == "HEAD", keep_alive);
        in.erase(0, r.consumed);
        if (!co_await send_before(st, fd.get(), out, send_deadline) || !keep_alive) {
            co_return;
        }
    }
}

task<void> accept_loop(admin_state& st, int lfd) {
    accept_stream incoming(lfd, &st.stop);
    executor* ex = executor::current();
    while (true) {
        auto fd = co_await incoming.next();
        if (!fd) {
            if (fd.error() == std::errc::operation_canceled) {
                break;
            }
            // EMFILE and the like: the shards come first; try again later.
            sleep_op s = sleep_for(std::chrono::milliseconds(100), st.stop);
            co_await s;
            continue;
        }
        if (st.connections >= max_admin_connections) {
            // Answered without reading: the request never matters here.
            static const std::string busy = render(refusal(503, "too many admin connections"), false, false);
            (void)::send(fd->get(), busy.data(), busy.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
            continue;
        }
        ++st.connections;
        st.idle.reset();
        (void)ex->spawn(serve_connection(st, std::move(*fd)));
    }
}

task<void> admin_main(admin_sources src, owned_fd listener, int stop_fd) {
    set_thread_label("admin");
    admin_state st{std::move(src), {}, 0, {}};
    st.idle.set();
    auto accepting = executor::current()->spawn(accept_loop(st, listener.get()));
    std::uint64_t v = 0;
    auto r = co_await read(stop_fd, &v, sizeof(v), 0);
    if (!r) {
        spdlog::error("admin: stop signal: {}", r.error().message());
    }
    st.stop.request_abort();
    co_await accepting;
    co_await st.idle.wait();
}

}  // namespace

expected<std::unique_ptr<admin_server>, std::string> admin_server::start(const socket_address& addr,
                                                                         admin_sources sources) {
    listen_options opts;
    opts.backlog = 64;
    opts.reuse_port = false;  // one admin socket; a second shardd on it must fail, not share
    auto l = listen_socket(addr, opts);
    if (!l) {
        return unexpected{"admin endpoint: cannot listen on " + addr.to_string() + ": " + l.error().message()};
    }
    auto bound = local_address(l->get());
    std::unique_ptr<admin_server> s(new admin_server());
    s->_address = bound ? *bound : addr;
    s->_stop_fd = eventfd(0, EFD_CLOEXEC);
    if (s->_stop_fd < 0) {
        return unexpected{std::string("admin endpoint: eventfd: ") + std::strerror(errno)};
    }
    // The executor is made on its own thread: its rings are single-issuer,
    // owned by the thread that creates them.
    std::promise<std::string> made;
    auto made_result = made.get_future();
    const int stop_fd = s->_stop_fd;
    s->_thread = std::thread([made = std::move(made), src = std::move(sources), fd = std::move(*l), stop_fd]() mutable {
        // In top and /proc: apart from the main thread, whose name it would
        // inherit.
        pthread_setname_np(pthread_self(), "shardd/admin");
        if (auto allowed = allowed_cpus()) {
            cpu_set spare;
            for (unsigned cpu : allowed->cpus()) {
                if (!src.shard_cpus.contains(cpu)) {
                    spare.add(cpu);
                }
            }
            if (!spare.empty()) {
                (void)set_current_thread_cpus(spare);  // best effort
            }
        }
        auto ex = executor::create(admin_executor_config());
        if (!ex) {
            made.set_value(ex.error().message);
            return;
        }
        made.set_value({});
        (*ex)->run(admin_main(std::move(src), std::move(fd), stop_fd));
    });
    if (std::string error = made_result.get(); !error.empty()) {
        s->_thread.join();
        return unexpected{"admin endpoint: " + error};
    }
    return s;
}

void admin_server::stop() {
    if (_thread.joinable()) {
        const std::uint64_t one = 1;
        if (::write(_stop_fd, &one, sizeof(one)) != sizeof(one)) {
            spdlog::error("admin: cannot signal the stop: {}", std::strerror(errno));
        }
        _thread.join();
    }
    if (_stop_fd >= 0) {
        close(_stop_fd);
        _stop_fd = -1;
    }
}

admin_server::~admin_server() { stop(); }

}  // namespace shardd::server::admin
