#pragma once
// The reader behind read_document(): the known keys and bounds of every
// table, and the checks each key goes through (type, unit, range, "did you
// mean"), as members of one class. Internal to config/: reader.cc reads
// [runtime], [log], [admin] and [[listener]] and runs the cross-checks;
// read_upstream.cc reads [[upstream]] and its servers.

#include "config/config.hh"
#include "config/diagnostic.hh"
#include "config/enum_names.hh"
#include "config/load.hh"
#include "config/suggest.hh"

#include <algorithm>
#include <array>
#include <map>
#include <sstream>
#include <toml++/toml.h>

namespace shardd::config::internal {

using namespace std::string_view_literals;

// Known keys per table, for the unknown-key check and its suggestions.
inline constexpr std::array top_keys{"runtime"sv, "log"sv, "admin"sv, "access_log"sv, "listener"sv, "upstream"sv};
inline constexpr std::array runtime_keys{
    "cpus"sv,          "backend"sv,         "io_memory"sv,        "ring_entries"sv,     "spin_before_park"sv,
    "preempt_timer"sv, "stall_threshold"sv, "shutdown_timeout"sv, "recv_buffer_size"sv, "recv_buffers"sv};
inline constexpr std::array log_keys{"level"sv, "format"sv};
inline constexpr std::array admin_keys{"listen"sv};
inline constexpr std::array access_log_keys{"path"sv, "format"sv};
inline constexpr std::array listener_keys{"name"sv,
                                          "listen"sv,
                                          "mode"sv,
                                          "protocol"sv,
                                          "upstream"sv,
                                          "max_connections"sv,
                                          "idle_timeout"sv,
                                          "backlog"sv,
                                          "nodelay"sv,
                                          "splice"sv,
                                          "max_pending"sv,
                                          "max_message"sv,
                                          "half_close_timeout"sv,
                                          "accept_proxy"sv,
                                          "proxy_trusted"sv,
                                          "proxy_timeout"sv,
                                          "allow"sv,
                                          "deny"sv,
                                          "max_connections_per_source"sv,
                                          "connection_rate_per_source"sv};
inline constexpr std::array upstream_keys{"name"sv,          "balance"sv,        "servers"sv,      "connect_timeout"sv,
                                          "retries"sv,       "max_fails"sv,      "fail_timeout"sv, "max_queue"sv,
                                          "queue_timeout"sv, "proxy_protocol"sv, "health_check"sv};
inline constexpr std::array server_keys{"address"sv, "weight"sv, "max_connections"sv,
                                        "backup"sv,  "drain"sv,  "proxy_protocol"sv};
inline constexpr std::array health_check_keys{"interval"sv, "timeout"sv, "rise"sv, "fall"sv, "send"sv, "expect"sv};

// Bounds of the numeric keys. Each says why in docs/configuration.md.
inline constexpr std::uint64_t min_io_memory = 64 * KiB;  // below this no useful arena
inline constexpr std::uint64_t max_io_memory = 1 * GiB;   // locked memory per shard
inline constexpr std::int64_t min_ring_entries = 8;
inline constexpr std::int64_t max_ring_entries = 32768;  // IORING_MAX_ENTRIES
inline constexpr std::uint64_t min_recv_buffer = 64;
inline constexpr std::uint64_t max_recv_buffer = 16 * MiB;
inline constexpr std::int64_t max_recv_buffers = 32768;  // buffer ring limit
inline constexpr std::int64_t max_backlog = 65535;       // somaxconn's ceiling
inline constexpr std::uint64_t sockperf_header = 14;     // u64 seq, u16 flags, u32 len
inline constexpr std::uint64_t max_message_limit = 64 * MiB;
inline constexpr std::size_t max_name_length = 64;
// The receive pool (runtime.recv_buffers x recv_buffer_size, per shard) should
// hold at least this many full receive rounds of a listener's max_pending: a
// connection holds up to max_pending bytes of pool buffers for one round, so
// a pool that four connections receiving at once can empty runs dry under any
// real load, and waiting for buffers (ENOBUFS) becomes the normal case rather
// than a burst's exception. Four is a floor that only clearly undersized pools
// fall below, so the warning stays quiet for tuned ones; it is not a sizing
// target (the defaults give 64 rounds).
inline constexpr std::uint64_t min_pool_rounds = 4;
// The shortest idle_timeout other than "0s" (off). The idle sweep runs four
// times per timeout (idle_sweeps_per_timeout in server/shard_service.cc), so
// this is one sweep every 2.5 ms, whose timer costs nothing measurable. Below
// it the sweep turns into a busy loop: "1us" would wake it every 250 ns and
// burn the shard's CPU whenever the listener has a connection. (Each sweep looks
// at every connection of the listener; that part costs in proportion to how
// many there are, the price of any short timeout.)
inline constexpr duration min_idle_timeout = 10ms;
inline constexpr duration max_idle_timeout = 24h;
// Servers per upstream: the balancers scan the list per new connection, and
// a shard keeps a little state per server. 256 is more than any TCP pool
// behind one proxy listener, and keeps a scan within a few cache lines.
inline constexpr std::size_t max_servers = 256;
// Server weights, as HAProxy's (1-256): enough to express any useful ratio,
// and small enough that weight sums never come near overflow.
inline constexpr std::int64_t max_weight = 256;
// retries: more tries than this are a long wait, not a recovery.
inline constexpr std::int64_t max_retries = 16;
inline constexpr std::int64_t max_queue_limit = 1'000'000;
// Entries of an allow, deny or proxy_trusted list: each connection is
// matched against them in turn, so a list stays short; 1024 covers any
// hand-written list (a longer one belongs in a firewall).
inline constexpr std::size_t max_cidrs = 1024;
// Per-source limits: the connection count is a 16-bit field of the shared
// source table (server/source_table.hh).
inline constexpr std::int64_t max_per_source = 65535;
inline constexpr std::int64_t max_rate_per_source = 1'000'000;
// A health check's request and expected reply: one packet's worth, so a
// check is one send and one receive.
inline constexpr std::size_t max_check_bytes = 1024;
inline constexpr std::int64_t max_rise_fall = 100;

inline std::string describe(const toml::node& node) {
    switch (node.type()) {
    case toml::node_type::string: return "\"" + std::string(node.as_string()->get()) + "\"";
    case toml::node_type::integer: return "integer " + std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point: {
        std::ostringstream os;
        os << node.as_floating_point()->get();
        return "float " + os.str();
    }
    case toml::node_type::boolean: return node.as_boolean()->get() ? "boolean true" : "boolean false";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
    }
}

inline bool is_power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

inline bool valid_name(std::string_view s) {
    return !s.empty() && s.size() <= max_name_length && std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
               c == '.';
    });
}

