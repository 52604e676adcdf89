#include "server/proxy/upstream.hh"

#include <cmath>
#include <cstring>
#include <netinet/in.h>
#include <spdlog/spdlog.h>

namespace shardd::server::proxy {

namespace {

std::uint64_t mix64(std::uint64_t x) noexcept {  // splitmix64's finaliser
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

// The client's address without its port: one client machine, one server.
std::uint64_t hash_host(const socket_address& a) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
    auto eat = [&](const void* p, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) {
            h = (h ^ static_cast<const unsigned char*>(p)[i]) * 0x100000001b3ULL;
        }
    };
    if (a.family() == AF_INET) {
        eat(&reinterpret_cast<const sockaddr_in*>(a.get())->sin_addr, sizeof(in_addr));
    } else {
        eat(&reinterpret_cast<const sockaddr_in6*>(a.get())->sin6_addr, sizeof(in6_addr));
    }
    return h;
}

std::string ns_to_string(std::int64_t ns) { return config::format_duration(std::chrono::nanoseconds(ns)); }

}  // namespace

std::int64_t steady_now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

upstream_shared::upstream_shared(const config::upstream_config& c)
    : cfg(&c), servers(std::make_unique<server_shared[]>(c.servers.size())) {}

upstream_local::upstream_local(upstream_shared& shared, unsigned shard_id)
    : _shared(shared), _current(shared.cfg->servers.size(), 0), _rng(0x5eed + shard_id),
      _counters(std::make_unique<server_counters[]>(shared.cfg->servers.size())) {
    _eligible.reserve(size());
    // Start each shard's round at a different server.
    std::vector<std::size_t> all(size());
    for (std::size_t i = 0; i < all.size(); ++i) {
        all[i] = i;
    }
    for (unsigned k = 0; k < shard_id % size(); ++k) {
        (void)pick_round_robin(all);
    }
}

bool upstream_local::down(std::size_t i, std::int64_t now_ns) const noexcept {
    return _shared.servers[i].down_until.load(std::memory_order_relaxed) > now_ns;
}

std::optional<std::size_t> upstream_local::pick(const socket_address& client, const std::vector<bool>& tried) {
    const std::int64_t now = steady_now_ns();
    _eligible.clear();
    for (std::size_t i = 0; i < size(); ++i) {
        if (!(i < tried.size() && tried[i]) && !down(i, now)) {
            _eligible.push_back(i);
        }
    }
    if (_eligible.empty()) {
        return std::nullopt;
    }
    switch (cfg().balance) {
    case config::balance_policy::round_robin: return pick_round_robin(_eligible);
    case config::balance_policy::least_conn: return pick_least_conn(_eligible);
    case config::balance_policy::random_two: return pick_random_two(_eligible);
    case config::balance_policy::source_hash: return pick_source_hash(client, _eligible);
    }
    return pick_round_robin(_eligible);
}

// nginx's smooth weighted round robin: every pick raises each eligible
// server by its weight and lowers the chosen one by the total, so weights
// 5:1:1 give a b a c a a a rather than a a a a a b c.
std::optional<std::size_t> upstream_local::pick_round_robin(const std::vector<std::size_t>& eligible) {
    std::int64_t total = 0;
    std::optional<std::size_t> best;
    for (std::size_t i : eligible) {
        const std::int64_t w = cfg().servers[i].weight;
        _current[i] += w;
        total += w;
        if (!best || _current[i] > _current[*best]) {
            best = i;
        }
    }
    _current[*best] -= total;
    return best;
}

// Fewest open connections per unit of weight, over all shards; ties go
// round robin, so that an idle pool still spreads by weight.
std::optional<std::size_t> upstream_local::pick_least_conn(const std::vector<std::size_t>& eligible) {
    std::vector<std::size_t> ties;
    std::uint64_t best_active = 0;
    std::uint64_t best_weight = 1;
    for (std::size_t i : eligible) {
        const std::uint64_t a = _shared.servers[i].active.load(std::memory_order_relaxed);
        const std::uint64_t w = cfg().servers[i].weight;
        if (ties.empty() || a * best_weight < best_active * w) {
            ties.assign(1, i);
            best_active = a;
            best_weight = w;
        } else if (a * best_weight == best_active * w) {
            ties.push_back(i);
        }
    }
    return ties.size() == 1 ? ties[0] : pick_round_robin(ties);
}

