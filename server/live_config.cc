#include "server/live_config.hh"
#include "server/source_table.hh"

#include <algorithm>

namespace shardd::server {

expected<std::vector<shard_reload>, std::string> live_config::prepare(std::shared_ptr<const config::config> next,
                                                                      std::vector<inherited_socket>& inherited) {
    std::vector<const config::listener_config*> to_bind;
    for (const auto& l : next->listeners) {
        const auto it = _listeners.find(l.name);
        if (it == _listeners.end() || it->second.listen != l.listen) {
            to_bind.push_back(&l);
        }
    }
    auto bound = bind_listeners(to_bind, _shards, inherited);
    if (!bound) {
        return unexpected{bound.error()};
    }

    std::vector<shard_reload> plans(_shards);
    for (auto& p : plans) {
        p.generation = next;
    }
    _next_listeners.clear();
    for (const auto& l : next->listeners) {
        auto b = std::find_if(bound->begin(), bound->end(), [&](const bound_listener& x) { return x.cfg == &l; });
        listener_record rec;
        rec.listen = l.listen;
        if (b != bound->end()) {
            rec.shared = b->shared;
            _kept_shared.push_back(b->shared);
        } else {
            const listener_record& running = _listeners.at(l.name);
            rec.shared = running.shared;
        }
        // Made once, before any shard sees a configuration with a limit
        // (the plan's hand-over orders it), and kept with the listener.
        if ((l.max_connections_per_source != 0 || l.connection_rate_per_source != 0) && !rec.shared->sources) {
            rec.shared->sources = std::make_shared<source_table>(default_source_slots);
        }
        for (std::size_t s = 0; s < _shards; ++s) {
            listener_update u;
            u.cfg = &l;
            u.shared = rec.shared;
            if (b != bound->end()) {
                u.fds = std::move(b->fds[s]);
                u.rebind = true;
            }
            plans[s].listeners.push_back(std::move(u));
        }
        _next_listeners[l.name] = std::move(rec);
    }

    _next_upstreams.clear();
    for (const auto& u : next->upstreams) {
        const auto it = _upstreams.find(u.name);
        std::shared_ptr<proxy::upstream_shared> gen;
        if (it != _upstreams.end() && *it->second->cfg == u) {
            gen = it->second;
        } else {
            gen = std::make_shared<proxy::upstream_shared>(next, u, _shards,
                                                           it != _upstreams.end() ? it->second.get() : nullptr);
            _kept_upstreams.push_back(gen);
        }
        _next_upstreams[u.name] = gen;
        for (auto& p : plans) {
            p.upstreams.push_back(gen);
        }
    }
    _next = std::move(next);
    return plans;
}

void live_config::commit() {
    std::lock_guard lock(_current_mutex);
    _listeners = std::move(_next_listeners);
    _next_listeners.clear();
    _upstreams = std::move(_next_upstreams);
    _next_upstreams.clear();
    _current = std::move(_next);
}

std::vector<std::pair<std::string, std::shared_ptr<listener_shared>>> live_config::listeners() const {
    std::lock_guard lock(_current_mutex);
    std::vector<std::pair<std::string, std::shared_ptr<listener_shared>>> out;
    for (const auto& l : _current->listeners) {
        out.emplace_back(l.name, _listeners.at(l.name).shared);
    }
    return out;
}

std::vector<std::shared_ptr<proxy::upstream_shared>> live_config::upstreams() const {
    std::lock_guard lock(_current_mutex);
    std::vector<std::shared_ptr<proxy::upstream_shared>> out;
    for (const auto& u : _current->upstreams) {
        out.push_back(_upstreams.at(u.name));
    }
    return out;
}

std::shared_ptr<const config::config> live_config::current() const {
    std::lock_guard lock(_current_mutex);
    return _current;
}

}  // namespace shardd::server
