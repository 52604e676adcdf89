#include "server/admin/endpoints.hh"

#include "server/admin/prometheus.hh"

#include "config/load.hh"

#include <algorithm>
#include <array>
#include <chrono>
#include <dirent.h>
#include <fstream>
#include <unistd.h>

namespace shardd::server::admin {

namespace {

// Every per-shard counter, once: /metrics and /stats both walk this table.
// A counter as /metrics (shardd_<metric>, a _total counter) and /stats
// (its key) show it, and where it lives in a struct of single-writer
// counters: the shard's, a listener's, an upstream's or a server's.
template <typename Counters>
struct counter_field {
    const char* metric;
    const char* json;
    const char* help;
    shard_counter Counters::*member;
};
constexpr std::array<counter_field<shard_counters>, 15> counter_fields{
    counter_field<shard_counters>{"connections_accepted_total", "accepted",
                                  "Connections accepted, all listeners of the shard.", &shard_counters::accepted},
    counter_field<shard_counters>{"connections_closed_total", "closed", "Connections closed, for any reason.",
                                  &shard_counters::closed},
    counter_field<shard_counters>{"connections_refused_total", "refused",
                                  "Connections accepted and closed at once: the listener was at max_connections.",
                                  &shard_counters::refused},
    counter_field<shard_counters>{"connections_idle_closed_total", "idle_closed",
                                  "Connections closed by idle_timeout (for a proxied pair: no byte either way).",
                                  &shard_counters::idle_closed},
    counter_field<shard_counters>{"connection_errors_total", "errors",
                                  "Connections that ended in an error (a reset, a broken pipe) or broke the protocol.",
                                  &shard_counters::errors},
    counter_field<shard_counters>{"protocol_errors_total", "protocol_errors",
                                  "Connections closed for not speaking the listener's protocol (sockperf framing).",
                                  &shard_counters::protocol_errors},
    counter_field<shard_counters>{"received_bytes_total", "bytes_in",
                                  "Bytes received from peers (clients and upstream servers).",
                                  &shard_counters::bytes_in},
    counter_field<shard_counters>{"sent_bytes_total", "bytes_out",
                                  "Bytes sent to peers (clients and upstream servers).", &shard_counters::bytes_out},
    counter_field<shard_counters>{
        "spilled_bytes_total", "bytes_spilled",
        "Bytes a peer did not take at once, copied from the receive pool into their connection's own "
        "memory.",
        &shard_counters::bytes_spilled},
    counter_field<shard_counters>{"spliced_bytes_total", "bytes_spliced",
                                  "Bytes of bulk streams relayed with splice(2), without a copy through the receive "
                                  "pool (part of received_bytes_total).",
                                  &shard_counters::bytes_spliced},
    counter_field<shard_counters>{
        "backpressure_pauses_total", "backpressure_pauses",
        "Times a connection stopped receiving because the other side did not take what it sent.",
        &shard_counters::backpressure_pauses},
    counter_field<shard_counters>{"recv_enobufs_total", "enobufs",
                                  "Receives that found the shard's receive buffer ring empty.",
                                  &shard_counters::enobufs},
    counter_field<shard_counters>{"accept_backoffs_total", "accept_backoffs",
                                  "Accept failures for lack of descriptors or memory, each followed by a back-off.",
                                  &shard_counters::accept_backoffs},
    counter_field<shard_counters>{"peer_log_suppressed_total", "log_suppressed",
                                  "Log lines caused by peers and left out by the rate limit (10 a second per shard).",
                                  &shard_counters::log_suppressed},
    counter_field<shard_counters>{"access_log_dropped_total", "access_log_dropped",
                                  "Access log lines dropped because the log's target was too slow or gone.",
                                  &shard_counters::access_log_dropped},
};

// The reactor's counters, as each shard publishes them with its heartbeat
// (server/reactor_stats.hh): at most 100 ms old.
constexpr std::array reactor_fields{
    counter_field<reactor_stats>{"reactor_parks_total", "parks",
                                 "Times the shard's loop had nothing to do and slept in the kernel.",
                                 &reactor_stats::parks},
    counter_field<reactor_stats>{"reactor_eventfd_wakeups_total", "eventfd_wakeups",
                                 "Times another thread woke the sleeping shard through its eventfd.",
                                 &reactor_stats::eventfd_wakeups},
    counter_field<reactor_stats>{
        "reactor_stalls_total", "stalls",
        "Task slices that held the shard's CPU longer than runtime.stall_threshold (each one logged).",
        &reactor_stats::stalls},
};
constexpr std::array queue_fields{
    std::pair{"task_queue_tasks_run_total", &reactor_stats::queue_stats::tasks_run},
    std::pair{"task_queue_slices_total", &reactor_stats::queue_stats::slices},
    std::pair{"task_queue_preemptions_total", &reactor_stats::queue_stats::preempted},
};
constexpr std::array queue_help{
    "Coroutine resumptions in the task queue.",
    "Times the scheduler picked the task queue.",
    "Slices of the task queue cut short because latency-sensitive work was waiting.",
};

double seconds_of(std::uint64_t ns) { return static_cast<double>(ns) / 1e9; }

std::size_t open_fds() {
    std::size_t n = 0;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (const dirent* e = readdir(d)) {
            n += e->d_name[0] != '.' ? 1 : 0;
        }
        closedir(d);
        n -= n > 0 ? 1 : 0;  // the directory's own descriptor
    }
    return n;
}

std::uint64_t resident_bytes() {
    std::ifstream f("/proc/self/statm");
    std::uint64_t size = 0, resident = 0;
    f >> size >> resident;
    return resident * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

double start_seconds(const admin_sources& src) {
    return std::chrono::duration<double>(src.started.time_since_epoch()).count();
}

const char* reason_phrase(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

}  // namespace

std::vector<unsigned> late_shards(const admin_sources& src) {
    return server::late_shards(*src.heartbeats, heartbeat_late);
}

namespace {

void reactor_metrics(exposition& e, const std::vector<reactor_stats>& reactors,
                     const std::vector<std::string>& shard_names) {
    e.family("shardd_io_uring_enter_total", "counter",
             "io_uring_enter(2) calls, by ring: main (sockets, timers), latency (latency-class tasks), poll (IOPOLL).");
    for (std::size_t i = 0; i < reactors.size(); ++i) {
        for (std::size_t r = 0; r < ring_names.size(); ++r) {
            e.sample("shardd_io_uring_enter_total", {{"shard", shard_names[i]}, {"ring", ring_names[r]}},
                     reactors[i].rings[r].enters.get());
        }
    }
    e.family("shardd_io_uring_cqes_total", "counter", "Completions reaped, by ring.");
    for (std::size_t i = 0; i < reactors.size(); ++i) {
        for (std::size_t r = 0; r < ring_names.size(); ++r) {
            e.sample("shardd_io_uring_cqes_total", {{"shard", shard_names[i]}, {"ring", ring_names[r]}},
                     reactors[i].rings[r].cqes.get());
        }
    }
    for (const counter_field<reactor_stats>& f : reactor_fields) {
        const std::string name = std::string("shardd_") + f.metric;
        e.family(name, "counter", f.help);
        for (std::size_t i = 0; i < reactors.size(); ++i) {
            e.sample(name, {{"shard", shard_names[i]}}, (reactors[i].*f.member).get());
        }
    }
    e.family("shardd_recv_buffers_free", "gauge", "Free buffers in the shard's receive buffer ring.");
    for (std::size_t i = 0; i < reactors.size(); ++i) {
        e.sample("shardd_recv_buffers_free", {{"shard", shard_names[i]}}, reactors[i].free_buffers.get());
    }
    e.family("shardd_recv_buffers", "gauge", "Buffers in the shard's receive buffer ring (runtime.recv_buffers).");
    for (std::size_t i = 0; i < reactors.size(); ++i) {
        e.sample("shardd_recv_buffers", {{"shard", shard_names[i]}}, reactors[i].total_buffers.get());
    }
    // Per task queue: names come with the count (reactor_stats.hh).
    auto each_queue = [&](auto&& fn) {
        for (std::size_t i = 0; i < reactors.size(); ++i) {
            const unsigned n = reactors[i].queue_count.load(std::memory_order_acquire);
            for (unsigned q = 0; q < n; ++q) {
                fn(i, std::string_view(reactors[i].queues[q].name.data()), reactors[i].queues[q]);
            }
        }
    };
    e.family("shardd_task_queue_runtime_seconds_total", "counter", "CPU time the scheduler gave the task queue.");
    each_queue([&](std::size_t i, std::string_view name, const reactor_stats::queue_stats& q) {
        e.sample("shardd_task_queue_runtime_seconds_total", {{"shard", shard_names[i]}, {"queue", name}},
                 seconds_of(q.runtime_ns.get()));
    });
    for (std::size_t f = 0; f < queue_fields.size(); ++f) {
        const std::string metric = std::string("shardd_") + queue_fields[f].first;
        e.family(metric, "counter", queue_help[f]);
        each_queue([&](std::size_t i, std::string_view name, const reactor_stats::queue_stats& q) {
            e.sample(metric, {{"shard", shard_names[i]}, {"queue", name}}, (q.*queue_fields[f].second).get());
        });
    }
}

}  // namespace

namespace {

// Per upstream and server: the counters each shard keeps in the upstream's
// current generation (server/proxy/upstream.hh), and what the shards share
// (open connections, health). A reload that changes an upstream starts a
// new generation, whose counters start at 0 (Prometheus' rate() reads that
// as a reset).
constexpr std::array server_fields{
    counter_field<proxy::server_counters>{"upstream_connections_total", "connections",
                                          "Connections made to the server.", &proxy::server_counters::connections},
    counter_field<proxy::server_counters>{"upstream_connect_refused_total", "connect_refused",
                                          "Connects the server refused (ECONNREFUSED).",
                                          &proxy::server_counters::connect_refused},
    counter_field<proxy::server_counters>{"upstream_connect_timeouts_total", "connect_timeouts",
                                          "Connects that took longer than the upstream's connect_timeout.",
                                          &proxy::server_counters::connect_timeouts},
    counter_field<proxy::server_counters>{"upstream_connect_errors_total", "connect_errors",
                                          "Connects that failed otherwise.", &proxy::server_counters::connect_errors},
    counter_field<proxy::server_counters>{"upstream_sent_bytes_total", "bytes_to",
                                          "Bytes relayed from clients to the server.",
                                          &proxy::server_counters::bytes_to},
    counter_field<proxy::server_counters>{"upstream_received_bytes_total", "bytes_from",
                                          "Bytes relayed from the server to clients.",
                                          &proxy::server_counters::bytes_from},
    counter_field<proxy::server_counters>{"upstream_checks_total", "checks", "Active health checks of the server run.",
                                          &proxy::server_counters::checks},
    counter_field<proxy::server_counters>{"upstream_check_failures_total", "check_failures",
                                          "Active health checks of the server that failed.",
                                          &proxy::server_counters::check_failures},
    counter_field<proxy::server_counters>{"upstream_marked_down_total", "marked_down",
                                          "Times the server went from up to down (checks or passive health).",
                                          &proxy::server_counters::marked_down},
    counter_field<proxy::server_counters>{"upstream_marked_up_total", "marked_up", "Times the server came back up.",
                                          &proxy::server_counters::marked_up},
};
constexpr std::array upstream_fields{
    counter_field<proxy::upstream_counters>{"upstream_retries_total", "retries",
                                            "Connects tried again on another server.",
                                            &proxy::upstream_counters::retries},
    counter_field<proxy::upstream_counters>{"upstream_no_server_total", "no_server",
                                            "Clients closed because every server was down or failed to connect.",
                                            &proxy::upstream_counters::no_server},
    counter_field<proxy::upstream_counters>{"upstream_resets_total", "resets",
                                            "Pairs ended by a reset from one side, relayed to the other.",
                                            &proxy::upstream_counters::resets},
    counter_field<proxy::upstream_counters>{"upstream_half_close_timeouts_total", "half_close_timeouts",
                                            "Pairs closed because half_close_timeout passed after one side's FIN.",
                                            &proxy::upstream_counters::half_close_timeouts},
    counter_field<proxy::upstream_counters>{"upstream_queued_total", "queued",
                                            "Clients that waited for a server under max_connections.",
                                            &proxy::upstream_counters::queued},
    counter_field<proxy::upstream_counters>{"upstream_queue_full_total", "queue_full",
                                            "Clients closed at once: max_queue already waited.",
                                            &proxy::upstream_counters::queue_full},
    counter_field<proxy::upstream_counters>{"upstream_queue_timeouts_total", "queue_timeouts",
                                            "Clients closed after queue_timeout in the queue.",
                                            &proxy::upstream_counters::queue_timeouts},
};

// Per listener and shard. A listener a reload moves to new addresses starts
// again at 0 (a new one, to Prometheus' rate(): a reset).
constexpr std::array listener_fields{
    counter_field<listener_counters>{"listener_connections_accepted_total", "accepted",
                                     "Connections the listener accepted.", &listener_counters::accepted},
    counter_field<listener_counters>{"listener_connections_closed_total", "closed",
                                     "Connections of the listener closed, for any reason.", &listener_counters::closed},
    counter_field<listener_counters>{"listener_connections_refused_total", "refused",
                                     "Connections accepted and closed at once: the listener was at max_connections.",
                                     &listener_counters::refused},
    counter_field<listener_counters>{"listener_connections_idle_closed_total", "idle_closed",
                                     "Connections of the listener closed by idle_timeout.",
                                     &listener_counters::idle_closed},
    counter_field<listener_counters>{
        "listener_connection_errors_total", "errors",
        "Connections of the listener that ended in a reset, a broken pipe or a protocol error.",
        &listener_counters::errors},
    counter_field<listener_counters>{"listener_connections_denied_total", "denied",
                                     "Connections closed unserved: their source is denied (allow, deny).",
                                     &listener_counters::denied},
    counter_field<listener_counters>{
        "listener_connections_source_limited_total", "source_limited",
        "Connections closed unserved: over max_connections_per_source or connection_rate_per_source.",
        &listener_counters::source_limited},
    counter_field<listener_counters>{"listener_source_table_full_total", "source_table_full",
                                     "Connections admitted uncounted because the per-source table was full.",
                                     &listener_counters::source_table_full},
    counter_field<listener_counters>{
        "listener_proxy_header_rejected_total", "proxy_rejected",
        "Connections closed unserved: an untrusted peer, or a missing, malformed or late PROXY header.",
        &listener_counters::proxy_rejected},
};

void listener_metrics(exposition& e,
                      const std::vector<std::pair<std::string, std::shared_ptr<listener_shared>>>& listeners,
                      const std::vector<std::string>& shard_names) {
    e.family("shardd_listener_connections_active", "gauge",
             "Connections open on the listener now, over all shards (what max_connections bounds).");
    for (const auto& [name, shared] : listeners) {
        e.sample("shardd_listener_connections_active", {{"listener", name}},
                 shared->connections.load(std::memory_order_relaxed));
    }
    for (const counter_field<listener_counters>& f : listener_fields) {
        const std::string metric = std::string("shardd_") + f.metric;
        e.family(metric, "counter", f.help);
        for (const auto& [name, shared] : listeners) {
            for (std::size_t s = 0; s < shard_names.size(); ++s) {
                e.sample(metric, {{"listener", name}, {"shard", shard_names[s]}},
                         (shared->per_shard[s].*f.member).get());
            }
        }
    }
}

void upstream_metrics(exposition& e, const std::vector<std::shared_ptr<proxy::upstream_shared>>& ups,
                      const std::vector<std::string>& shard_names) {
    const std::int64_t now = steady_now_ns();
    e.family("shardd_upstream_server_up", "gauge",
             "1 while the server is not marked down by its health checks or by passive health (max_fails in "
             "fail_timeout).");
    for (const auto& u : ups) {
        for (std::size_t i = 0; i < u->cfg->servers.size(); ++i) {
            const bool down = proxy::is_down(*u->servers[i], now, u->cfg->health_check.enabled);
            e.sample("shardd_upstream_server_up",
                     {{"upstream", u->cfg->name}, {"server", u->cfg->servers[i].address.to_string()}},
                     std::uint64_t{down ? 0u : 1u});
        }
    }
    e.family("shardd_upstream_server_active", "gauge", "Connections open to the server now, over all shards.");
    for (const auto& u : ups) {
        for (std::size_t i = 0; i < u->cfg->servers.size(); ++i) {
            e.sample("shardd_upstream_server_active",
                     {{"upstream", u->cfg->name}, {"server", u->cfg->servers[i].address.to_string()}},
                     u->servers[i]->active.load(std::memory_order_relaxed));
        }
    }
    for (const counter_field<proxy::server_counters>& f : server_fields) {
        const std::string name = std::string("shardd_") + f.metric;
        e.family(name, "counter", f.help);
        for (const auto& u : ups) {
            const std::size_t n = u->cfg->servers.size();
            for (std::size_t s = 0; s < u->shards && s < shard_names.size(); ++s) {
                for (std::size_t i = 0; i < n; ++i) {
                    e.sample(name,
                             {{"shard", shard_names[s]},
                              {"upstream", u->cfg->name},
                              {"server", u->cfg->servers[i].address.to_string()}},
                             (u->counters[s * n + i].*f.member).get());
                }
            }
        }
    }
    for (const counter_field<proxy::upstream_counters>& f : upstream_fields) {
        const std::string name = std::string("shardd_") + f.metric;
        e.family(name, "counter", f.help);
        for (const auto& u : ups) {
            for (std::size_t s = 0; s < u->shards && s < shard_names.size(); ++s) {
                e.sample(name, {{"shard", shard_names[s]}, {"upstream", u->cfg->name}}, (u->totals[s].*f.member).get());
            }
        }
    }
    e.family("shardd_upstream_queued_seconds_total", "counter", "Time clients spent waiting for a server slot.");
    for (const auto& u : ups) {
        for (std::size_t s = 0; s < u->shards && s < shard_names.size(); ++s) {
            e.sample("shardd_upstream_queued_seconds_total", {{"shard", shard_names[s]}, {"upstream", u->cfg->name}},
                     seconds_of(u->totals[s].queued_ns.get()));
        }
    }
    e.family("shardd_upstream_queue_waiting", "gauge", "Clients waiting for a server slot now.");
    for (const auto& u : ups) {
        for (std::size_t s = 0; s < u->shards && s < shard_names.size(); ++s) {
            e.sample("shardd_upstream_queue_waiting", {{"shard", shard_names[s]}, {"upstream", u->cfg->name}},
                     std::uint64_t{u->queues[s].waiting.load(std::memory_order_relaxed)});
        }
    }
}

std::string listeners_json(const std::vector<std::pair<std::string, std::shared_ptr<listener_shared>>>& listeners,
                           std::size_t shards) {
    std::string out = ",\"listeners\":[";
    for (std::size_t k = 0; k < listeners.size(); ++k) {
        const auto& [name, shared] = listeners[k];
        // Listener names are checked ([A-Za-z0-9_.-]): no escaping needed.
        out += (k ? ",{" : "{") + std::string("\"name\":\"") + name +
               "\",\"active\":" + std::to_string(shared->connections.load(std::memory_order_relaxed));
        for (const counter_field<listener_counters>& f : listener_fields) {
            std::uint64_t total = 0;
            for (std::size_t s = 0; s < shards; ++s) {
                total += (shared->per_shard[s].*f.member).get();
            }
            out += ",\"" + std::string(f.json) + "\":" + std::to_string(total);
        }
        out += "}";
    }
    return out + "]";
}

std::string upstreams_json(const std::vector<std::shared_ptr<proxy::upstream_shared>>& ups) {
    const std::int64_t now = steady_now_ns();
    std::string out = ",\"upstreams\":[";
    for (std::size_t k = 0; k < ups.size(); ++k) {
        const auto& u = ups[k];
        const std::size_t n = u->cfg->servers.size();
        // Upstream names are checked ([A-Za-z0-9_.-]), addresses are ours.
        out += (k ? ",{" : "{") + std::string("\"name\":\"") + u->cfg->name + "\"";
        for (const counter_field<proxy::upstream_counters>& f : upstream_fields) {
            std::uint64_t total = 0;
            for (std::size_t s = 0; s < u->shards; ++s) {
                total += (u->totals[s].*f.member).get();
            }
            out += ",\"" + std::string(f.json) + "\":" + std::to_string(total);
        }
        out += ",\"servers\":[";
        for (std::size_t i = 0; i < n; ++i) {
            out +=
                (i ? ",{" : "{") + std::string("\"address\":\"") + u->cfg->servers[i].address.to_string() +
                "\",\"up\":" + (proxy::is_down(*u->servers[i], now, u->cfg->health_check.enabled) ? "false" : "true") +
                ",\"active\":" + std::to_string(u->servers[i]->active.load(std::memory_order_relaxed));
            for (const counter_field<proxy::server_counters>& f : server_fields) {
                std::uint64_t total = 0;
                for (std::size_t s = 0; s < u->shards; ++s) {
                    total += (u->counters[s * n + i].*f.member).get();
                }
                out += ",\"" + std::string(f.json) + "\":" + std::to_string(total);
            }
            out += std::string(",\"backup\":") + (u->cfg->servers[i].backup ? "true" : "false") +
                   ",\"draining\":" + (u->cfg->servers[i].drain || u->cfg->servers[i].weight == 0 ? "true" : "false") +
                   "}";
        }
        out += "]}";
    }
    return out + "]";
}

}  // namespace

std::string metrics_text(const admin_sources& src) {
    exposition e;
    e.family("shardd_build_info", "gauge", "Always 1; the labels say what runs.");
    e.sample("shardd_build_info",
             {{"version", SHARDD_VERSION},
              {"backend", src.backend},
              {"liburing", SHARDD_LIBURING_VERSION},
              {"ring_flags", src.ring_flags}},
             std::uint64_t{1});
    e.family("shardd_start_time_seconds", "gauge", "When the process started, in seconds since the epoch.");
    e.sample("shardd_start_time_seconds", {}, start_seconds(src));
    e.family("shardd_open_fds", "gauge", "Open file descriptors of the process.");
    e.sample("shardd_open_fds", {}, static_cast<std::uint64_t>(open_fds()));
    e.family("shardd_resident_memory_bytes", "gauge", "Resident set size of the process.");
    e.sample("shardd_resident_memory_bytes", {}, resident_bytes());
    e.family("shardd_ready", "gauge", "1 while serving; 0 while starting or draining (as /readyz).");
    e.sample("shardd_ready", {}, std::uint64_t{src.phase->load() == daemon_phase::ready ? 1u : 0u});

    const std::vector<unsigned> late = late_shards(src);
    std::vector<std::string> shard_names;
    for (std::size_t i = 0; i < src.counters->size(); ++i) {
        shard_names.push_back(std::to_string(i));
    }
    e.family("shardd_shard_up", "gauge",
             "1 while the shard's heartbeat is fresh (a beat every 100ms, late after 1s); 0 when it is stuck.");
    for (std::size_t i = 0; i < shard_names.size(); ++i) {
        const bool up = std::find(late.begin(), late.end(), i) == late.end();
        e.sample("shardd_shard_up", {{"shard", shard_names[i]}}, std::uint64_t{up ? 1u : 0u});
    }
    e.family("shardd_connections_active", "gauge", "Connections open now (accepted and not yet closed).");
    for (std::size_t i = 0; i < shard_names.size(); ++i) {
        e.sample("shardd_connections_active", {{"shard", shard_names[i]}}, (*src.counters)[i].active());
    }
    for (const counter_field<shard_counters>& f : counter_fields) {
        const std::string name = std::string("shardd_") + f.metric;
        e.family(name, "counter", f.help);
        for (std::size_t i = 0; i < shard_names.size(); ++i) {
            e.sample(name, {{"shard", shard_names[i]}}, ((*src.counters)[i].*f.member).get());
        }
    }
    if (src.reactors) {
        reactor_metrics(e, *src.reactors, shard_names);
    }
    if (src.live) {
        listener_metrics(e, src.live->listeners(), shard_names);
        upstream_metrics(e, src.live->upstreams(), shard_names);
    }
    return e.take();
}

namespace {

// One shard's reactor counters as JSON members (",\"reactor\":{...}").
std::string reactor_json(const reactor_stats& r) {
    std::string out = ",\"reactor\":{\"rings\":{";
    for (std::size_t k = 0; k < ring_names.size(); ++k) {
        out += (k ? ",\"" : "\"") + std::string(ring_names[k]) +
               "\":{\"enters\":" + std::to_string(r.rings[k].enters.get()) +
               ",\"cqes\":" + std::to_string(r.rings[k].cqes.get()) + "}";
    }
    out += "}";
    for (const counter_field<reactor_stats>& f : reactor_fields) {
        out += ",\"" + std::string(f.json) + "\":" + std::to_string((r.*f.member).get());
    }
    out += ",\"recv_buffers_free\":" + std::to_string(r.free_buffers.get()) +
           ",\"recv_buffers\":" + std::to_string(r.total_buffers.get()) + ",\"queues\":[";
    const unsigned n = r.queue_count.load(std::memory_order_acquire);
    for (unsigned q = 0; q < n; ++q) {
        const auto& qs = r.queues[q];
        // Queue names are the program's own ("default"), never a peer's:
        // plain characters, no escaping needed.
        out += (q ? ",{" : "{") + std::string("\"name\":\"") + qs.name.data() +
               "\",\"runtime_seconds\":" + std::to_string(seconds_of(qs.runtime_ns.get())) +
               ",\"tasks_run\":" + std::to_string(qs.tasks_run.get()) +
               ",\"slices\":" + std::to_string(qs.slices.get()) +
               ",\"preemptions\":" + std::to_string(qs.preempted.get()) + "}";
    }
    return out + "]}";
}

}  // namespace

std::string stats_json(const admin_sources& src) {
    std::string out = "{\"version\":\"" SHARDD_VERSION "\",\"backend\":\"" + src.backend +
                      "\",\"start_time_seconds\":" + std::to_string(start_seconds(src)) +
                      ",\"open_fds\":" + std::to_string(open_fds()) +
                      ",\"resident_memory_bytes\":" + std::to_string(resident_bytes()) +
                      ",\"ready\":" + (src.phase->load() == daemon_phase::ready ? "true" : "false") + ",\"shards\":[";
    const std::vector<unsigned> late = late_shards(src);
    for (std::size_t i = 0; i < src.counters->size(); ++i) {
        const shard_counters& c = (*src.counters)[i];
        const bool up = std::find(late.begin(), late.end(), i) == late.end();
        out += (i ? ",{" : "{") + std::string("\"shard\":") + std::to_string(i) + ",\"up\":" + (up ? "true" : "false") +
               ",\"active\":" + std::to_string(c.active());
        for (const counter_field<shard_counters>& f : counter_fields) {
            out += ",\"" + std::string(f.json) + "\":" + std::to_string((c.*f.member).get());
        }
        if (src.reactors) {
            out += reactor_json((*src.reactors)[i]);
        }
        out += "}";
    }
    out += "]";
    if (src.live) {
        out += listeners_json(src.live->listeners(), src.counters->size());
        out += upstreams_json(src.live->upstreams());
    }
    return out + "}\n";
}

response refusal(int status, const std::string& reason) {
    response r;
    r.status = status;
    r.body = reason + "\n";
    return r;
}

response answer(const http_request& req, const admin_sources& src) {
    const std::string_view path = req.path();
    const bool known = path == "/metrics" || path == "/healthz" || path == "/readyz" || path == "/stats" ||
                       path == "/config" || path == "/";
    if (!known) {
        return refusal(404, "not found: try /metrics, /healthz, /readyz, /stats or /config");
    }
    if (req.method != "GET" && req.method != "HEAD") {
        response r = refusal(405, "method not allowed: " + req.method);
        r.fields.emplace_back("Allow", "GET, HEAD");
        return r;
    }
    response r;
    if (path == "/metrics") {
        r.content_type = std::string(exposition_content_type);
        r.body = metrics_text(src);
    } else if (path == "/stats") {
        r.content_type = "application/json";
        r.body = stats_json(src);
    } else if (path == "/config") {
        r.content_type = "application/toml";
        r.body = config::to_toml(*src.live->current());
    } else if (path == "/readyz") {
        const daemon_phase p = src.phase->load();
        r.status = p == daemon_phase::ready ? 200 : 503;
        r.body = p == daemon_phase::ready ? "ready\n" : p == daemon_phase::starting ? "starting\n" : "draining\n";
    } else if (path == "/healthz") {
        const std::vector<unsigned> late = late_shards(src);
        if (late.empty()) {
            r.body = "ok\n";
        } else {
            r.status = 503;
            r.body = "late heartbeat from shard";
            for (unsigned s : late) {
                r.body += " " + std::to_string(s);
            }
            r.body += "\n";
        }
    } else {
        r.body = "shardd " SHARDD_VERSION ": /metrics /healthz /readyz /stats /config\n";
    }
    return r;
}

std::string render(const response& r, bool head, bool keep_alive) {
    std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + reason_phrase(r.status) +
                      "\r\nServer: shardd/" SHARDD_VERSION "\r\nContent-Type: " + r.content_type +
                      "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\nCache-Control: no-store\r\n";
    for (const auto& [k, v] : r.fields) {
        out += k + ": " + v + "\r\n";
    }
    out += keep_alive ? "\r\n" : "Connection: close\r\n\r\n";
    if (!head) {
        out += r.body;
    }
    return out;
}

}  // namespace shardd::server::admin
