#pragma once
// A shard's own state, as its services share it: the listeners it serves,
// the connections each has (for the idle sweep and the drain), and the
// guard that gives a connection's resources back on every way out.
// Touched only by the shard's thread.

#include "config/config.hh"
#include "server/access_log.hh"
#include "server/connection_slot.hh"
#include "server/counters.hh"
#include "server/listeners.hh"
#include "server/peer_log.hh"
#include "server/proxy/upstream.hh"
#include "server/served_connection.hh"
#include "server/transit.hh"

#include "reactor/abort_source.hh"
#include "reactor/buffer_ring.hh"
#include "reactor/event.hh"
#include "reactor/join_handle.hh"
#include "reactor/owned_fd.hh"

#include <memory>
#include <vector>

namespace shardd::server {

// A connection as the shard sees it: for the idle sweep and the drain.
struct connection_entry {
    served_connection* conn = nullptr;
    connection_entry* prev = nullptr;
    connection_entry* next = nullptr;
    std::uint64_t seen_activity = 0;
    unsigned idle_sweeps = 0;
    // Why the shard aborted it, for the access log ("" if it did not).
    std::string_view aborted_for;
};

// One listener on this shard. A reload may change its settings (new
// connections take them) or retire it: it stops accepting, and goes once
// its connections are gone.
struct listener_state {
    // The configuration generation its settings come from, kept alive here.
    std::shared_ptr<const config::config> generation;
    const config::listener_config* cfg = nullptr;
    std::shared_ptr<listener_shared> shared;
    std::vector<owned_fd> fds;
    transit_options echo;
    // Proxy listeners: this shard's side of their upstream (a pair keeps
    // the one it started with).
    std::shared_ptr<proxy::upstream_local> upstream;
    connection_entry* head = nullptr;
    std::size_t count = 0;
    // Set when the first connection arrives: the idle sweep sleeps on it
    // while the listener has none, so an idle shard runs no timer.
    event busy;
    // Set when the last connection leaves a retiring listener.
    event empty;
    bool at_limit = false;
    bool source_table_full_logged = false;
    bool retiring = false;
    bool sweeping = false;  // its idle sweep runs
    // Its accept loops stop on this (retirement, or the drain); its idle
    // sweep on the other (no connection left after retirement, or the end
    // of the drain).
    abort_source stop_accepting;
    abort_source stop_sweep;
    std::vector<join_handle<void>> accepts;

    void link(connection_entry* e) {
        e->next = head;
        if (head) {
            head->prev = e;
        }
        head = e;
        if (count++ == 0) {
            busy.set();
        }
    }
    void unlink(connection_entry* e) {
        (e->prev ? e->prev->next : head) = e->next;
        if (e->next) {
            e->next->prev = e->prev;
        }
        e->prev = e->next = nullptr;
        if (--count == 0 && retiring) {
            empty.set();
        }
    }
};

// The active health checks this shard runs for one upstream generation
// (proxy/health_check.hh); stopped when a reload replaces the generation.
struct running_checks {
    const proxy::upstream_shared* generation = nullptr;
    std::shared_ptr<abort_source> stop;  // the task holds it too
    join_handle<void> task;
};

struct shard_state {
    unsigned id = 0;
    const config::runtime_config* runtime = nullptr;  // restart-only: never reloaded
    shard_counters* counters = nullptr;
    std::unique_ptr<buffer_ring> buffers;
    std::vector<std::unique_ptr<listener_state>> listeners;
    // This shard's side of each upstream, current generation.
    std::vector<std::shared_ptr<proxy::upstream_local>> upstreams;
    std::vector<running_checks> checks;
    std::unique_ptr<peer_log> log;
    // The buffers, counters, log and round scratch every transit shares.
    std::unique_ptr<transit_env> transit;
    // Pipes for spliced bulk relays (splice_pipes.hh).
    std::unique_ptr<splice_pipes> pipes;
    // One line per closed connection; null when the access log is off.
    std::unique_ptr<access_log> access;
    std::size_t connections = 0;
    bool draining = false;
    event drained;  // draining and the last connection closed
    // Idle sweeps and retirements, awaited at the end of the drain.
    std::vector<join_handle<void>> housekeeping;
    // The drain fires this once the connections are gone: retirements that
    // still wait for theirs, and the drain's timers.
    abort_source stop_housekeeping;

    void abort_all() {
        for (auto& l : listeners) {
            for (auto* e = l->head; e; e = e->next) {
                e->aborted_for = ended::shutdown;
                e->conn->abort();
            }
        }
    }
};

// Everything a connection holds of its shard, given back on every way out
// of serve(), an exception included: its max_connections slot, its place in
// the listener's list (left before the socket closes: the fd number may be
// reused at once), the shard's count that the drain waits on, and the
// socket itself (closed last, after the guard's members above).
class connection_guard {
public:
    // The accept loop counted the connection in sh.connections already.
    connection_guard(shard_state& sh, listener_state& l, owned_fd fd, connection_slot slot)
        : _sh(sh), _l(l), _fd(std::move(fd)), _slot(std::move(slot)) {}
    connection_guard(const connection_guard&) = delete;
    connection_guard& operator=(const connection_guard&) = delete;
    ~connection_guard() {
        if (_linked) {
            _l.unlink(&_entry);
        }
        _fd.reset();
        _slot.reset();
        _sh.counters->closed.add();
        _l.shared->per_shard[_sh.id].closed.add();
        if (--_sh.connections == 0 && _sh.draining) {
            _sh.drained.set();
        }
    }
    int fd() const noexcept { return _fd.get(); }
    // Why the shard aborted the connection ("" if it did not).
    std::string_view aborted_for() const noexcept { return _entry.aborted_for; }
    // Links the connection for the idle sweep and the drain; a linked one
    // (admission's header wait) hands over its place, so that a retiring
    // listener never sees it gone, and its idle clock starts afresh.
    void link(served_connection& c) {
        _entry.conn = &c;
        _entry.seen_activity = 0;
        _entry.idle_sweeps = 0;
        if (!std::exchange(_linked, true)) {
            _l.link(&_entry);
        }
    }
    void unlink() {
        if (std::exchange(_linked, false)) {
            _l.unlink(&_entry);
        }
    }

private:
    shard_state& _sh;
    listener_state& _l;
    owned_fd _fd;
    connection_slot _slot;
    connection_entry _entry;
    bool _linked = false;
};

}  // namespace shardd::server
