#pragma once
// An [[upstream]] as the proxy sees it: which server a new client goes to,
// and what the shards know of each server's health and load.
//
// Where the state lives:
// - upstream_shared, one per [[upstream]], shared by every shard: per
//   server one cache line (alignas(64)) with its open connections over all
//   shards (least_conn, random_two) and its health (failures in the window,
//   down-until). Written once per connect and close, and on failures; read
//   once per pick. Never touched per byte. A server marked down by one
//   shard is down for every shard at once, with no message to send: the
//   next pick anywhere reads it.
// - upstream_local, one per shard and upstream: the round-robin position
//   and the random generator. round_robin is a smooth weighted round robin
//   (nginx's) per shard: each shard's picks follow the weights exactly, so
//   all shards together do too, to within one round per shard. The shards
//   start their rounds at different servers, so that N shards' first
//   clients do not all land on server 0.
// - Active health checks (health_check.hh) run on one shard per server
//   and write their verdict into the same line (check_down), where every
//   shard's next pick reads it: the shared line is the message.
// - Backup servers are picked only while no primary is usable (up, weight
//   above 0, not drained); a drained server gets no new connections and
//   keeps its open ones.
// - source_hash needs no state: a weighted rendezvous hash of the client's
//   address (not its port) picks the same server on every shard, and when a
//   server goes down only its own clients move.

#include "config/config.hh"
#include "server/counters.hh"

#include "reactor/abort_source.hh"
#include "reactor/socket_address.hh"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace shardd::server::proxy {

// One server's shared state. Its own cache line: shards that connect to
// different servers never contend.
struct alignas(64) server_shared {
    std::atomic<std::uint64_t> active{0};
    // Passive health: failed connects since window_start (steady_clock ns).
    std::atomic<std::uint32_t> fails{0};
    std::atomic<std::int64_t> window_start{0};
    // Down until this time (steady_clock ns); 0: up.
    std::atomic<std::int64_t> down_until{0};
    // With active checks: down until `rise` checks in a row pass. Set by a
    // failing check (`fall` in a row) or by passive health (HAProxy's
    // observe: either marks a server down, only a check brings it back).
    std::atomic<bool> check_down{false};
    // Checks in a row that passed (while down) or failed (while up).
    // Written by the checking shard, reset by passive health on any shard
    // and by a reload: a reset racing a check may cost or give one check of
    // a streak, never a transition without a check.
    std::atomic<std::uint32_t> check_streak{0};
};

// Whether a server is down now, by passive health or, in a generation
// that has checks, by its checks. A generation without checks ignores the
// mark: an older generation's pairs (or its last checks, until every shard
// applied the reload) may still set it, and nothing would clear it.
inline bool is_down(const server_shared& s, std::int64_t now_ns, bool checked) noexcept {
    return (checked && s.check_down.load(std::memory_order_relaxed)) ||
           s.down_until.load(std::memory_order_relaxed) > now_ns;
}

// Per shard and server, single writer (see shard_counter).
struct alignas(64) server_counters {
    shard_counter connections;       // connected
    shard_counter connect_refused;   // ECONNREFUSED
    shard_counter connect_timeouts;  // connect_timeout passed
    shard_counter connect_errors;    // any other connect failure
    shard_counter bytes_to;          // client -> server
    shard_counter bytes_from;        // server -> client
    shard_counter checks;            // active checks run
    shard_counter check_failures;    // of which failed
    shard_counter marked_down;       // up -> down, by a check or by passive health
    shard_counter marked_up;         // down -> up
};

// Per shard and upstream, single writer.
struct alignas(64) upstream_counters {
    shard_counter retries;    // a connect tried again on another server
    shard_counter no_server;  // every server down or failed: client closed
    shard_counter resets;     // an RST from one side, relayed to the other
    shard_counter half_close_timeouts;
    shard_counter queued;          // clients that waited for a server slot
    shard_counter queue_full;      // closed at once: max_queue clients already waiting
    shard_counter queue_timeouts;  // closed after queue_timeout in the queue
    shard_counter queued_ns;       // total time spent queued
};

class upstream_local;

// Clients waiting on one shard: their count, read by the other shards when
// a connection closes. Its own cache line.
struct alignas(64) shard_queue_state {
    std::atomic<std::uint32_t> waiting{0};
    std::atomic<upstream_local*> local{nullptr};
};

// One generation of an [[upstream]]: a reload that changes the upstream
// makes a new one, and connections proxied before keep theirs. A server
// that stays (same address) keeps its server_shared, so its open
// connections and its health carry over to the new generation. The daemon
// keeps every generation until exit: a message from a shard may still name
// one (a few hundred bytes; only reloads that change the upstream add one).
struct upstream_shared {
    upstream_shared(std::shared_ptr<const config::config> generation, const config::upstream_config& c,
                    std::size_t shards, const upstream_shared* previous = nullptr);
    std::shared_ptr<const config::config> generation;  // keeps *cfg alive
    const config::upstream_config* cfg;
    std::vector<std::shared_ptr<server_shared>> servers;  // as cfg->servers
    std::size_t shards;
    std::unique_ptr<shard_queue_state[]> queues;  // [shard]
    // The counters, here rather than in each shard's upstream_local, so
    // that the admin endpoint can read them for as long as the process
    // runs: each shard writes its own (single writer), anyone reads.
    std::unique_ptr<upstream_counters[]> totals;  // [shard]
    std::unique_ptr<server_counters[]> counters;  // [shard * servers.size() + server]
};

