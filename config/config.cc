#include "config/config.hh"

#include "config/enum_names.hh"
#include "config/load.hh"

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

using namespace internal;

expected<log_level, std::string> parse_log_level(std::string_view text) { return parse_enum(log_level_names, text); }

std::string_view to_string(log_level v) { return name_of(log_level_names, v); }
std::string_view to_string(log_format v) { return name_of(log_format_names, v); }
std::string_view to_string(listener_mode v) { return name_of(mode_names, v); }
std::string_view to_string(echo_protocol v) { return name_of(protocol_names, v); }
std::string_view to_string(balance_policy v) { return name_of(balance_names, v); }
std::string_view to_string(proxy_protocol_version v) { return name_of(proxy_protocol_names, v); }
std::string_view to_string(io_backend v) { return name_of(backend_names, v); }

}  // namespace shardd::config
