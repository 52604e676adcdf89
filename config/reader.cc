#include "config/reader.hh"

#include "config/reader_impl.hh"

namespace shardd::config {

namespace internal {

void reader::read_runtime(const toml::table& t, const overrides& over, runtime_config& rt) {
    check_keys(t, "runtime", runtime_keys);
    // The file's value must be well-formed even when --cpus overrides it; only
    // the effective value is checked against the allowed set.
    with(t, "runtime", "cpus", [&](const toml::node& n, const std::string& path) {
        if (!n.is_string()) {
            error(pos_of(n.source()), path, "expected \"all\" or a CPU list like \"0-3,6\", found " + describe(n));
            return;
        }
        std::string_view text = n.as_string()->get();
        if (text == "all") {
            rt.all_cpus = true;
            return;
        }
        auto parsed = parse_cpu_list(text);
        if (!parsed) {
            error(pos_of(n.source()), path, parsed.error());
            return;
        }
        rt.all_cpus = false;
        rt.cpus = *parsed;
        if (over.cpus) {
            return;
        }
        for (unsigned cpu : parsed->cpus()) {
            if (!_allowed.contains(cpu)) {
                error(pos_of(n.source()), path,
                      "CPU " + std::to_string(cpu) + " is not available to this process (allowed: " +
                          _allowed.to_string() + "), found " + describe(n));
                return;
            }
        }
    });
    if (over.cpus) {
        if (*over.cpus == "all") {
            rt.all_cpus = true;
        } else if (auto parsed = parse_cpu_list(*over.cpus); !parsed) {
            cli_error("--cpus", parsed.error());
        } else {
            rt.all_cpus = false;
            rt.cpus = *parsed;
            for (unsigned cpu : parsed->cpus()) {
                if (!_allowed.contains(cpu)) {
                    cli_error("--cpus", "CPU " + std::to_string(cpu) + " is not available to this process (allowed: " +
                                            _allowed.to_string() + ")");
                    break;
                }
            }
        }
    }
    read_enum(t, "runtime", "backend", rt.backend, backend_names);
    read_size(t, "runtime", "io_memory", rt.io_memory, min_io_memory, max_io_memory);
    read_integer(t, "runtime", "ring_entries", rt.ring_entries, min_ring_entries, max_ring_entries, true);
    read_duration(t, "runtime", "spin_before_park", rt.spin_before_park, 0s, 1s);
    read_duration(t, "runtime", "preempt_timer", rt.preempt_timer, 10us, 1s);
    read_duration(t, "runtime", "stall_threshold", rt.stall_threshold, 0s, 1h);
    read_duration(t, "runtime", "shutdown_timeout", rt.shutdown_timeout, 0s, 1h);
    read_size(t, "runtime", "recv_buffer_size", rt.recv_buffer_size, min_recv_buffer, max_recv_buffer);
    read_integer(t, "runtime", "recv_buffers", rt.recv_buffers, 1, max_recv_buffers, true);
}

void reader::read_listener(const toml::table& t, const std::string& prefix, config& cfg) {
    check_keys(t, prefix, listener_keys);
    listener_config l;
    if (auto name = read_name(t, prefix, "listener", _listener_names)) {
        l.name = *name;
    }
    read_addresses(t, prefix, "listen", l.listen, false);
    // Two listeners on one address would silently split its connections
    // between them through SO_REUSEPORT: refuse it.
    if (const toml::node* n = t.get("listen")) {
        for (std::size_t i = 0; i < l.listen.size(); ++i) {
            const auto& a = l.listen[i];
            const toml::node* item = n->is_array() ? n->as_array()->get(i) : n;
            const position at = pos_of(item ? item->source() : n->source());
            const std::string path = prefix + ".listen" + (n->is_array() ? "[" + std::to_string(i) + "]" : "");
            for (const auto& other : cfg.listeners) {
                for (const auto& b : other.listen) {
                    if (overlaps(a, b)) {
                        error(at, path,
                              "address " + a.to_string() +
                                  (a == b ? " is already used" : " overlaps " + b.to_string()) + " by listener \"" +
                                  other.name + "\"");
                    }
                }
            }
            if (cfg.admin.listen && overlaps(a, *cfg.admin.listen)) {
                error(at, path, "address " + a.to_string() + " is also admin.listen");
            }
        }
    }

    if (!t.get("mode")) {
        error(pos_of(t.source()), prefix + ".mode", "missing; expected " + one_of(mode_names));
    }
    read_enum(t, prefix, "mode", l.mode, mode_names);
    const bool mode_ok = t.get("mode") && t.get("mode")->is_string() &&
                         parse_enum(mode_names, t.get("mode")->as_string()->get()).has_value();
    read_enum(t, prefix, "protocol", l.protocol, protocol_names);
    with(t, prefix, "upstream", [&](const toml::node& n, const std::string& path) {
        if (!n.is_string()) {
            error(pos_of(n.source()), path, "expected the name of an [[upstream]], found " + describe(n));
            return;
        }
        l.upstream = std::string(n.as_string()->get());
    });
    if (mode_ok && l.mode == listener_mode::proxy) {
        if (const toml::node* p = t.get("protocol")) {
            error(pos_of(p->source()), prefix + ".protocol",
                  "only echo listeners take a protocol; this listener has mode \"proxy\"");
        }
        if (!t.get("upstream")) {
            error(pos_of(t.source()), prefix + ".upstream",
                  "missing; a proxy listener needs the name of an [[upstream]]");
        } else if (!l.upstream.empty() && !_upstream_names.contains(l.upstream)) {
            std::vector<std::string_view> names;
            for (const auto& [name, _] : _upstream_names) {
                names.push_back(name);
            }
            std::string msg =
                "expected the name of an [[upstream]], found \"" + l.upstream + "\", which is not defined";
            if (auto hint = closest(l.upstream, names)) {
                msg += " (did you mean \"" + *hint + "\"?)";
            }
            error(pos_of(t.get("upstream")->source()), prefix + ".upstream", msg);
        } else {
            _upstream_used[l.upstream] = true;
        }
    }
    if (mode_ok && l.mode == listener_mode::echo) {
        if (const toml::node* u = t.get("upstream")) {
            error(pos_of(u->source()), prefix + ".upstream",
                  "only proxy listeners take an upstream; this listener has mode \"echo\"");
        }
    }
    read_integer(t, prefix, "max_connections", l.max_connections, 1, 10'000'000);
    read_duration(t, prefix, "idle_timeout", l.idle_timeout, min_idle_timeout, max_idle_timeout, true);
    read_integer(t, prefix, "backlog", l.backlog, 1, max_backlog);
    read_bool(t, prefix, "nodelay", l.nodelay);
    read_bool(t, prefix, "splice", l.splice);
    read_size(t, prefix, "max_pending", l.max_pending, 1 * KiB, 1 * GiB);
    read_size(t, prefix, "max_message", l.max_message, sockperf_header, max_message_limit);
    if (const toml::node* m = t.get("max_message"); m && mode_ok && l.protocol != echo_protocol::sockperf) {
        warning(pos_of(m->source()), prefix + ".max_message", "has no effect: only sockperf listeners parse messages");
    }
    read_duration(t, prefix, "half_close_timeout", l.half_close_timeout, min_idle_timeout, max_idle_timeout, true);
    if (const toml::node* h = t.get("half_close_timeout"); h && mode_ok && l.mode != listener_mode::proxy) {
        warning(pos_of(h->source()), prefix + ".half_close_timeout",
                "has no effect: only proxy listeners relay a half-closed connection");
    }
    read_listener_controls(t, prefix, l);
    cfg.listeners.push_back(std::move(l));
}

// A warning per listener whose max_pending the receive pool covers fewer than
// min_pool_rounds times. It sits where the operator made the mismatch: the
// listener's max_pending when the file sets it; else the runtime key set
// below its default, which shrank the pool (the defaults alone hold 64
// rounds of the default max_pending, so there is one); else, as a last
// resort, the [[listener]] table. The path is always the listener's
// max_pending, the promise the pool cannot keep, so that each listener's
// warning names its own.
void reader::warn_small_pool(const toml::table& root, const config& cfg) {
    const auto& rt = cfg.runtime;
    const runtime_config defaults;
    const std::uint64_t pool = std::uint64_t{rt.recv_buffers} * rt.recv_buffer_size;
    const toml::node* shrunk = nullptr;
    if (rt.recv_buffers < defaults.recv_buffers) {
        shrunk = root.at_path("runtime.recv_buffers").node();
    } else if (rt.recv_buffer_size < defaults.recv_buffer_size) {
        shrunk = root.at_path("runtime.recv_buffer_size").node();
    }
    for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
        const auto& l = cfg.listeners[i];
        // Below one buffer is already an error (the cross-check above).
        if (l.max_pending < rt.recv_buffer_size || pool >= min_pool_rounds * l.max_pending) {
            continue;
        }
        const std::string prefix = "listener[" + std::to_string(i) + "]";
        const toml::node* set = root.at_path(prefix + ".max_pending").node();
        const toml::node* at = set ? set : shrunk ? shrunk : root.at_path(prefix).node();
        warning(at ? pos_of(at->source()) : position{}, prefix + ".max_pending",
                format_size(l.max_pending) + (set ? "" : " (the default)") +
                    " per connection and round; the receive pool runtime.recv_buffers x recv_buffer_size is " +
                    std::to_string(rt.recv_buffers) + " x " + format_size(rt.recv_buffer_size) + " = " +
                    format_size(pool) + " per shard, less than " + std::to_string(min_pool_rounds) +
                    " rounds: connections will wait for buffers under load");
    }
}

void reader::read(const toml::table& root, const overrides& over, config& cfg) {
    check_keys(root, "", top_keys);
    if (const toml::table* rt = section(root, "runtime")) {
        read_runtime(*rt, over, cfg.runtime);
    } else {
        read_runtime(toml::table{}, over, cfg.runtime);
    }
    if (const toml::table* lg = section(root, "log")) {
        check_keys(*lg, "log", log_keys);
        read_enum(*lg, "log", "level", cfg.log.level, log_level_names);
        read_enum(*lg, "log", "format", cfg.log.format, log_format_names);
    }
    if (over.log_level) {
        if (auto lvl = parse_enum(log_level_names, *over.log_level)) {
            cfg.log.level = *lvl;
        } else {
            cli_error("--log-level", lvl.error());
        }
    }
    if (const toml::table* ad = section(root, "admin")) {
        check_keys(*ad, "admin", admin_keys);
        with(*ad, "admin", "listen",
             [&](const toml::node& n, const std::string& path) { cfg.admin.listen = address_of(n, path, false); });
    }
    if (const toml::table* al = section(root, "access_log")) {
        check_keys(*al, "access_log", access_log_keys);
        with(*al, "access_log", "path", [&](const toml::node& n, const std::string& path) {
            const std::string_view text = n.is_string() ? n.as_string()->get() : std::string_view();
            if (!n.is_string() || (text != "stderr" && (text.empty() || text.front() != '/'))) {
                error(pos_of(n.source()), path, "expected \"stderr\" or an absolute file path, found " + describe(n));
                return;
            }
            cfg.access_log.path = std::string(text);
        });
        read_enum(*al, "access_log", "format", cfg.access_log.format, log_format_names);
    }
    // Upstreams first, so listeners can refer to them wherever they stand.
    each_table(root, "upstream",
               [&](const toml::table& t, const std::string& prefix) { read_upstream(t, prefix, cfg); });
    each_table(root, "listener",
               [&](const toml::table& t, const std::string& prefix) { read_listener(t, prefix, cfg); });

    if (!root.get("listener")) {
        error({}, "listener", "missing; expected at least one [[listener]] table");
    }
    for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
        const auto& l = cfg.listeners[i];
        if (l.max_pending < cfg.runtime.recv_buffer_size) {
            const toml::node* n = root.at_path("listener[" + std::to_string(i) + "].max_pending").node();
            error(n ? pos_of(n->source()) : position{}, "listener[" + std::to_string(i) + "].max_pending",
                  "expected at least runtime.recv_buffer_size (" + format_size(cfg.runtime.recv_buffer_size) +
                      "), found " + format_size(l.max_pending));
        }
    }
    warn_small_pool(root, cfg);
    for (std::size_t i = 0; i < cfg.upstreams.size(); ++i) {
        const auto& up = cfg.upstreams[i];
        // Draining every server is a maintenance step, not a mistake; but
        // say what it does.
        const bool usable = std::any_of(up.servers.begin(), up.servers.end(),
                                        [](const upstream_server& s) { return s.weight > 0 && !s.drain; });
        if (!up.servers.empty() && !usable) {
            const toml::node* n = root.at_path("upstream[" + std::to_string(i) + "].servers").node();
            warning(n ? pos_of(n->source()) : position{}, "upstream[" + std::to_string(i) + "].servers",
                    "every server is drained or of weight 0: clients of upstream \"" + up.name +
                        "\" will be closed (no_server)");
        }
        if (!up.name.empty() && !_upstream_used.contains(up.name)) {
            const toml::node* n = root.at_path("upstream[" + std::to_string(i) + "].name").node();
            warning(n ? pos_of(n->source()) : position{}, "upstream[" + std::to_string(i) + "].name",
                    "upstream \"" + up.name + "\" is not used by any listener");
        }
    }
}

void read_document(const toml::table& root, const std::string& file, const overrides& over, const cpu_set& allowed,
                   config& cfg, std::vector<diagnostic>& diags) {
    reader(file, allowed, diags).read(root, over, cfg);
}

}  // namespace internal

}  // namespace shardd::config
