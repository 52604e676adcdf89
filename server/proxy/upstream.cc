#include "server/proxy/upstream.hh"
#include "server/proxy/proxy_protocol.hh"

#include "reactor/shard_mesh.hh"

#include <algorithm>
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

// Wakes one waiter (or all) of shard `s`'s queue, through the mesh. The
// message names the queue, not its upstream_local: by the time it runs
// there, a reload may have retired that local.
void wake_on(unsigned s, shard_queue_state* q, bool all) {
    auto one = [](void* p) {
        if (upstream_local* l = static_cast<shard_queue_state*>(p)->local.load()) {
            l->wake_one();
        }
    };
    auto every = [](void* p) {
        if (upstream_local* l = static_cast<shard_queue_state*>(p)->local.load()) {
            l->wake_all();
        }
    };
    shard_mesh::current()->send(s, {all ? +every : +one, q});
}

std::string ns_to_string(std::int64_t ns) { return config::format_duration(std::chrono::nanoseconds(ns)); }

}  // namespace

std::int64_t steady_now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

upstream_shared::upstream_shared(std::shared_ptr<const config::config> gen, const config::upstream_config& c,
                                 std::size_t n, const upstream_shared* previous)
    : generation(std::move(gen)), cfg(&c), shards(n), queues(std::make_unique<shard_queue_state[]>(n)),
      totals(std::make_unique<upstream_counters[]>(n)),
      counters(std::make_unique<server_counters[]>(n * c.servers.size())) {
    for (const auto& server : c.servers) {
        std::shared_ptr<server_shared> kept;
        for (std::size_t i = 0; previous && i < previous->cfg->servers.size() && !kept; ++i) {
            if (previous->cfg->servers[i].address == server.address) {
                kept = previous->servers[i];
            }
        }
        // Without checks nothing would ever clear a mark the checks left:
        // the server is up again, as far as they are concerned.
        if (kept && !c.health_check.enabled) {
            kept->check_down.store(false);
            kept->check_streak.store(0);
        }
        servers.push_back(kept ? kept : std::make_shared<server_shared>());
    }
}

upstream_local::upstream_local(upstream_shared& shared, unsigned shard_id)
    : _shared(shared), _shard(shard_id), _current(shared.cfg->servers.size(), 0), _rng(0x5eed + shard_id),
      _counters(&shared.counters[shard_id * shared.cfg->servers.size()]), _totals(shared.totals[shard_id]) {
    _eligible.reserve(size());
    _shared.queues[shard_id].local.store(this);
    // Start each shard's round at a different server.
    std::vector<std::size_t> all(size());
    for (std::size_t i = 0; i < all.size(); ++i) {
        all[i] = i;
    }
    for (unsigned k = 0; k < shard_id % size(); ++k) {
        (void)pick_round_robin(all);
    }
}

upstream_local::~upstream_local() {
    // Another shard's wake-up looks the local up when it runs.
    upstream_local* self = this;
    _shared.queues[_shard].local.compare_exchange_strong(self, nullptr);
}

bool upstream_local::down(std::size_t i, std::int64_t now_ns) const noexcept {
    return is_down(*_shared.servers[i], now_ns, cfg().health_check.enabled);
}

bool upstream_local::usable(std::size_t i, std::int64_t now_ns) const noexcept {
    const config::upstream_server& c = cfg().servers[i];
    return c.weight > 0 && !c.drain && !down(i, now_ns);
}

std::string upstream_local::proxy_header(std::size_t i, const socket_address* source,
                                         const socket_address* destination) const {
    switch (proxy_protocol(i)) {
    case config::proxy_protocol_version::none: break;
    case config::proxy_protocol_version::v1: return proxy_protocol::build_v1(source, destination);
    case config::proxy_protocol_version::v2: return proxy_protocol::build_v2(source, destination);
    }
    return "";
}

bool upstream_local::backups_only(std::int64_t now_ns) const noexcept {
    for (std::size_t i = 0; i < size(); ++i) {
        if (!cfg().servers[i].backup && usable(i, now_ns)) {
            return false;
        }
    }
    return true;
}

bool upstream_local::try_take(std::size_t i) noexcept {
    const std::uint64_t limit = cfg().servers[i].max_connections;
    const std::uint64_t before = _shared.servers[i]->active.fetch_add(1);
    if (limit != 0 && before >= limit) {
        _shared.servers[i]->active.fetch_sub(1);
        return false;
    }
    return true;
}

