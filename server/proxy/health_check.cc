#include "server/proxy/health_check.hh"

#include "reactor/io.hh"
#include "reactor/join_handle.hh"
#include "reactor/net.hh"

#include <cstring>
#include <vector>

namespace shardd::server::proxy {

namespace {

using clock = std::chrono::steady_clock;

// Time left until `deadline`, at least 1 us (a linked timeout of 0 would
// never fire before the operation).
nanoseconds left(clock::time_point deadline) {
    return std::max<nanoseconds>(deadline - clock::now(), std::chrono::microseconds(1));
}

// One check. Returns "" when it passed, or why it failed.
// `request`: the PROXY header, if the server takes one, then hc.send.
task<std::string> check_once(const socket_address& addr, const config::health_check_config& hc,
                             const std::string& request, abort_source& stop) {
    const clock::time_point deadline = clock::now() + hc.timeout;
    auto fd = tcp_socket(addr.family());
    if (!fd) {
        co_return "socket: " + fd.error().message();
    }
    const int raw = fd->get();
    auto connecting = connect_op(raw, addr).with_timeout(left(deadline)).with_abort(stop);
    auto c = co_await connecting;
    if (!c) {
        co_return "connect: " + c.error().message();
    }
    std::size_t sent = 0;
    while (sent < request.size()) {
        auto send_op = send_some(raw, request.data() + sent, static_cast<std::uint32_t>(request.size() - sent))
                           .with_timeout(left(deadline))
                           .with_abort(stop);
        auto n = co_await send_op;
        if (!n) {
            co_return "send: " + n.error().message();
        }
        sent += *n;
    }
    // The reply, up to expect's length: a check reads no more than it
    // compares, so a server that answers with megabytes costs one packet.
    std::string got(hc.expect.size(), '\0');
    std::size_t have = 0;
    while (have < got.size()) {
        auto recv_op = recv_some(raw, got.data() + have, static_cast<std::uint32_t>(got.size() - have))
                           .with_timeout(left(deadline))
                           .with_abort(stop);
        auto n = co_await recv_op;
        if (!n) {
            co_return "receive: " + n.error().message();
        }
        if (*n == 0) {
            co_return "the server closed after " + std::to_string(have) + " of " + std::to_string(got.size()) +
                " expected bytes";
        }
        if (std::memcmp(got.data() + have, hc.expect.data() + have, *n) != 0) {
            co_return std::string("the reply does not start with the expected bytes");
        }
        have += *n;
    }
    co_return std::string();
}

task<void> check_loop(std::shared_ptr<upstream_local> up, std::size_t i, nanoseconds offset, abort_source& stop) {
    const auto& hc = up->cfg().health_check;
    const socket_address addr = up->address(i);
    const std::string request = up->proxy_header(i, nullptr, nullptr) + hc.send;
    clock::time_point next = clock::now() + offset;
    while (!stop.abort_requested()) {
        sleep_op wait = sleep_until(next, stop);
        if (!co_await wait) {
            break;
        }
        next = clock::now() + hc.interval;
        const std::string why = co_await check_once(addr, hc, request, stop);
        if (stop.abort_requested()) {
            break;  // cancelled, not failed
        }
        up->check_result(i, why.empty(), why);
    }
}

}  // namespace

unsigned checking_shard(std::string_view name, std::size_t i, std::size_t shards) noexcept {
    return static_cast<unsigned>((std::hash<std::string_view>{}(name) + i) % shards);
}

task<void> run_health_checks(std::shared_ptr<upstream_local> up, unsigned shard, std::shared_ptr<abort_source> stop) {
    const auto& cfg = up->cfg();
    const std::size_t shards = up->shared().shards;
    std::vector<std::size_t> mine;
    for (std::size_t i = 0; i < up->size(); ++i) {
        if (checking_shard(cfg.name, i, shards) == shard) {
            mine.push_back(i);
        }
    }
    std::vector<join_handle<void>> loops;
    for (std::size_t k = 0; k < mine.size(); ++k) {
        // The first server at once, the others spread over one interval.
        const auto n = static_cast<std::int64_t>(mine.size());
        const nanoseconds offset = cfg.health_check.interval * static_cast<std::int64_t>(k) / n;
        loops.push_back(executor::current()->spawn(check_loop(up, mine[k], offset, *stop)));
    }
    for (auto& l : loops) {
        co_await l;
    }
}

}  // namespace shardd::server::proxy
