#include "server/listeners.hh"

#include "reactor/net.hh"

#include <spdlog/spdlog.h>

namespace shardd::server {

expected<std::vector<bound_listener>, std::string> bind_listeners(const config::config& cfg, std::size_t shards) {
    std::vector<bound_listener> out;
    auto fail = [](std::string why) { return unexpected{std::move(why)}; };
    for (const auto& l : cfg.listeners) {
        bound_listener& b = out.emplace_back();
        b.cfg = &l;
        b.fds.resize(shards);
        listen_options opts;
        opts.backlog = static_cast<int>(l.backlog);
        for (socket_address addr : l.listen) {
            for (std::size_t shard = 0; shard < shards; ++shard) {
                auto fd = listen_socket(addr, opts);
                if (!fd) {
                    return fail("listener " + l.name + ": cannot listen on " + addr.to_string() + ": " +
                                fd.error().message());
                }
                const int raw = fd->get();
                b.fds[shard].push_back(std::move(*fd));
                if (shard == 0 && addr.port() == 0) {
                    auto bound = local_address(raw);
                    if (!bound) {
                        return fail("listener " + l.name + ": getsockname: " + bound.error().message());
                    }
                    addr.set_port(bound->port());
                }
            }
            b.addresses.push_back(addr);
            const std::string what = l.mode == config::listener_mode::proxy
                                         ? "proxy to " + l.upstream
                                         : "echo/" + std::string(config::to_string(l.protocol));
            spdlog::info("listening on {} (listener {}, {}, {} shard{})", addr.to_string(), l.name, what, shards,
                         shards == 1 ? "" : "s");
        }
    }
    return out;
}

}  // namespace shardd::server