// A client waiting in its shard's queue for a server slot.
struct queue_waiter {
    queue_waiter* next = nullptr;
    queue_waiter* prev = nullptr;
    // Fired to wake the waiter (a slot may be free); also by the
    // connection's own abort().
    abort_source wake;
    bool linked = false;
};

// What pick() found.
struct pick_result {
    enum kind { server, all_down, all_full } what = all_down;
    std::size_t index = 0;
};

class upstream_local {
public:
    upstream_local(upstream_shared& shared, unsigned shard_id);
    ~upstream_local();
    upstream_local(const upstream_local&) = delete;
    upstream_local& operator=(const upstream_local&) = delete;

    const upstream_shared& shared() const noexcept { return _shared; }

    const config::upstream_config& cfg() const noexcept { return *_shared.cfg; }
    std::size_t size() const noexcept { return _shared.cfg->servers.size(); }
    const socket_address& address(std::size_t i) const noexcept { return _shared.cfg->servers[i].address; }

    // The server for a new connection from `client`, among those that are
    // up, under their max_connections and not in `tried`; its slot is taken
    // (release it with close()). Or why there is none: all such servers are
    // down, or some are up but at their max_connections (then: queue).
    pick_result pick(const socket_address& client, const std::vector<bool>& tried);

    // A connect to server `i` succeeded / failed (health, counters, logs).
    void connected(std::size_t i);
    void failed(std::size_t i, const std::error_code& ec);
    // Gives back server `i`'s slot taken by pick(), and wakes one queued
    // client (on this shard if one waits here, else on another).
    void close(std::size_t i) noexcept;

    // The queue (servers at max_connections). enqueue() fails when
    // max_queue clients already wait on this shard. A waiter announces
    // itself before it looks for a slot again, and a closer frees the slot
    // before it looks for waiters (both sequentially consistent), so a slot
    // freed in between is never missed.
    bool enqueue(queue_waiter& w, bool front = false) noexcept;
    // Whether some server is up and under its max_connections now.
    bool has_capacity() const noexcept;
    void dequeue(queue_waiter& w) noexcept;
    // Wakes the first waiter of this shard, if any (from a close here or,
    // through the shard mesh, on another shard).
    void wake_one() noexcept;
    // Wakes every waiter of this shard: what they may pick changed (a
    // server came up, or every primary went down and backups now serve).
    void wake_all() noexcept;

    bool down(std::size_t i, std::int64_t now_ns) const noexcept;
    // Up, and neither drained nor of weight 0: may get new connections.
    bool usable(std::size_t i, std::int64_t now_ns) const noexcept;
    // The PROXY header version server `i` takes (its own, else the
    // upstream's), and that header for a connection from `source` to
    // `destination` ("" for none; null addresses: v1 UNKNOWN, v2 LOCAL).
    config::proxy_protocol_version proxy_protocol(std::size_t i) const noexcept {
        return cfg().servers[i].proxy_protocol.value_or(cfg().proxy_protocol);
    }
    std::string proxy_header(std::size_t i, const socket_address* source, const socket_address* destination) const;
    // An active check of server `i` passed or failed (the checking shard).
    void check_result(std::size_t i, bool passed, std::string_view why);
    server_counters& counters(std::size_t i) noexcept { return _counters[i]; }
    upstream_counters& totals() noexcept { return _totals; }
    // The counters, one line: logged at drain.
    std::string summary() const;

private:
    std::optional<std::size_t> pick_round_robin(const std::vector<std::size_t>& eligible);
    std::optional<std::size_t> pick_least_conn(const std::vector<std::size_t>& eligible);
    std::optional<std::size_t> pick_random_two(const std::vector<std::size_t>& eligible);
    std::optional<std::size_t> pick_source_hash(const socket_address& client, const std::vector<std::size_t>& eligible);

    bool try_take(std::size_t i) noexcept;
    // Whether pick() looks at backup servers now: no primary is usable.
    bool backups_only(std::int64_t now_ns) const noexcept;
    void mark_down(std::size_t i, const std::string& why);
    // wake_all() on every shard with clients waiting (this one directly,
    // the others through the mesh).
    void wake_queues() noexcept;

    upstream_shared& _shared;
    unsigned _shard;
    queue_waiter* _queue_head = nullptr;
    queue_waiter* _queue_tail = nullptr;
    std::uint32_t _queue_len = 0;
    // Smooth weighted round robin: each server's current weight.
    std::vector<std::int64_t> _current;
    std::minstd_rand _rng;
    server_counters* _counters;          // this shard's, in _shared
    upstream_counters& _totals;          // this shard's, in _shared
    std::vector<std::size_t> _eligible;  // scratch, kept to avoid allocating per pick
};

std::int64_t steady_now_ns() noexcept;

}  // namespace shardd::server::proxy
