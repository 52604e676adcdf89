#include "server/shard_service.hh"
#include "server/admission.hh"
#include "server/proxy/health_check.hh"
#include "server/proxy/proxy_pair.hh"
#include "server/proxy/upstream.hh"
#include "server/shard_state.hh"

#include "server/connection_slot.hh"
#include "server/peer_log.hh"
#include "server/transit.hh"

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
// Connections an accept loop sets up in a row before it yields to the rest
// of the shard: a burst of connects must not hold up the connections that
// are already being served (nor be held up by a full accept queue).
constexpr unsigned accept_burst = 32;
// The idle sweep looks at every connection this many times per idle_timeout:
// a connection closes between 1 and 1 + 1/N idle_timeouts after its last byte.
constexpr unsigned idle_sweeps_per_timeout = 4;
// Connections aborted at shutdown_timeout (every wait of theirs cancelled)
// end within a loop iteration or two; this bounds the wait for them anyway,
// so the drain always ends: shutdown_timeout plus this at most.
constexpr nanoseconds drain_abort_bound = 2s;
// Pipes a shard lends to spliced relays at most (splice_pipes.hh): two
// descriptors each, taken from the connections' share of RLIMIT_NOFILE, and
// held by a bulk connection while it splices, idle or not. 256 covers the
// bulk streams one core can feed at once (a 64 KiB stream costs ~15 us per
// message: ~70k messages a second in all); a transit that finds none copies.
constexpr std::size_t max_splice_pipes = 256;
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

std::string_view echo_end(transit_end end, std::string_view aborted_for) {
    switch (end) {
    case transit_end::closed: return ended::client_fin;
    case transit_end::recv_error:
    case transit_end::send_error: return ended::client_rst;
    case transit_end::protocol_error: return ended::protocol_error;
    case transit_end::aborted: break;
    }
    return aborted_for.empty() ? ended::shutdown : aborted_for;
}

// The connection's line, after its end. Not in serve(): GCC keeps every
// local of a coroutine in its frame, and a 344-byte access_record there
// would be carried by every idle connection.
void log_echo(shard_state& sh, const listener_state& l, const access_start& started, const transit& conn,
              transit_end end, std::string_view aborted_for) {
    access_record r = started.record(l.cfg->name);
    r.bytes_from_client = conn.bytes_received();
    r.bytes_to_client = conn.bytes_sent();
    r.end = echo_end(end, aborted_for);
    sh.access->record(r);
}

task<void> serve(shard_state& sh, listener_state& l, owned_fd fd, connection_slot slot, std::unique_ptr<admitted> adm) {
    connection_guard guard(sh, l, std::move(fd), std::move(slot));
    if (adm && adm->awaiting_header) {
        const bool admitted = co_await admit_proxied(sh, l, guard, adm);
        if (!admitted) {
            co_return;
        }
    }
    if (l.cfg->nodelay) {
        set_nodelay(guard.fd(), true);  // best effort: the echo still works without
    }
    const access_start started(sh.access.get(), guard.fd(), adm ? adm->client.get() : nullptr);
    transit conn(guard.fd(), guard.fd(), *sh.transit, l.echo);
    guard.link(conn);
    const transit_end end = co_await conn.run();
    guard.unlink();
    if (end == transit_end::recv_error || end == transit_end::send_error || end == transit_end::protocol_error) {
        sh.counters->errors.add();
        l.shared->per_shard[sh.id].errors.add();
    }
    if (sh.access) {
        log_echo(sh, l, started, conn, end, guard.aborted_for());
    }
    // run() left nothing in the kernel: the guard closes the socket (a FIN
    // after a clean end) and gives everything back.
}

