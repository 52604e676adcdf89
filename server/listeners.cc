#include "server/listeners.hh"

#include "reactor/net.hh"

#include <spdlog/spdlog.h>

namespace shardd::server {

namespace {

// The inherited socket listener `l` takes for configured address `addr`:
// one bound to that very address, else one named after the listener.
inherited_socket* match(std::vector<inherited_socket>& inherited, const config::listener_config& l,
                        const socket_address& addr) {
    for (auto& s : inherited) {
        if (!s.taken && addr.port() != 0 && s.address == addr) {
            return &s;
        }
    }
    for (auto& s : inherited) {
        if (!s.taken && s.name == l.name) {
            return &s;
        }
    }
    return nullptr;
}

}  // namespace

expected<std::vector<bound_listener>, std::string>
bind_listeners(const std::vector<const config::listener_config*>& listeners, std::size_t shards,
               std::vector<inherited_socket>& inherited) {
    std::vector<bound_listener> out;
    auto fail = [](std::string why) { return unexpected{std::move(why)}; };
    for (const config::listener_config* lp : listeners) {
        const config::listener_config& l = *lp;
        bound_listener& b = out.emplace_back();
        b.cfg = &l;
        b.shared = std::make_shared<listener_shared>(shards);
        b.fds.resize(shards);
        listen_options opts;
        opts.backlog = static_cast<int>(l.backlog);
        // One address: shard 0 on the inherited socket `from`, if any, and
        // every other shard on a socket of its own. "" or what failed.
        auto add = [&](socket_address addr, inherited_socket* from) -> std::string {
            std::size_t first_own = 0;
            std::string origin;
            opts.v6_only = true;
            if (from) {
                from->taken = true;
                addr = from->address;
                origin = ", from systemd: " + from->describe();
                if (shards > 1 && !from->reuse_port) {
                    return ("listener " + l.name + ": the socket systemd passed (" + from->describe() +
                            ") has no SO_REUSEPORT, so shards 1.." + std::to_string(shards - 1) +
                            " cannot listen beside it: set ReusePort=yes in the .socket unit");
                }
                b.fds[0].push_back(std::move(from->fd));
                opts.v6_only = from->v6_only;
                first_own = 1;
            }
            for (std::size_t shard = first_own; shard < shards; ++shard) {
                auto fd = listen_socket(addr, opts);
                if (!fd) {
                    return ("listener " + l.name + ": cannot listen on " + addr.to_string() + ": " +
                            fd.error().message());
                }
                const int raw = fd->get();
                b.fds[shard].push_back(std::move(*fd));
                if (shard == 0 && addr.port() == 0) {
                    auto bound = local_address(raw);
                    if (!bound) {
                        return ("listener " + l.name + ": getsockname: " + bound.error().message());
                    }
                    addr.set_port(bound->port());
                }
            }
            b.addresses.push_back(addr);
            const std::string what = l.mode == config::listener_mode::proxy
                                         ? "proxy to " + l.upstream
                                         : "echo/" + std::string(config::to_string(l.protocol));
            spdlog::info("listening on {} (listener {}, {}, {} shard{}{})", addr.to_string(), l.name, what, shards,
                         shards == 1 ? "" : "s", origin);
            return "";
        };
        for (const socket_address& addr : l.listen) {
            if (std::string why = add(addr, match(inherited, l, addr)); !why.empty()) {
                return fail(std::move(why));
            }
        }
        // Any further socket systemd named after this listener: a .socket
        // unit may list addresses of its own.
        for (auto& s : inherited) {
            if (!s.taken && s.name == l.name) {
                if (std::string why = add(s.address, &s); !why.empty()) {
                    return fail(std::move(why));
                }
            }
        }
    }
    for (auto& s : inherited) {
        if (!s.taken) {
            spdlog::warn("the socket systemd passed as {} matches no listener (by address or by name): closed; "
                         "its clients wait in its backlog until systemd gives up on it",
                         s.describe());
            s.fd.reset();
        }
    }
    return out;
}

}  // namespace shardd::server