struct position {
    std::uint32_t line = 0;
    std::uint32_t column = 0;
};

inline position pos_of(const toml::source_region& r) { return {r.begin.line, r.begin.column}; }

// Would binding both addresses with SO_REUSEPORT share (or fight over) one
// port? Same family and port, and the same address or a wildcard on either
// side. [::] does not take IPv4 because shardd sets IPV6_V6ONLY. Port 0 asks
// the kernel for a fresh port each time, so it never collides.
inline bool overlaps(const socket_address& a, const socket_address& b) {
    return a.port() != 0 && a.port() == b.port() && a.family() == b.family() &&
           (a == b || a.is_wildcard() || b.is_wildcard());
}

class reader {
public:
    reader(std::string file, const cpu_set& allowed, std::vector<diagnostic>& diags)
        : _file(std::move(file)), _allowed(allowed), _diags(diags) {}

    void read(const toml::table& root, const overrides& over, config& cfg);

private:
    void error(position at, std::string path, std::string message) {
        _diags.push_back(
            {origin::file, severity::error, _file, at.line, at.column, std::move(path), std::move(message)});
    }
    void warning(position at, std::string path, std::string message) {
        _diags.push_back(
            {origin::file, severity::warning, _file, at.line, at.column, std::move(path), std::move(message)});
    }
    void cli_error(std::string option, std::string message) {
        _diags.push_back({origin::command_line, severity::error, "", 0, 0, std::move(option), std::move(message)});
    }

    template <std::size_t N>
    void check_keys(const toml::table& t, const std::string& prefix, const std::array<std::string_view, N>& known) {
        for (auto&& [k, v] : t) {
            if (std::find(known.begin(), known.end(), k.str()) != known.end()) {
                continue;
            }
            std::string msg = "unknown key";
            if (auto hint = closest(k.str(), known)) {
                msg += "; did you mean \"" + *hint + "\"?";
            } else {
                std::string list;
                for (auto name : known) {
                    if (!list.empty()) {
                        list += ", ";
                    }
                    list += name;
                }
                msg += "; expected one of: " + list;
            }
            error(pos_of(k.source()), join(prefix, k.str()), msg);
        }
    }

    static std::string join(const std::string& prefix, std::string_view key) {
        return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
    }

    // Calls f(node, path) when `key` is present in `t`.
    template <typename F>
    void with(const toml::table& t, const std::string& prefix, std::string_view key, F&& f) {
        if (const toml::node* n = t.get(key)) {
            f(*n, join(prefix, key));
        }
    }