task<void> accept_loop(shard_state& sh, listener_state& l, int lfd) {
    accept_stream incoming(lfd, &l.stop_accepting);
    nanoseconds backoff{0};
    std::uint64_t backoffs_this_episode = 0;
    unsigned burst = 0;
    while (true) {
        burst = incoming.has_ready() ? burst : 0;
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
                spdlog::warn("listener {}: accept: {}; retrying with back-off up to {} ms", l.cfg->name, ec.message(),
                             std::chrono::duration_cast<std::chrono::milliseconds>(accept_backoff_max).count());
            }
            co_await sleep_for(backoff, l.stop_accepting);
            continue;
        }
        if (backoffs_this_episode > 0) {
            spdlog::info("listener {}: accepting again after {} back-off{}", l.cfg->name, backoffs_this_episode,
                         backoffs_this_episode == 1 ? "" : "s");
            backoffs_this_episode = 0;
        }
        backoff = nanoseconds{0};
        // ACLs and per-source limits, before the connection takes a slot.
        std::unique_ptr<admitted> adm;
        if (admits_at_accept(*l.cfg) && !admit_at_accept(sh, l, fd->get(), adm)) {
            fd->reset();
            continue;
        }
        if (l.cfg->accept_proxy) {
            // Decided here: a reload before the task starts does not skip
            // the header it was accepted to wait for.
            adm = std::make_unique<admitted>();
            adm->awaiting_header = true;
        }
        // max_connections: accept and close at once (the client sees EOF
        // straight away rather than hanging in the backlog), counted.
        auto slot = connection_slot::try_take(*l.shared, l.cfg->max_connections);
        if (!slot) {
            sh.counters->refused.add();
            l.shared->per_shard[sh.id].refused.add();
            if (sh.access) {
                access_record rec = access_start(sh.access.get(), fd->get()).record(l.cfg->name);
                rec.end = ended::refused;
                sh.access->record(rec);
            }
            fd->reset();
            if (!l.at_limit) {
                l.at_limit = true;
                spdlog::warn("listener {}: max_connections ({}) reached; closing new connections", l.cfg->name,
                             l.cfg->max_connections);
            }
            continue;
        }
        l.at_limit = false;
        sh.counters->accepted.add();
        l.shared->per_shard[sh.id].accepted.add();
        // Counted now, not when serve() first runs: the drain must wait for
        // a connection whose task has not started yet.
        ++sh.connections;
        // Detached: the connection ends by itself, and its guard tells the
        // drain. An exception in it is logged by the executor.
        if (l.upstream) {
            executor::current()->spawn_detached(proxy::serve(sh, l, std::move(*fd), std::move(slot), std::move(adm)));
        } else {
            executor::current()->spawn_detached(serve(sh, l, std::move(*fd), std::move(slot), std::move(adm)));
        }
        if (++burst >= accept_burst) {
            burst = 0;
            co_await yield();
        }
    }
    co_await incoming.stop();
}

// Closes connections with no byte in either direction for idle_timeout. It
// takes the listener's idle_timeout afresh every period (a reload may change
// it), and ends when a reload sets it to 0, or on stop_sweep.
task<void> idle_sweep(listener_state& l, shard_counters& counters, listener_counters& mine) {
    l.sweeping = true;
    while (!l.stop_sweep.abort_requested() && l.cfg->idle_timeout.count() > 0) {
        // Awaitables are named, not temporaries in the conditions: GCC 12
        // miscompiles a co_await of a temporary in an if condition (it traps).
        if (l.count == 0) {
            l.busy.reset();
            auto first_connection = l.busy.wait(&l.stop_sweep);
            if (!co_await first_connection) {
                break;
            }
        }
        // The config's minimum idle_timeout keeps this period well above a
        // timer's cost (config/reader.cc).
        sleep_op tick = sleep_for(l.cfg->idle_timeout / idle_sweeps_per_timeout, l.stop_sweep);
        if (!co_await tick) {
            break;
        }
        for (auto* e = l.head; e; e = e->next) {
            const std::uint64_t a = e->conn->activity();
            if (a != e->seen_activity) {
                e->seen_activity = a;
                e->idle_sweeps = 0;
            } else if (++e->idle_sweeps == idle_sweeps_per_timeout) {
                // Whatever it waits for (its peer's bytes, a peer that does
                // not read, free buffers) ends; it hands back what it holds
                // and closes. It unlinks itself later, not under our feet.
                e->aborted_for = ended::idle_timeout;
                e->conn->abort();
                counters.idle_closed.add();
                mine.idle_closed.add();
            }
        }
    }
    l.sweeping = false;
}

// Sets `expired` after `d`, unless `stop` fires first.
task<void> deadline(nanoseconds d, abort_source& stop, abort_source& expired) {
    sleep_op s = sleep_for(d, stop);
    if (co_await s) {
        expired.request_abort();
    }
}

// Waits until the shard has no connection, or until `d` passed.
task<bool> wait_drained(shard_state& sh, nanoseconds d) {
    if (sh.connections == 0) {
        co_return true;
    }
    abort_source expired;
    abort_source timer_done;
    auto timer = executor::current()->spawn(deadline(d, timer_done, expired));
    co_await sh.drained.wait(&expired);
    timer_done.request_abort();
    co_await timer;
    co_return sh.connections == 0;
}

