// [[upstream]]: the server pool of proxy listeners.

#include "config/reader_impl.hh"

namespace shardd::config::internal {

// A server is an address string, or an inline table with the address and
// its options:
//   servers = ["10.0.0.1:80", { address = "10.0.0.2:80", weight = 2, max_connections = 100 }]
std::optional<upstream_server> reader::read_server(const toml::node& n, const std::string& path) {
    if (n.is_string()) {
        if (auto a = address_of(n, path, true)) {
            upstream_server s;
            s.address = *a;
            return s;
        }
        return std::nullopt;
    }
    const toml::table* t = n.as_table();
    if (!t) {
        error(pos_of(n.source()), path,
              "expected an address like \"10.0.0.1:80\" or a table like { address = \"10.0.0.1:80\", weight = 2 }, "
              "found " +
                  describe(n));
        return std::nullopt;
    }
    check_keys(*t, path, server_keys);
    const toml::node* addr = t->get("address");
    if (!addr) {
        error(pos_of(t->source()), path + ".address", "missing; a server table needs an address");
        return std::nullopt;
    }
    auto a = address_of(*addr, path + ".address", true);
    if (!a) {
        return std::nullopt;
    }
    upstream_server s;
    s.address = *a;
    read_integer(*t, path, "weight", s.weight, 0, max_weight);
    read_integer(*t, path, "max_connections", s.max_connections, 0, 10'000'000);
    read_bool(*t, path, "backup", s.backup);
    read_bool(*t, path, "drain", s.drain);
    with(*t, path, "proxy_protocol", [&](const toml::node&, const std::string&) {
        proxy_protocol_version v = proxy_protocol_version::none;
        read_enum(*t, path, "proxy_protocol", v, proxy_protocol_names);
        s.proxy_protocol = v;
    });
    return s;
}

void reader::read_servers(const toml::table& t, const std::string& prefix, upstream_config& up) {
    const toml::node* n = t.get("servers");
    const std::string path = prefix + ".servers";
    if (!n) {
        error(pos_of(t.source()), path,
              "missing; expected at least one address like \"127.0.0.1:8080\", or a server table");
        return;
    }
    if (n->is_string()) {
        if (auto s = read_server(*n, path)) {
            up.servers.push_back(*s);
        }
        return;
    }
    const toml::array* arr = n->as_array();
    if (!arr) {
        error(pos_of(n->source()), path, "expected an array of servers, found " + describe(*n));
        return;
    }
    if (arr->empty()) {
        error(pos_of(n->source()), path, "expected at least one server, found an empty array");
        return;
    }
    if (arr->size() > max_servers) {
        error(pos_of(n->source()), path,
              "expected at most " + std::to_string(max_servers) + " servers, found " + std::to_string(arr->size()));
        return;
    }
    for (std::size_t i = 0; i < arr->size(); ++i) {
        const std::string item_path = path + "[" + std::to_string(i) + "]";
        auto s = read_server(*arr->get(i), item_path);
        if (!s) {
            continue;
        }
        // The same server twice would be a weight in disguise, and would
        // split its health and connection count in two.
        auto same = std::find_if(up.servers.begin(), up.servers.end(),
                                 [&](const upstream_server& o) { return o.address == s->address; });
        if (same != up.servers.end()) {
            error(pos_of(arr->get(i)->source()), item_path,
                  "server " + s->address.to_string() + " is listed twice; use weight to give it a larger share");
            continue;
        }
        up.servers.push_back(*s);
    }
}

void reader::read_upstream(const toml::table& t, const std::string& prefix, config& cfg) {
    check_keys(t, prefix, upstream_keys);
    upstream_config up;
    if (auto name = read_name(t, prefix, "upstream", _upstream_names)) {
        up.name = *name;
    }
    read_enum(t, prefix, "balance", up.balance, balance_names);
    read_servers(t, prefix, up);
    read_duration(t, prefix, "connect_timeout", up.connect_timeout, 1ms, 1h);
    read_integer(t, prefix, "retries", up.retries, 0, max_retries);
    read_integer(t, prefix, "max_fails", up.max_fails, 0, 1000);
    read_duration(t, prefix, "fail_timeout", up.fail_timeout, 1s, 1h);
    read_integer(t, prefix, "max_queue", up.max_queue, 0, max_queue_limit);
    read_duration(t, prefix, "queue_timeout", up.queue_timeout, 1ms, 1h);
    read_enum(t, prefix, "proxy_protocol", up.proxy_protocol, proxy_protocol_names);
    read_health_check(t, prefix, up);
    cfg.upstreams.push_back(std::move(up));
}

}  // namespace shardd::config::internal