    void read_size(const toml::table& t, const std::string& prefix, std::string_view key, std::uint64_t& out,
                   std::uint64_t min, std::uint64_t max) {
        with(t, prefix, key, [&](const toml::node& n, const std::string& path) {
            std::uint64_t value = 0;
            if (n.is_integer()) {
                if (n.as_integer()->get() < 0) {
                    error(pos_of(n.source()), path, "expected a size, found " + describe(n));
                    return;
                }
                value = static_cast<std::uint64_t>(n.as_integer()->get());
            } else if (n.is_string()) {
                auto parsed = parse_size(n.as_string()->get());
                if (!parsed) {
                    error(pos_of(n.source()), path, parsed.error());
                    return;
                }
                value = *parsed;
            } else {
                error(pos_of(n.source()), path, "expected a size like \"4MiB\", found " + describe(n));
                return;
            }
            if (value < min || value > max) {
                error(pos_of(n.source()), path,
                      "expected a size from " + format_size(min) + " to " + format_size(max) + ", found " +
                          describe(n));
                return;
            }
            out = value;
        });
    }

    // With `zero_is_off`, "0s" is also accepted (it turns the feature off),
    // and the range [min, max] is what any other value must fall in.
    void read_duration(const toml::table& t, const std::string& prefix, std::string_view key, duration& out,
                       duration min, duration max, bool zero_is_off = false) {
        with(t, prefix, key, [&](const toml::node& n, const std::string& path) {
            if (!n.is_string()) {
                error(pos_of(n.source()), path,
                      "expected a duration string like \"10s\" (units ns, us, ms, s, m, h), found " + describe(n));
                return;
            }
            auto parsed = parse_duration(n.as_string()->get());
            if (!parsed) {
                error(pos_of(n.source()), path, parsed.error());
                return;
            }
            const bool off = zero_is_off && parsed->count() == 0;
            if (!off && (*parsed < min || *parsed > max)) {
                error(pos_of(n.source()), path,
                      std::string(zero_is_off ? "expected \"0s\" (off) or " : "expected ") + "a duration from " +
                          format_duration(min) + " to " + format_duration(max) + ", found " + describe(n));
                return;
            }
            out = *parsed;
        });
    }

    template <typename U>
    void read_integer(const toml::table& t, const std::string& prefix, std::string_view key, U& out, std::int64_t min,
                      std::int64_t max, bool power_of_two = false) {
        with(t, prefix, key, [&](const toml::node& n, const std::string& path) {
            const std::string what = std::string(power_of_two ? "a power of two" : "an integer") + " from " +
                                     std::to_string(min) + " to " + std::to_string(max);
            if (!n.is_integer()) {
                error(pos_of(n.source()), path, "expected " + what + ", found " + describe(n));
                return;
            }
            const std::int64_t v = n.as_integer()->get();
            if (v < min || v > max || (power_of_two && !is_power_of_two(static_cast<std::uint64_t>(v)))) {
                error(pos_of(n.source()), path, "expected " + what + ", found " + describe(n));
                return;
            }
            out = static_cast<U>(v);
        });
    }

    void read_bool(const toml::table& t, const std::string& prefix, std::string_view key, bool& out) {
        with(t, prefix, key, [&](const toml::node& n, const std::string& path) {
            if (!n.is_boolean()) {
                error(pos_of(n.source()), path, "expected true or false, found " + describe(n));
                return;
            }
            out = n.as_boolean()->get();
        });
    }

    template <typename E, std::size_t N>
    void read_enum(const toml::table& t, const std::string& prefix, std::string_view key, E& out,
                   const std::array<enum_name<E>, N>& names) {
        with(t, prefix, key, [&](const toml::node& n, const std::string& path) {
            if (!n.is_string()) {
                error(pos_of(n.source()), path, "expected " + one_of(names) + ", found " + describe(n));
                return;
            }
            auto parsed = parse_enum(names, n.as_string()->get());
            if (!parsed) {
                error(pos_of(n.source()), path, parsed.error());
                return;
            }
            out = *parsed;
        });
    }

    std::optional<socket_address> address_of(const toml::node& n, const std::string& path, bool connectable) {
        if (!n.is_string()) {
            error(pos_of(n.source()), path,
                  "expected an address string like \"127.0.0.1:7007\" or \"[::1]:7007\", found " + describe(n));
            return std::nullopt;
        }
        auto parsed = socket_address::parse(n.as_string()->get());
        if (!parsed) {
            error(pos_of(n.source()), path, parsed.error() + ", found " + describe(n));
            return std::nullopt;
        }
        if (connectable && (parsed->is_wildcard() || parsed->port() == 0)) {
            error(pos_of(n.source()), path,
                  "expected an address to connect to (not a wildcard, port not 0), found " + describe(n));
            return std::nullopt;
        }
        return *parsed;
    }