task<void> drain(shard_state& sh) {
    sh.draining = true;
    for (auto& l : sh.listeners) {
        l->stop_accepting.request_abort();
    }
    for (auto& l : sh.listeners) {
        // A retiring listener's accept loops are its retirement's to await.
        if (!l->retiring) {
            for (auto& a : l->accepts) {
                co_await a;
            }
            l->accepts.clear();
            l->fds.clear();  // the listening sockets: new connections are refused
        }
    }
    if (sh.connections > 0) {
        spdlog::info("draining: {} connection{} open, closing them in at most {}", sh.connections,
                     sh.connections == 1 ? "" : "s", config::format_duration(sh.runtime->shutdown_timeout));
        const bool finished = co_await wait_drained(sh, sh.runtime->shutdown_timeout);
        if (!finished) {
            spdlog::warn("shutdown_timeout: closing {} connection{}", sh.connections, sh.connections == 1 ? "" : "s");
            sh.abort_all();
            const bool ended = co_await wait_drained(sh, drain_abort_bound);
            if (!ended) {
                spdlog::error("{} connection{} did not end within {} of being aborted; leaving them", sh.connections,
                              sh.connections == 1 ? "" : "s", config::format_duration(drain_abort_bound));
            }
        }
    }
    for (auto& l : sh.listeners) {
        l->stop_sweep.request_abort();
    }
    for (auto& c : sh.checks) {
        c.stop->request_abort();
        sh.housekeeping.push_back(std::move(c.task));
    }
    sh.checks.clear();
    sh.stop_housekeeping.request_abort();
    // Sweeps and retirements; a retirement may erase its listener, so
    // take the handles first.
    auto tasks = std::move(sh.housekeeping);
    for (auto& t : tasks) {
        co_await t;
    }
}

// A listener leaves: it stops accepting and closes its sockets at once;
// its connections finish (its idle sweep still watches them), and then it
// goes. The drain ends what is left.
task<void> retirement(shard_state& sh, listener_state& l) {
    for (auto& a : l.accepts) {
        co_await a;
    }
    l.accepts.clear();
    l.fds.clear();
    if (l.count > 0) {
        auto none_left = l.empty.wait(&sh.stop_housekeeping);
        co_await none_left;
    }
    l.stop_sweep.request_abort();
    while (l.sweeping) {
        co_await yield();
    }
    if (l.count == 0) {
        const auto it = std::find_if(sh.listeners.begin(), sh.listeners.end(),
                                     [&](const std::unique_ptr<listener_state>& p) { return p.get() == &l; });
        spdlog::info("listener {}: retired", l.cfg->name);
        sh.listeners.erase(it);
    }
}

void retire(shard_state& sh, listener_state& l) {
    l.retiring = true;
    l.stop_accepting.request_abort();
    if (l.count == 0) {
        l.empty.set();
    }
    sh.housekeeping.push_back(executor::current()->spawn(retirement(sh, l)));
}

// Takes a listener's settings from `cfg` (new connections use them).
void configure(shard_state& sh, listener_state& l, const std::shared_ptr<const config::config>& generation,
               const config::listener_config& cfg) {
    l.generation = generation;
    l.cfg = &cfg;
    l.echo.protocol = cfg.protocol;
    l.echo.max_pending = cfg.max_pending;
    l.echo.max_message = cfg.max_message;
    l.echo.splice = cfg.splice;
    l.upstream = nullptr;
    if (cfg.mode == config::listener_mode::proxy) {
        for (auto& up : sh.upstreams) {
            if (up->cfg().name == cfg.upstream) {
                l.upstream = up;
            }
        }
    }
    if (cfg.idle_timeout.count() > 0 && !l.sweeping) {
        sh.housekeeping.push_back(executor::current()->spawn(idle_sweep(l, *sh.counters, l.shared->per_shard[sh.id])));
    }
}