// Two servers drawn at random by weight; the one with fewer connections
// per unit of weight wins ("the power of two choices").
std::optional<std::size_t> upstream_local::pick_random_two(const std::vector<std::size_t>& eligible) {
    auto draw = [&](std::optional<std::size_t> skip) {
        std::uint64_t total = 0;
        for (std::size_t i : eligible) {
            total += i == skip ? 0 : cfg().servers[i].weight;
        }
        std::uint64_t r = std::uniform_int_distribution<std::uint64_t>(0, total - 1)(_rng);
        for (std::size_t i : eligible) {
            const std::uint64_t w = i == skip ? 0 : cfg().servers[i].weight;
            if (r < w) {
                return i;
            }
            r -= w;
        }
        return eligible.back();
    };
    const std::size_t a = draw(std::nullopt);
    if (eligible.size() == 1) {
        return a;
    }
    const std::size_t b = draw(a);
    const std::uint64_t la = _shared.servers[a].active.load(std::memory_order_relaxed) * cfg().servers[b].weight;
    const std::uint64_t lb = _shared.servers[b].active.load(std::memory_order_relaxed) * cfg().servers[a].weight;
    return lb < la ? b : a;
}

// Weighted rendezvous hashing: each server scores weight / -ln(u), with u
// uniform in (0, 1) from a hash of (client host, server); the highest wins.
// A server's clients stay with it; when it is down only they move.
std::optional<std::size_t> upstream_local::pick_source_hash(const socket_address& client,
                                                            const std::vector<std::size_t>& eligible) {
    const std::uint64_t h = hash_host(client);
    std::optional<std::size_t> best;
    double best_score = 0;
    for (std::size_t i : eligible) {
        const std::uint64_t x = mix64(h ^ mix64(i + 1));
        const double u = (static_cast<double>(x >> 11) + 0.5) / 9007199254740992.0;  // (0, 1)
        const double score = cfg().servers[i].weight / -std::log(u);
        if (!best || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

void upstream_local::open(std::size_t i) noexcept { _shared.servers[i].active.fetch_add(1, std::memory_order_relaxed); }

void upstream_local::close(std::size_t i) noexcept {
    _shared.servers[i].active.fetch_sub(1, std::memory_order_relaxed);
}

void upstream_local::connected(std::size_t i) {
    _counters[i].connections.add();
    server_shared& s = _shared.servers[i];
    if (s.fails.load(std::memory_order_relaxed) != 0) {
        s.fails.store(0, std::memory_order_relaxed);
    }
    // Only the shard that clears the mark logs the way back.
    if (s.down_until.load(std::memory_order_relaxed) != 0 && s.down_until.exchange(0) != 0) {
        spdlog::info("upstream {}: server {} is up again", cfg().name, address(i).to_string());
    }
}

void upstream_local::failed(std::size_t i, const std::error_code& ec) {
    if (ec == std::errc::connection_refused) {
        _counters[i].connect_refused.add();
    } else if (ec == std::errc::timed_out) {
        _counters[i].connect_timeouts.add();
    } else {
        _counters[i].connect_errors.add();
    }
    const std::uint32_t max_fails = cfg().max_fails;
    if (max_fails == 0) {
        return;
    }
    server_shared& s = _shared.servers[i];
    const std::int64_t now = steady_now_ns();
    const std::int64_t window = std::chrono::duration_cast<std::chrono::nanoseconds>(cfg().fail_timeout).count();
    std::int64_t start = s.window_start.load(std::memory_order_relaxed);
    if (now - start > window && s.window_start.compare_exchange_strong(start, now)) {
        s.fails.store(0, std::memory_order_relaxed);
    }
    const std::uint32_t n = s.fails.fetch_add(1) + 1;
    if (n < max_fails) {
        return;
    }
    const std::int64_t was = s.down_until.exchange(now + window);
    if (was <= now) {
        // Up (or its last mark expired) until now: this shard saw the
        // transition, and only this one logs it.
        spdlog::warn("upstream {}: server {} is down for {} after {} failed connect{} (last: {})", cfg().name,
                     address(i).to_string(), ns_to_string(window), n, n == 1 ? "" : "s", ec.message());
    }
}

}  // namespace shardd::server::proxy
