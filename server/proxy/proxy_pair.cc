#include "server/proxy/proxy_pair.hh"

#include "reactor/io.hh"
#include "reactor/net.hh"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

namespace shardd::server::proxy {

namespace {

enum direction { up = 0, down = 1 };

// Close with an RST rather than a FIN: how a reset travels on.
void set_linger_zero(int fd) {
    const linger lg{1, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

}  // namespace

proxy_pair::proxy_pair(shard_state& sh, listener_state& l, int client_fd, const admitted* adm)
    : _sh(sh), _l(l), _up_owner(l.upstream), _up(*_up_owner), _client_fd(client_fd), _adm(adm) {}

task<bool> proxy_pair::send_proxy_header(std::size_t i, const socket_address& client) {
    // The address the client connected to: the header's, or our socket's.
    std::optional<socket_address> dst;
    if (_adm && _adm->destination) {
        dst = *_adm->destination;
    } else if (auto local = local_address(_client_fd)) {
        dst = *local;
    }
    const bool known = client.family() != AF_UNSPEC && dst;
    const std::string header = _up.proxy_header(i, known ? &client : nullptr, dst ? &*dst : nullptr);
    // A fresh connection's send buffer takes a header of a few hundred
    // bytes at once: this never waits for the server.
    auto sent = co_await send_all(_server_fd.get(), std::as_bytes(std::span(header)));
    co_return sent.has_value();
}

void proxy_pair::abort() noexcept {
    _abort.request_abort();
    if (_waiter) {
        _waiter->wake.request_abort();
    }
    for (transit* t : _dir) {
        if (t) {
            t->abort();
        }
    }
}

std::uint64_t proxy_pair::activity() const noexcept {
    std::uint64_t a = _activity;
    for (const transit* t : _dir) {
        a += t ? t->activity() : 0;
    }
    return a;
}

task<bool> proxy_pair::wait_in_queue(std::int64_t& deadline_ns) {
    auto& totals = _up.totals();
    const std::int64_t now = steady_now_ns();
    const bool first = deadline_ns == 0;
    if (first) {
        deadline_ns = now + std::chrono::duration_cast<std::chrono::nanoseconds>(_up.cfg().queue_timeout).count();
    }
    _waiter.emplace();
    // A client woken before goes back to the front: it keeps its turn.
    if (!_up.enqueue(*_waiter, !first)) {
        totals.queue_full.add();
        _end = ended::queue_full;
        _waiter.reset();
        co_return false;
    }
    if (first) {
        totals.queued.add();
    }
    // Announced; now look again, so that a slot freed just before is not
    // missed (its closer may have seen no waiter).
    bool timed_out = false;
    if (!_up.has_capacity()) {
        sleep_op s =
            sleep_until(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline_ns)), _waiter->wake);
        timed_out = co_await s;
    }
    _up.dequeue(*_waiter);
    _waiter.reset();
    totals.queued_ns.add(static_cast<std::uint64_t>(std::max<std::int64_t>(0, steady_now_ns() - now)));
    if (_abort.abort_requested()) {
        co_return false;
    }
    if (timed_out) {
        totals.queue_timeouts.add();
        _end = ended::queue_timeout;
        co_return false;
    }
    co_return true;
}

task<std::optional<std::size_t>> proxy_pair::connect_upstream() {
    const auto& cfg = _up.cfg();
    socket_address client;
    if (_adm && _adm->client) {
        client = *_adm->client;  // from the PROXY header
    } else if (auto peer = peer_address(_client_fd)) {
        client = *peer;
    }
    std::vector<bool> tried(_up.size(), false);
    std::int64_t queue_deadline = 0;
    std::uint32_t attempt = 0;
    while (attempt <= cfg.retries && !_abort.abort_requested()) {
        pick_result p = _up.pick(client, tried);
        if (p.what == pick_result::all_down && attempt > 0) {
            // Every server tried once: a retry may go to one again (a pool
            // of one server retries that server).
            std::fill(tried.begin(), tried.end(), false);
            p = _up.pick(client, tried);
        }
        if (p.what == pick_result::all_full) {
            // Servers at their max_connections: wait for a slot (a wait is
            // not a try).
            const bool woken = co_await wait_in_queue(queue_deadline);
            if (!woken) {
                co_return std::nullopt;
            }
            continue;
        }
        if (p.what == pick_result::all_down) {
            break;
        }
        const std::size_t i = p.index;
        tried[i] = true;
        if (attempt++ > 0) {
            _up.totals().retries.add();
        }
        const socket_address& addr = _up.address(i);
        auto fd = tcp_socket(addr.family());
        if (!fd) {
            _up.close(i);
            _up.failed(i, fd.error());
            continue;
        }
        if (_l.cfg->nodelay) {
            set_nodelay(fd->get(), true);
        }
        const int raw = fd->get();
        auto connecting = connect_op(raw, addr).with_timeout(cfg.connect_timeout).with_abort(_abort);
        auto r = co_await connecting;
        if (r) {
            _up.connected(i);
            _server_address = addr;
            _server_fd = std::move(*fd);
            // A coroutine frame per connection only where a header goes out.
            bool header_sent = true;
            if (_up.proxy_protocol(i) != config::proxy_protocol_version::none) {
                header_sent = co_await send_proxy_header(i, client);
            }
            if (!header_sent) {
                // The server reset before taking a few hundred bytes: the
                // client ends as after a reset, not retried (the server
                // did take the connection).
                _up.close(i);
                _server_fd.reset();
                _up.totals().resets.add();
                _end = ended::server_rst;
                co_return std::nullopt;
            }
            co_return i;
        }
        _up.close(i);
        if (r.error() == std::errc::operation_canceled && _abort.abort_requested()) {
            break;
        }
        _up.failed(i, r.error());
    }
    if (!_abort.abort_requested()) {
        _up.totals().no_server.add();
        _end = ended::no_server;
    }
    co_return std::nullopt;
}

task<void> proxy_pair::half_close_timer() {
    sleep_op s = sleep_for(_l.cfg->half_close_timeout, _timer_stop);
    if (co_await s) {
        _up.totals().half_close_timeouts.add();
        _end = ended::half_close_timeout;
        abort();
    }
}

task<void> proxy_pair::pump(transit& t, int out_fd, int which) {
    const transit_end end = co_await t.run();
    _ended[which] = true;
    // The first end of the pair says how it ended; an FIN first, then a
    // half-close timeout, says the timeout.
    if (_end.empty()) {
        const bool from_client = which == up;  // `t` receives from the client
        switch (end) {
        case transit_end::closed: _end = from_client ? ended::client_fin : ended::server_fin; break;
        case transit_end::recv_error: _end = from_client ? ended::client_rst : ended::server_rst; break;
        case transit_end::send_error: _end = from_client ? ended::server_rst : ended::client_rst; break;
        case transit_end::protocol_error: _end = ended::protocol_error; break;
        case transit_end::aborted: break;
        }
    }
    transit* other = _dir[1 - which];
    switch (end) {
    case transit_end::closed:
        // Everything the sender sent went out: pass its FIN on.
        (void)shutdown_socket(out_fd, SHUT_WR);
        if (!_ended[1 - which] && _l.cfg->half_close_timeout.count() > 0 && !_timer) {
            _timer.emplace(executor::current()->spawn(half_close_timer()));
        }
        break;
    case transit_end::recv_error:
    case transit_end::send_error:
    case transit_end::protocol_error:
        if (!_reset) {
            _reset = true;
            _up.totals().resets.add();
        }
        other->abort();
        break;
    case transit_end::aborted: break;
    }
    if (_ended[0] && _ended[1]) {
        _timer_stop.request_abort();
    }
}

task<void> proxy_pair::run() {
    const std::optional<std::size_t> server = co_await connect_upstream();
    if (!server) {
        co_return;  // counted where it failed
    }
    struct close_on_exit {
        upstream_local& up;
        std::size_t i;
        ~close_on_exit() { up.close(i); }
    } opened{_up, *server};

    const int server_fd = _server_fd.get();
    transit_options opts;
    opts.max_pending = _l.cfg->max_pending;
    opts.splice = _l.cfg->splice;
    transit to_server(_client_fd, server_fd, *_sh.transit, opts);
    transit to_client(server_fd, _client_fd, *_sh.transit, opts);
    _dir[up] = &to_server;
    _dir[down] = &to_client;
    if (_abort.abort_requested()) {
        // Aborted between the connect and now: end at once.
        to_server.abort();
        to_client.abort();
    }
    executor* ex = executor::current();
    auto a = ex->spawn(pump(to_server, server_fd, up));
    auto b = ex->spawn(pump(to_client, _client_fd, down));
    co_await a;
    co_await b;
    _timer_stop.request_abort();
    if (_timer) {
        co_await *_timer;
    }
    _activity += to_server.activity() + to_client.activity();
    _up.counters(*server).bytes_to.add(to_server.bytes_sent());
    _up.counters(*server).bytes_from.add(to_client.bytes_sent());
    _from_client = to_server.bytes_received();
    _to_client = to_client.bytes_sent();
    _dir[up] = _dir[down] = nullptr;
    if (_reset) {
        set_linger_zero(_client_fd);
        set_linger_zero(server_fd);
    }
    // Both transits left nothing in the kernel: the server socket closes
    // here, the client's with the caller's guard.
    _server_fd.reset();
}

namespace {

// The pair's line, after its end: not in serve()'s frame (see the echo's
// log_echo in shard_service.cc).
void log_pair(shard_state& sh, const listener_state& l, const access_start& started, const proxy_pair& pair,
              std::string_view aborted_for) {
    access_record r = started.record(l.cfg->name);
    r.server = pair.server();
    r.bytes_from_client = pair.bytes_from_client();
    r.bytes_to_client = pair.bytes_to_client();
    r.end = !pair.end().empty() ? pair.end() : !aborted_for.empty() ? aborted_for : ended::shutdown;
    sh.access->record(r);
}

}  // namespace

task<void> serve(shard_state& sh, listener_state& l, owned_fd fd, connection_slot slot, std::unique_ptr<admitted> adm) {
    connection_guard guard(sh, l, std::move(fd), std::move(slot));
    if (adm && adm->awaiting_header) {
        const bool admitted = co_await admit_proxied(sh, l, guard, adm);
        if (!admitted) {
            co_return;
        }
    }
    if (l.cfg->nodelay) {
        set_nodelay(guard.fd(), true);
    }
    const access_start started(sh.access.get(), guard.fd(), adm ? adm->client.get() : nullptr);
    proxy_pair pair(sh, l, guard.fd(), adm.get());
    guard.link(pair);
    co_await pair.run();
    guard.unlink();
    if (sh.access) {
        log_pair(sh, l, started, pair, guard.aborted_for());
    }
}

}  // namespace shardd::server::proxy