// Stops the checks of generations that are gone, starts those of new ones.
void apply_checks(shard_state& sh) {
    // Tasks of earlier reloads that have ended (stopped checks, retired
    // listeners) leave the list, so that it does not grow with reloads (a
    // dropped handle still reports an exception nobody saw).
    std::erase_if(sh.housekeeping, [](const join_handle<void>& h) { return h.done(); });
    std::vector<running_checks> kept;
    for (auto& c : sh.checks) {
        const bool current = std::any_of(sh.upstreams.begin(), sh.upstreams.end(),
                                         [&](const auto& u) { return &u->shared() == c.generation; });
        if (current) {
            kept.push_back(std::move(c));
        } else {
            c.stop->request_abort();
            sh.housekeeping.push_back(std::move(c.task));
        }
    }
    for (const auto& u : sh.upstreams) {
        const bool running = std::any_of(kept.begin(), kept.end(),
                                         [&](const running_checks& c) { return c.generation == &u->shared(); });
        if (!running && u->cfg().health_check.enabled) {
            running_checks c;
            c.generation = &u->shared();
            c.stop = std::make_shared<abort_source>();
            c.task = executor::current()->spawn(proxy::run_health_checks(u, sh.id, c.stop));
            kept.push_back(std::move(c));
        }
    }
    sh.checks = std::move(kept);
}

// Makes the shard serve what `r` says: upstreams first (listeners name
// them), then every listener, new, changed or retiring.
void apply(shard_state& sh, shard_reload& r) {
    std::vector<std::shared_ptr<proxy::upstream_local>> upstreams;
    for (const auto& gen : r.upstreams) {
        std::shared_ptr<proxy::upstream_local> local;
        for (const auto& running : sh.upstreams) {
            if (&running->shared() == gen.get()) {
                local = running;
            }
        }
        if (!local) {
            // A pair proxied by the one it replaces keeps that one alive.
            local = std::make_shared<proxy::upstream_local>(*gen, sh.id);
        }
        upstreams.push_back(std::move(local));
    }
    sh.upstreams = std::move(upstreams);
    apply_checks(sh);

    std::vector<listener_state*> current;
    for (auto& u : r.listeners) {
        listener_state* l = nullptr;
        for (auto& running : sh.listeners) {
            if (!running->retiring && running->cfg->name == u.cfg->name) {
                l = running.get();
            }
        }
        if (l && u.rebind) {
            retire(sh, *l);
            l = nullptr;
        }
        const bool fresh = !l;
        if (fresh) {
            auto made = std::make_unique<listener_state>();
            made->shared = u.shared;
            made->fds = std::move(u.fds);
            l = sh.listeners.emplace_back(std::move(made)).get();
        }
        configure(sh, *l, r.generation, *u.cfg);
        for (std::size_t i = 0; fresh && i < l->fds.size(); ++i) {
            l->accepts.push_back(executor::current()->spawn(accept_loop(sh, *l, l->fds[i].get())));
        }
        current.push_back(l);
    }
    std::vector<listener_state*> gone;
    for (auto& running : sh.listeners) {
        if (!running->retiring && std::find(current.begin(), current.end(), running.get()) == current.end()) {
            gone.push_back(running.get());
        }
    }
    for (listener_state* l : gone) {
        retire(sh, *l);
    }
}

// Counts the start-up latch down exactly once: when the shard serves, or on
// any way out before that (an error, an exception), so that the main thread
// never waits for a shard that will not come.
class start_signal {
public:
    explicit start_signal(const shard_plan& plan) : _plan(plan) {}
    start_signal(const start_signal&) = delete;
    ~start_signal() {
        if (!_done) {
            if (_plan.error->empty()) {
                *_plan.error = "failed while starting";
            }
            _plan.up->count_down();
        }
    }
    void serving() {
        _done = true;
        _plan.up->count_down();
    }
    void failed(std::string why) {
        *_plan.error = std::move(why);
        serving();
    }

private:
    const shard_plan& _plan;
    bool _done = false;
};

}  // namespace

std::string shard_counters::summary() const {
    return "connections accepted " + std::to_string(accepted.get()) + ", closed " + std::to_string(closed.get()) +
           ", refused " + std::to_string(refused.get()) + ", idle-closed " + std::to_string(idle_closed.get()) +
           ", errors " + std::to_string(errors.get()) + " (protocol " + std::to_string(protocol_errors.get()) +
           "); bytes in " + std::to_string(bytes_in.get()) + ", out " + std::to_string(bytes_out.get()) + ", spilled " +
           std::to_string(bytes_spilled.get()) + ", spliced " + std::to_string(bytes_spliced.get()) + "; ENOBUFS " +
           std::to_string(enobufs.get()) + ", backpressure pauses " + std::to_string(backpressure_pauses.get()) +
           ", accept back-offs " + std::to_string(accept_backoffs.get()) + ", log lines suppressed " +
           std::to_string(log_suppressed.get());
}