pick_result upstream_local::pick(const socket_address& client, const std::vector<bool>& tried) {
    const std::int64_t now = steady_now_ns();
    _eligible.clear();
    bool any_up = false;
    // Primaries first; backups while no primary is usable, or once this
    // client has tried every usable primary (a primary that refused it may
    // not be marked down yet: max_fails above 1, or 0).
    for (const bool backups : {false, true}) {
        if (any_up || (!backups && backups_only(now))) {
            continue;
        }
        for (std::size_t i = 0; i < size(); ++i) {
            if ((i < tried.size() && tried[i]) || cfg().servers[i].backup != backups || !usable(i, now)) {
                continue;
            }
            any_up = true;
            const std::uint64_t limit = cfg().servers[i].max_connections;
            if (limit == 0 || _shared.servers[i]->active.load() < limit) {
                _eligible.push_back(i);
            }
        }
    }
    // A server that filled up between the look above and try_take() (on
    // another shard) leaves the candidates; the pick goes on among the rest.
    while (!_eligible.empty()) {
        std::optional<std::size_t> i;
        switch (cfg().balance) {
        case config::balance_policy::round_robin: i = pick_round_robin(_eligible); break;
        case config::balance_policy::least_conn: i = pick_least_conn(_eligible); break;
        case config::balance_policy::random_two: i = pick_random_two(_eligible); break;
        case config::balance_policy::source_hash: i = pick_source_hash(client, _eligible); break;
        }
        if (try_take(*i)) {
            return {pick_result::server, *i};
        }
        _eligible.erase(std::find(_eligible.begin(), _eligible.end(), *i));
    }
    return {any_up ? pick_result::all_full : pick_result::all_down, 0};
}

bool upstream_local::enqueue(queue_waiter& w, bool front) noexcept {
    if (_queue_len >= cfg().max_queue) {
        return false;
    }
    if (front) {
        w.next = _queue_head;
        (_queue_head ? _queue_head->prev : _queue_tail) = &w;
        _queue_head = &w;
    } else {
        w.prev = _queue_tail;
        (_queue_tail ? _queue_tail->next : _queue_head) = &w;
        _queue_tail = &w;
    }
    w.linked = true;
    ++_queue_len;
    _shared.queues[_shard].waiting.fetch_add(1);
    return true;
}

void upstream_local::dequeue(queue_waiter& w) noexcept {
    if (!std::exchange(w.linked, false)) {
        return;
    }
    (w.prev ? w.prev->next : _queue_head) = w.next;
    (w.next ? w.next->prev : _queue_tail) = w.prev;
    w.prev = w.next = nullptr;
    --_queue_len;
    _shared.queues[_shard].waiting.fetch_sub(1);
}

bool upstream_local::has_capacity() const noexcept {
    const std::int64_t now = steady_now_ns();
    const bool backups = backups_only(now);
    for (std::size_t i = 0; i < size(); ++i) {
        const std::uint64_t limit = cfg().servers[i].max_connections;
        if (cfg().servers[i].backup == backups && usable(i, now) &&
            (limit == 0 || _shared.servers[i]->active.load() < limit)) {
            return true;
        }
    }
    return false;
}

void upstream_local::wake_one() noexcept {
    if (queue_waiter* w = _queue_head) {
        dequeue(*w);
        w->wake.request_abort();
    }
}

void upstream_local::wake_all() noexcept {
    while (_queue_head) {
        wake_one();
    }
}

