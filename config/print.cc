// to_toml(): the effective config, written in the same order and syntax as
// the example config, so `shardd --print-config` output can be saved and
// loaded again.

#include "config/load.hh"

#include <sstream>

namespace shardd::config {

namespace {

std::string quoted(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    return out + "\"";
}

std::string address_list(const std::vector<socket_address>& addrs) {
    std::string out = "[";
    for (std::size_t i = 0; i < addrs.size(); ++i) {
        out += (i ? ", " : "") + quoted(addrs[i].to_string());
    }
    return out + "]";
}

// health_check.send / expect as a TOML literal string with shardd's own
// escapes (read_controls.cc), so that any bytes print and load back.
std::string escaped_literal(std::string_view bytes) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "'";
    for (unsigned char c : bytes) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c >= 0x20 && c < 0x7f && c != '\'') {
            out += static_cast<char>(c);
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out + "'";
}

std::string cidr_list(const std::vector<cidr>& list) {
    std::string out = "[";
    for (std::size_t i = 0; i < list.size(); ++i) {
        out += (i ? ", " : "") + quoted(list[i].to_string());
    }
    return out + "]";
}

// Plain address strings for servers with default options, so that a
// config without options prints as it was written.
std::string server_list(const std::vector<upstream_server>& servers) {
    std::string out = "[";
    for (std::size_t i = 0; i < servers.size(); ++i) {
        const auto& s = servers[i];
        out += i ? ", " : "";
        upstream_server plain;
        plain.address = s.address;
        if (s == plain) {
            out += quoted(s.address.to_string());
        } else {
            out += "{ address = " + quoted(s.address.to_string()) + ", weight = " + std::to_string(s.weight) +
                   ", max_connections = " + std::to_string(s.max_connections);
            out += s.backup ? ", backup = true" : "";
            out += s.drain ? ", drain = true" : "";
            if (s.proxy_protocol) {
                out += ", proxy_protocol = " + quoted(to_string(*s.proxy_protocol));
            }
            out += " }";
        }
    }
    return out + "]";
}

}  // namespace

std::string to_toml(const config& cfg) {
    std::ostringstream os;
    const auto& rt = cfg.runtime;
    os << "[runtime]\n"
       << "cpus = " << quoted(rt.all_cpus ? "all" : rt.cpus.to_string()) << "\n"
       << "backend = " << quoted(to_string(rt.backend)) << "\n"
       << "io_memory = " << quoted(format_size(rt.io_memory)) << "\n"
       << "ring_entries = " << rt.ring_entries << "\n"
       << "spin_before_park = " << quoted(format_duration(rt.spin_before_park)) << "\n"
       << "preempt_timer = " << quoted(format_duration(rt.preempt_timer)) << "\n"
       << "stall_threshold = " << quoted(format_duration(rt.stall_threshold)) << "\n"
       << "shutdown_timeout = " << quoted(format_duration(rt.shutdown_timeout)) << "\n"
       << "recv_buffer_size = " << quoted(format_size(rt.recv_buffer_size)) << "\n"
       << "recv_buffers = " << rt.recv_buffers << "\n";
    os << "\n[log]\n"
       << "level = " << quoted(to_string(cfg.log.level)) << "\n"
       << "format = " << quoted(to_string(cfg.log.format)) << "\n";
    if (cfg.admin.listen) {
        os << "\n[admin]\nlisten = " << quoted(cfg.admin.listen->to_string()) << "\n";
    }
    if (!cfg.access_log.path.empty()) {
        os << "\n[access_log]\npath = " << quoted(cfg.access_log.path) << "\n"
           << "format = " << quoted(to_string(cfg.access_log.format)) << "\n";
    }
    for (const auto& l : cfg.listeners) {
        os << "\n[[listener]]\n"
           << "name = " << quoted(l.name) << "\n"
           << "listen = " << address_list(l.listen) << "\n"
           << "mode = " << quoted(to_string(l.mode)) << "\n";
        if (l.mode == listener_mode::echo) {
            os << "protocol = " << quoted(to_string(l.protocol)) << "\n";
        } else {
            os << "upstream = " << quoted(l.upstream) << "\n";
        }
        os << "max_connections = " << l.max_connections << "\n"
           << "idle_timeout = " << quoted(format_duration(l.idle_timeout)) << "\n"
           << "backlog = " << l.backlog << "\n"
           << "nodelay = " << (l.nodelay ? "true" : "false") << "\n"
           << "splice = " << (l.splice ? "true" : "false") << "\n"
           << "max_pending = " << quoted(format_size(l.max_pending)) << "\n";
        if (l.mode == listener_mode::echo && l.protocol == echo_protocol::sockperf) {
            os << "max_message = " << quoted(format_size(l.max_message)) << "\n";
        }
        if (l.mode == listener_mode::proxy) {
            os << "half_close_timeout = " << quoted(format_duration(l.half_close_timeout)) << "\n";
        }
        os << "accept_proxy = " << (l.accept_proxy ? "true" : "false") << "\n";
        if (!l.proxy_trusted.empty()) {
            os << "proxy_trusted = " << cidr_list(l.proxy_trusted) << "\n";
        }
        if (l.accept_proxy || l.proxy_timeout != listener_config{}.proxy_timeout) {
            os << "proxy_timeout = " << quoted(format_duration(l.proxy_timeout)) << "\n";
        }
        if (!l.allow.empty()) {
            os << "allow = " << cidr_list(l.allow) << "\n";
        }
        if (!l.deny.empty()) {
            os << "deny = " << cidr_list(l.deny) << "\n";
        }
        os << "max_connections_per_source = " << l.max_connections_per_source << "\n"
           << "connection_rate_per_source = " << l.connection_rate_per_source << "\n";
    }
    for (const auto& up : cfg.upstreams) {
        os << "\n[[upstream]]\n"
           << "name = " << quoted(up.name) << "\n"
           << "balance = " << quoted(to_string(up.balance)) << "\n"
           << "servers = " << server_list(up.servers) << "\n"
           << "connect_timeout = " << quoted(format_duration(up.connect_timeout)) << "\n"
           << "retries = " << up.retries << "\n"
           << "max_fails = " << up.max_fails << "\n"
           << "fail_timeout = " << quoted(format_duration(up.fail_timeout)) << "\n"
           << "max_queue = " << up.max_queue << "\n"
           << "queue_timeout = " << quoted(format_duration(up.queue_timeout)) << "\n"
           << "proxy_protocol = " << quoted(to_string(up.proxy_protocol)) << "\n";
        if (const auto& hc = up.health_check; hc.enabled) {
            os << "health_check = { interval = " << quoted(format_duration(hc.interval))
               << ", timeout = " << quoted(format_duration(hc.timeout)) << ", rise = " << hc.rise
               << ", fall = " << hc.fall;
            if (!hc.send.empty()) {
                os << ", send = " << escaped_literal(hc.send);
            }
            if (!hc.expect.empty()) {
                os << ", expect = " << escaped_literal(hc.expect);
            }
            os << " }\n";
        }
    }
    return os.str();
}

}  // namespace shardd::config