// The shard's sign of life for /healthz and the watchdog: a timestamp every
// heartbeat_period, until the drain's housekeeping stop. A task that holds
// the shard's loop (a stall) delays the beat, which is the point. Each beat
// also publishes the reactor's counters for the admin endpoint.
task<void> beat(shard_heartbeat* hb, reactor_stats* stats, const shard_state& sh, abort_source& stop) {
    executor* ex = executor::current();
    while (true) {
        if (hb) {
            hb->beat();
        }
        if (stats) {
            stats->publish(*ex, sh.buffers.get());
        }
        if (sh.access) {
            sh.access->flush();  // lines reach the log within a period
        }
        sleep_op s = sleep_for(heartbeat_period, stop);
        if (!co_await s) {
            co_return;
        }
    }
}

task<void> run_shard(shard_plan plan) {
    start_signal started(plan);
    shard_state sh;
    sh.id = plan.id;
    sh.runtime = plan.runtime;
    sh.counters = plan.counters;
    sh.log = std::make_unique<peer_log>(plan.counters->log_suppressed);
    executor* ex = executor::current();
    const auto& rt = *plan.runtime;
    auto buffers = buffer_ring::create(ex->main_ring(), recv_buffer_group, rt.recv_buffers, rt.recv_buffer_size);
    if (!buffers) {
        started.failed("cannot set up the receive buffer ring (" + std::to_string(rt.recv_buffers) + " x " +
                       config::format_size(rt.recv_buffer_size) +
                       "): " + buffer_ring::describe_error(buffers.error(), rt.recv_buffers));
        co_return;
    }
    sh.buffers = std::move(*buffers);
    sh.pipes = std::make_unique<splice_pipes>(max_splice_pipes);
    sh.transit = std::make_unique<transit_env>(*sh.buffers, *sh.counters, *sh.log, sh.pipes.get());
    std::optional<join_handle<void>> access_writer;
    if (plan.access_log_fd >= 0) {
        sh.access = std::make_unique<access_log>(plan.access_log_fd, plan.access_log_format, plan.access_reopen,
                                                 plan.counters->access_log_dropped);
        access_writer.emplace(ex->spawn(sh.access->run()));
    }
    apply(sh, *plan.initial);

    // The first beat before the shard counts as up: /healthz may be asked
    // as soon as the daemon is ready, before the beat task has run.
    if (plan.heartbeat) {
        plan.heartbeat->beat();
    }
    started.serving();
    auto heartbeat = ex->spawn(beat(plan.heartbeat, plan.reactor, sh, sh.stop_housekeeping));

    // The main thread's word: reloads, until it says drain.
    while (true) {
        std::uint64_t signalled = 0;
        auto r = co_await read(plan.control->wake_fd, &signalled, sizeof(signalled), 0);
        if (!r) {
            spdlog::error("control eventfd: {}; draining", r.error().message());
            break;
        }
        if (shard_reload* next = plan.control->reload.exchange(nullptr, std::memory_order_acquire)) {
            apply(sh, *next);
            const std::uint64_t one = 1;
            if (::write(plan.reload_ack_fd, &one, sizeof(one)) != sizeof(one)) {
                spdlog::error("cannot acknowledge the reload: {}", std::strerror(errno));
            }
        }
        if (plan.control->drain.load(std::memory_order_acquire)) {
            break;
        }
    }
    co_await drain(sh);
    if (access_writer) {
        sh.access->stop();
        co_await *access_writer;
    }
    co_await heartbeat;
    spdlog::info("drained: {}", sh.counters->summary());
    for (const auto& up : sh.upstreams) {
        spdlog::info("drained: {}", up->summary());
    }
    const std::uint64_t one = 1;
    if (::write(plan.done_fd, &one, sizeof(one)) != sizeof(one)) {
        spdlog::error("cannot tell the main thread this shard is done: {}", std::strerror(errno));
    }
    if (sh.connections > 0) {
        // Connections that ignored their abort (none should) still refer to
        // `sh`: keep it alive until they end or the pool stops, which
        // destroys their frames before this one (newest first).
        co_await sh.drained.wait();
    }
}

}  // namespace shardd::server