    // A string or an array of strings, each an address; at least one.
    void read_addresses(const toml::table& t, const std::string& prefix, std::string_view key,
                        std::vector<socket_address>& out, bool connectable) {
        const toml::node* n = t.get(key);
        const std::string path = join(prefix, key);
        if (!n) {
            error(pos_of(t.source()), path, "missing; expected at least one address like \"127.0.0.1:7007\"");
            return;
        }
        if (n->is_string()) {
            if (auto a = address_of(*n, path, connectable)) {
                out.push_back(*a);
            }
            return;
        }
        const toml::array* arr = n->as_array();
        if (!arr) {
            error(pos_of(n->source()), path, "expected an array of addresses, found " + describe(*n));
            return;
        }
        if (arr->empty()) {
            error(pos_of(n->source()), path, "expected at least one address, found an empty array");
            return;
        }
        for (std::size_t i = 0; i < arr->size(); ++i) {
            const std::string item_path = path + "[" + std::to_string(i) + "]";
            if (auto a = address_of(*arr->get(i), item_path, connectable)) {
                auto same = std::find_if(out.begin(), out.end(), [&](const auto& b) { return overlaps(*a, b); });
                if (same != out.end()) {
                    error(pos_of(arr->get(i)->source()), item_path,
                          "address " + a->to_string() +
                              (*same == *a ? " is listed twice" : " overlaps " + same->to_string()));
                    continue;
                }
                out.push_back(*a);
            }
        }
    }

    // Returns the name when present and valid, and records it in `seen`
    // (name -> where it was first defined), reporting a duplicate.
    std::optional<std::string> read_name(const toml::table& t, const std::string& prefix, std::string_view what,
                                         std::map<std::string, position>& seen) {
        const toml::node* n = t.get("name");
        const std::string path = join(prefix, "name");
        if (!n) {
            error(pos_of(t.source()), path, "missing; every [[" + std::string(what) + "]] needs a name");
            return std::nullopt;
        }
        if (!n->is_string()) {
            error(pos_of(n->source()), path, "expected a name string, found " + describe(*n));
            return std::nullopt;
        }
        std::string name(n->as_string()->get());
        if (!valid_name(name)) {
            error(pos_of(n->source()), path,
                  "expected a name of 1 to 64 letters, digits, '_', '-' or '.', found " + describe(*n));
            return std::nullopt;
        }
        const position at = pos_of(n->source());
        if (auto [it, inserted] = seen.emplace(name, at); !inserted) {
            error(at, path,
                  "duplicate " + std::string(what) + " name \"" + name + "\" (first defined at line " +
                      std::to_string(it->second.line) + ")");
        }
        return name;
    }

    // Each element of an array of tables, or an error if `key` is something else.
    template <typename F>
    void each_table(const toml::table& root, std::string_view key, F&& f) {
        const toml::node* n = root.get(key);
        if (!n) {
            return;
        }
        const toml::array* arr = n->as_array();
        if (!arr || !arr->is_array_of_tables()) {
            error(pos_of(n->source()), std::string(key),
                  "expected an array of tables written [[" + std::string(key) + "]], found " + describe(*n));
            return;
        }
        for (std::size_t i = 0; i < arr->size(); ++i) {
            f(*arr->get(i)->as_table(), std::string(key) + "[" + std::to_string(i) + "]");
        }
    }

    const toml::table* section(const toml::table& root, std::string_view key) {
        const toml::node* n = root.get(key);
        if (!n) {
            return nullptr;
        }
        if (!n->is_table()) {
            error(pos_of(n->source()), std::string(key),
                  "expected a table written [" + std::string(key) + "], found " + describe(*n));
            return nullptr;
        }
        return n->as_table();
    }

    // An array of CIDR blocks (or one string); an empty array is allowed
    // only where `allow_empty`.
    void read_cidrs(const toml::table& t, const std::string& prefix, std::string_view key, std::vector<cidr>& out);
    void read_health_check(const toml::table& t, const std::string& prefix, upstream_config& up);
    void read_listener_controls(const toml::table& t, const std::string& prefix, listener_config& l);
    void warn_small_pool(const toml::table& root, const config& cfg);
    void read_runtime(const toml::table& t, const overrides& over, runtime_config& rt);
    void read_listener(const toml::table& t, const std::string& prefix, config& cfg);
    void read_upstream(const toml::table& t, const std::string& prefix, config& cfg);
    void read_servers(const toml::table& t, const std::string& prefix, upstream_config& up);
    std::optional<upstream_server> read_server(const toml::node& n, const std::string& path);

    std::string _file;
    const cpu_set& _allowed;
    std::vector<diagnostic>& _diags;
    std::map<std::string, position> _upstream_names;
    std::map<std::string, position> _listener_names;
    std::map<std::string, bool> _upstream_used;
};

}  // namespace shardd::config::internal