void upstream_local::wake_queues() noexcept {
    wake_all();
    for (std::size_t k = 1; k < _shared.shards; ++k) {
        const std::size_t s = (_shard + k) % _shared.shards;
        if (_shared.queues[s].waiting.load() > 0) {
            wake_on(static_cast<unsigned>(s), &_shared.queues[s], true);
        }
    }
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
        const std::uint64_t a = _shared.servers[i]->active.load(std::memory_order_relaxed);
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
    const std::uint64_t la = _shared.servers[a]->active.load(std::memory_order_relaxed) * cfg().servers[b].weight;
    const std::uint64_t lb = _shared.servers[b]->active.load(std::memory_order_relaxed) * cfg().servers[a].weight;
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

void upstream_local::close(std::size_t i) noexcept {
    _shared.servers[i]->active.fetch_sub(1);
    if (cfg().servers[i].max_connections == 0) {
        return;  // nobody ever waits for this server's slot
    }
    if (_queue_head) {
        wake_one();
        return;
    }
    // One waiter on another shard, through the mesh; the slot is its to
    // race for. Seq-cst on both sides (see enqueue()).
    for (std::size_t k = 1; k < _shared.shards; ++k) {
        const std::size_t s = (_shard + k) % _shared.shards;
        if (_shared.queues[s].waiting.load() > 0) {
            wake_on(static_cast<unsigned>(s), &_shared.queues[s], false);
            return;
        }
    }
}

void upstream_local::connected(std::size_t i) {
    _counters[i].connections.add();
    server_shared& s = *_shared.servers[i];
    if (s.fails.load(std::memory_order_relaxed) != 0) {
        s.fails.store(0, std::memory_order_relaxed);
    }
    // Only the shard that clears the mark logs the way back.
    if (s.down_until.load(std::memory_order_relaxed) != 0 && s.down_until.exchange(0) != 0) {
        _counters[i].marked_up.add();
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
    server_shared& s = *_shared.servers[i];
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
    const std::string why =
        std::to_string(n) + " failed connect" + (n == 1 ? "" : "s") + " (last: " + ec.message() + ")";
    if (cfg().health_check.enabled) {
        // Down until checks pass, not for fail_timeout.
        mark_down(i, why + "; back after " + std::to_string(cfg().health_check.rise) + " passing check" +
                         (cfg().health_check.rise == 1 ? "" : "s"));
        return;
    }
    const std::int64_t was = s.down_until.exchange(now + window);
    if (was <= now) {
        // Up (or its last mark expired) until now: this shard saw the
        // transition, and only this one logs it.
        _counters[i].marked_down.add();
        spdlog::warn("upstream {}: server {} is down for {} after {}", cfg().name, address(i).to_string(),
                     ns_to_string(window), why);
    }
}

// Only the shard whose exchange flips the flag logs and counts: one line
// per transition, whichever shard (checker or passive) saw it first.
void upstream_local::mark_down(std::size_t i, const std::string& why) {
    server_shared& s = *_shared.servers[i];
    s.check_streak.store(0, std::memory_order_relaxed);
    if (!s.check_down.exchange(true)) {
        _counters[i].marked_down.add();
        spdlog::warn("upstream {}: server {} is down: {}", cfg().name, address(i).to_string(), why);
        wake_queues();  // backups may serve them now
    }
}

void upstream_local::check_result(std::size_t i, bool passed, std::string_view why) {
    server_shared& s = *_shared.servers[i];
    const auto& hc = cfg().health_check;
    _counters[i].checks.add();
    if (!passed) {
        _counters[i].check_failures.add();
    }
    const bool is_down = s.check_down.load(std::memory_order_relaxed);
    if (passed == !is_down) {
        s.check_streak.store(0, std::memory_order_relaxed);  // as it was: a streak towards the other state ends
        return;
    }
    const std::uint32_t streak = s.check_streak.load(std::memory_order_relaxed) + 1;
    s.check_streak.store(streak, std::memory_order_relaxed);
    if (!passed && streak >= hc.fall) {
        mark_down(i, std::to_string(streak) + " failed check" + (streak == 1 ? "" : "s") +
                         " (last: " + std::string(why) + ")");
    } else if (passed && streak >= hc.rise) {
        s.check_streak.store(0, std::memory_order_relaxed);
        s.fails.store(0, std::memory_order_relaxed);
        s.down_until.store(0, std::memory_order_relaxed);
        if (s.check_down.exchange(false)) {
            _counters[i].marked_up.add();
            spdlog::info("upstream {}: server {} is up after {} passing check{}", cfg().name, address(i).to_string(),
                         streak, streak == 1 ? "" : "s");
            wake_queues();  // a server for them
        }
    }
}

std::string upstream_local::summary() const {
    auto n = [](const shard_counter& c) { return std::to_string(c.get()); };
    std::string out = "upstream " + cfg().name + ": retries " + n(_totals.retries) + ", no server " +
                      n(_totals.no_server) + ", resets " + n(_totals.resets) + ", half-close timeouts " +
                      n(_totals.half_close_timeouts) + ", queued " + n(_totals.queued) + " (full " +
                      n(_totals.queue_full) + ", timed out " + n(_totals.queue_timeouts) + ", " +
                      std::to_string(_totals.queued_ns.get() / 1'000'000) + " ms in all)";
    for (std::size_t i = 0; i < size(); ++i) {
        const server_counters& c = _counters[i];
        out += "; " + address(i).to_string() + ": connections " + n(c.connections) + ", refused " +
               n(c.connect_refused) + ", timeouts " + n(c.connect_timeouts) + ", errors " + n(c.connect_errors) +
               ", bytes to " + n(c.bytes_to) + ", from " + n(c.bytes_from);
    }
    return out;
}

}  // namespace shardd::server::proxy
