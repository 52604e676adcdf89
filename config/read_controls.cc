// The proxy controls' keys: a listener's PROXY protocol acceptance, source
// ACLs and per-source limits; an upstream's health_check table.

#include "config/reader_impl.hh"

namespace shardd::config::internal {

namespace {

// health_check.send / expect: the string as TOML decoded it, then these
// escapes of our own, so that binary bytes can be written in a TOML literal
// string ('...', where TOML itself leaves backslashes alone):
// \xNN, \r, \n, \t, \0 and \\. A basic string ("...") has had TOML's
// escapes applied already; a backslash left in it must be written "\\\\".
expected<std::string, std::string> decode_escapes(std::string_view in) {
    std::string out;
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (in[i] != '\\') {
            out += in[i];
            continue;
        }
        if (i + 1 == in.size()) {
            return unexpected{std::string("a lone '\\' at the end; write \\\\ for a backslash")};
        }
        const char c = in[++i];
        switch (c) {
        case 'r': out += '\r'; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case '0': out += '\0'; break;
        case '\\': out += '\\'; break;
        case 'x': {
            auto hex = [](char h) -> int {
                if (h >= '0' && h <= '9')
                    return h - '0';
                if (h >= 'a' && h <= 'f')
                    return h - 'a' + 10;
                if (h >= 'A' && h <= 'F')
                    return h - 'A' + 10;
                return -1;
            };
            const int hi = i + 1 < in.size() ? hex(in[i + 1]) : -1;
            const int lo = i + 2 < in.size() ? hex(in[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                return unexpected{std::string("\\x needs two hex digits, as in \\x00")};
            }
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
            break;
        }
        default:
            return unexpected{std::string("unknown escape \\") + c + "; expected \\xNN, \\r, \\n, \\t, \\0 or \\\\"};
        }
    }
    return out;
}

}  // namespace

void reader::read_cidrs(const toml::table& t, const std::string& prefix, std::string_view key, std::vector<cidr>& out) {
    const toml::node* n = t.get(key);
    if (!n) {
        return;
    }
    const std::string path = join(prefix, key);
    auto one = [&](const toml::node& item, const std::string& item_path) {
        if (!item.is_string()) {
            error(pos_of(item.source()), item_path,
                  "expected a CIDR block string like \"10.0.0.0/8\" or \"::1/128\", found " + describe(item));
            return;
        }
        auto c = cidr::parse(item.as_string()->get());
        if (!c) {
            error(pos_of(item.source()), item_path, c.error());
            return;
        }
        out.push_back(*c);
    };
    if (n->is_string()) {
        one(*n, path);
        return;
    }
    const toml::array* arr = n->as_array();
    if (!arr) {
        error(pos_of(n->source()), path,
              "expected an array of CIDR blocks like [\"10.0.0.0/8\"], found " + describe(*n));
        return;
    }
    if (arr->size() > max_cidrs) {
        error(pos_of(n->source()), path,
              "expected at most " + std::to_string(max_cidrs) + " blocks, found " + std::to_string(arr->size()));
        return;
    }
    for (std::size_t i = 0; i < arr->size(); ++i) {
        one(*arr->get(i), path + "[" + std::to_string(i) + "]");
    }
}

void reader::read_listener_controls(const toml::table& t, const std::string& prefix, listener_config& l) {
    read_bool(t, prefix, "accept_proxy", l.accept_proxy);
    read_cidrs(t, prefix, "proxy_trusted", l.proxy_trusted);
    read_duration(t, prefix, "proxy_timeout", l.proxy_timeout, 1ms, 1h);
    if (l.accept_proxy && l.proxy_trusted.empty()) {
        const toml::node* n = t.get("proxy_trusted");
        error(pos_of(n ? n->source() : t.get("accept_proxy")->source()), prefix + ".proxy_trusted",
              std::string(n ? "is empty" : "missing") +
                  "; accept_proxy needs the addresses of the proxies allowed to send a header, "
                  "like [\"10.0.0.0/8\"] (or [\"0.0.0.0/0\", \"::/0\"] to trust every source)");
    }
    if (!l.accept_proxy) {
        for (std::string_view key : {"proxy_trusted"sv, "proxy_timeout"sv}) {
            if (const toml::node* n = t.get(key)) {
                warning(pos_of(n->source()), join(prefix, key), "has no effect without accept_proxy = true");
            }
        }
    }
    read_cidrs(t, prefix, "allow", l.allow);
    read_cidrs(t, prefix, "deny", l.deny);
    // An empty deny list denies nothing, as no list; an empty allow list
    // would deny everyone, which is never what a list of exceptions means.
    if (const toml::node* n = t.get("allow"); n && n->is_array() && n->as_array()->empty()) {
        error(pos_of(n->source()), prefix + ".allow",
              "is empty, which would deny every source; remove it to allow every source");
    }
    read_integer(t, prefix, "max_connections_per_source", l.max_connections_per_source, 0, max_per_source);
    read_integer(t, prefix, "connection_rate_per_source", l.connection_rate_per_source, 0, max_rate_per_source);
}

void reader::read_health_check(const toml::table& up_table, const std::string& prefix, upstream_config& up) {
    const toml::node* n = up_table.get("health_check");
    if (!n) {
        return;
    }
    const std::string path = prefix + ".health_check";
    const toml::table* t = n->as_table();
    if (!t) {
        error(pos_of(n->source()), path,
              "expected a table like { interval = \"2s\", rise = 2, fall = 3 }, found " + describe(*n));
        return;
    }
    check_keys(*t, path, health_check_keys);
    health_check_config& hc = up.health_check;
    hc.enabled = true;
    read_duration(*t, path, "interval", hc.interval, 100ms, 1h);
    read_duration(*t, path, "timeout", hc.timeout, 1ms, 1h);
    read_integer(*t, path, "rise", hc.rise, 1, max_rise_fall);
    read_integer(*t, path, "fall", hc.fall, 1, max_rise_fall);
    if (hc.timeout > hc.interval) {
        if (const toml::node* at = t->get("timeout")) {
            error(pos_of(at->source()), path + ".timeout",
                  "expected at most health_check.interval (" + format_duration(hc.interval) + "), found " +
                      format_duration(hc.timeout));
        } else {
            error(pos_of(t->get("interval")->source()), path + ".interval",
                  "expected at least the default timeout (" + format_duration(hc.timeout) + "), found " +
                      format_duration(hc.interval) + "; set health_check.timeout too");
        }
    }
    for (auto [key, out] : {std::pair{"send"sv, &hc.send}, std::pair{"expect"sv, &hc.expect}}) {
        with(*t, path, key, [&, out = out](const toml::node& v, const std::string& key_path) {
            if (!v.is_string()) {
                error(pos_of(v.source()), key_path,
                      "expected a string like 'PING\\r\\n' (escapes \\xNN, \\r, \\n, \\t, \\0, \\\\), found " +
                          describe(v));
                return;
            }
            auto bytes = decode_escapes(v.as_string()->get());
            if (!bytes) {
                error(pos_of(v.source()), key_path, bytes.error());
                return;
            }
            if (bytes->empty() || bytes->size() > max_check_bytes) {
                error(pos_of(v.source()), key_path,
                      "expected 1 to " + std::to_string(max_check_bytes) + " bytes, found " +
                          std::to_string(bytes->size()));
                return;
            }
            *out = std::move(*bytes);
        });
    }
}

}  // namespace shardd::config::internal
