#include "config/config.hh"

namespace shardd::config {

const upstream_config* config::find_upstream(std::string_view name) const {
    for (const auto& up : upstreams) {
        if (up.name == name) {
            return &up;
        }
    }
    return nullptr;
}

cpu_set effective_cpus(const config& cfg, const cpu_set& allowed) {
    return cfg.runtime.all_cpus ? allowed : cfg.runtime.cpus;
}

}  // namespace shardd::config
