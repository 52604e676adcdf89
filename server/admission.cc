#include "server/admission.hh"

#include "server/proxy/proxy_protocol.hh"

#include "reactor/io.hh"
#include "reactor/net.hh"

#include <cerrno>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

namespace shardd::server {

namespace {

namespace pp = proxy_protocol;

bool has_limits(const config::listener_config& cfg) noexcept {
    return cfg.max_connections_per_source != 0 || cfg.connection_rate_per_source != 0;
}

// A refused connection's access-log line (the client as judged).
void log_refused(shard_state& sh, const listener_state& l, const socket_address* client, std::string_view why) {
    if (!sh.access) {
        return;
    }
    access_record r;
    r.listener = l.cfg->name;
    if (client) {
        r.client = *client;
    }
    r.end = why;
    sh.access->record(r);
}

// The ACLs and limits on `client`. False when refused (counted, logged).
bool judge(shard_state& sh, listener_state& l, const socket_address& client, std::unique_ptr<admitted>& out) {
    const config::listener_config& cfg = *l.cfg;
    listener_counters& mine = l.shared->per_shard[sh.id];
    if (config::any_contains(cfg.deny, client) || (!cfg.allow.empty() && !config::any_contains(cfg.allow, client))) {
        mine.denied.add();
        log_refused(sh, l, &client, ended::denied);
        return false;
    }
    if (!has_limits(cfg) || !l.shared->sources) {
        return true;
    }
    source_table& table = *l.shared->sources;
    admission a = table.admit(client, cfg.max_connections_per_source, cfg.connection_rate_per_source, table.now_ms());
    switch (a.result) {
    case admission::admitted: break;
    case admission::over_connections:
    case admission::over_rate:
        mine.source_limited.add();
        log_refused(sh, l, &client, ended::source_limit);
        return false;
    case admission::table_full:
        mine.source_table_full.add();
        if (!l.source_table_full_logged) {
            l.source_table_full_logged = true;
            spdlog::warn("listener {}: the per-source table ({} slots) is full; new sources are admitted uncounted "
                         "until it has room (counted as source_table_full)",
                         cfg.name, table.slots());
        }
        return true;
    }
    if (a.ticket) {
        if (!out) {
            out = std::make_unique<admitted>();
        }
        out->ticket = std::move(a.ticket);
    }
    return true;
}

// While the header is awaited: what the idle sweep and the drain abort.
class header_wait final : public served_connection {
public:
    void abort() noexcept override { stop.request_abort(); }
    std::uint64_t activity() const noexcept override { return 0; }
    abort_source stop;
};

// Refuses for the header's sake: counted, logged (rate-limited), closed.
bool header_refused(shard_state& sh, listener_state& l, const socket_address* peer, std::string_view why) {
    l.shared->per_shard[sh.id].proxy_rejected.add();
    if (sh.log->allow()) {
        const std::uint64_t left_out = sh.log->take_suppressed();
        spdlog::warn("listener {}: PROXY header from {}: {}; closed{}", l.cfg->name,
                     peer ? peer->to_string() : std::string("?"), why,
                     left_out ? " (" + std::to_string(left_out) + " similar lines left out)" : std::string());
    }
    log_refused(sh, l, peer, ended::proxy_header);
    return false;
}

}  // namespace

bool admits_at_accept(const config::listener_config& cfg) noexcept {
    return !cfg.accept_proxy && (!cfg.allow.empty() || !cfg.deny.empty() || has_limits(cfg));
}

bool admit_at_accept(shard_state& sh, listener_state& l, int fd, std::unique_ptr<admitted>& out) {
    auto peer = peer_address(fd);
    if (!peer) {
        return true;  // reset already: the connection ends by itself, with nothing to judge
    }
    return judge(sh, l, *peer, out);
}

task<bool> admit_proxied(shard_state& sh, listener_state& l, connection_guard& guard, std::unique_ptr<admitted>& out) {
    const int fd = guard.fd();
    const auto peer = peer_address(fd);
    if (!peer) {
        co_return false;  // reset before we looked: nothing to log
    }
    if (!config::any_contains(l.cfg->proxy_trusted, *peer)) {
        co_return header_refused(sh, l, &*peer, "not in proxy_trusted");
    }
    header_wait wait;
    guard.link(wait);
    const auto deadline = std::chrono::steady_clock::now() + l.cfg->proxy_timeout;
    std::string buf(max_proxy_header, '\0');
    std::size_t have = 0;
    pp::parse_result r;
    std::string_view failure;
    while (true) {
        // Peek: bytes past the header stay in the socket for echo or proxy.
        // Bytes of a header not yet whole are consumed below, so each peek
        // waits for new ones (a trickle costs one wake-up per segment).
        const auto left = std::max<nanoseconds>(deadline - std::chrono::steady_clock::now(), nanoseconds(1000));
        char* at = buf.data() + have;
        const auto room = static_cast<std::uint32_t>(buf.size() - have);
        // The header usually came with the connection: one non-blocking
        // peek takes it without a trip through the ring (bench/
        // admission_cost: accept_proxy's cost over a plain listener went
        // from a median 5.5 to 3 us of CPU per connection, noisy).
        expected<std::uint32_t> n = unexpected{std::make_error_code(std::errc::resource_unavailable_try_again)};
        if (const ssize_t got = ::recv(fd, at, room, MSG_PEEK | MSG_DONTWAIT); got >= 0) {
            n = static_cast<std::uint32_t>(got);
        } else if (errno != EAGAIN) {
            n = unexpected{errno_code(errno)};
        } else {
            auto peek = recv_peek(fd, at, room).with_timeout(left).with_abort(wait.stop);
            n = co_await peek;
        }
        if (!n) {
            failure = n.error() == std::errc::timed_out            ? "not whole within proxy_timeout"
                      : n.error() == std::errc::operation_canceled ? "aborted"
                                                                   : "receive failed";
            break;
        }
        if (*n == 0) {
            failure = "the peer closed before the header was whole";
            break;
        }
        r = pp::parse(std::string_view(buf.data(), have + *n), max_proxy_header);
        // Take the header's bytes out of the socket: all that was peeked
        // while it is incomplete, exactly its own once it is whole.
        const std::size_t take = r.state == pp::parse_state::complete    ? r.consumed - have
                                 : r.state == pp::parse_state::need_more ? *n
                                                                         : 0;
        if (take > 0 && ::recv(fd, at, take, MSG_DONTWAIT) != static_cast<ssize_t>(take)) {
            failure = "receive failed";
            break;
        }
        have += take;
        if (r.state == pp::parse_state::error) {
            failure = r.reason;
            break;
        }
        if (r.state == pp::parse_state::complete) {
            break;
        }
    }
    // Still linked: the caller's link() takes the place over (a retiring
    // listener must not see its count drop to 0 in between).
    if (wait.stop.abort_requested() || !failure.empty()) {
        if (wait.stop.abort_requested()) {
            // The drain or the idle sweep: their reason stands.
            log_refused(sh, l, &*peer, guard.aborted_for());
            co_return false;
        }
        co_return header_refused(sh, l, &*peer, failure);
    }
    out->awaiting_header = false;
    if (!r.value.local && r.value.source && r.value.destination) {
        out->client = std::make_unique<socket_address>(*r.value.source);
        out->destination = std::make_unique<socket_address>(*r.value.destination);
    }
    co_return judge(sh, l, out->client ? *out->client : *peer, out);
}

}  // namespace shardd::server
