#pragma once
// The names of the config's enum values, as written in TOML: one table per
// enum, used to parse (with "did you mean"), to print and to list the
// choices in diagnostics. Internal to config/.

#include "config/config.hh"
#include "config/suggest.hh"
#include "reactor/expected.hh"

#include <array>
#include <string>
#include <string_view>

namespace shardd::config::internal {

template <typename E>
struct enum_name {
    std::string_view name;
    E value;
};

inline constexpr std::array log_level_names{
    enum_name<log_level>{"trace", log_level::trace}, enum_name<log_level>{"debug", log_level::debug},
    enum_name<log_level>{"info", log_level::info},   enum_name<log_level>{"warn", log_level::warn},
    enum_name<log_level>{"error", log_level::error},
};
inline constexpr std::array log_format_names{
    enum_name<log_format>{"text", log_format::text},
    enum_name<log_format>{"json", log_format::json},
};
inline constexpr std::array mode_names{
    enum_name<listener_mode>{"echo", listener_mode::echo},
    enum_name<listener_mode>{"proxy", listener_mode::proxy},
};
inline constexpr std::array protocol_names{
    enum_name<echo_protocol>{"raw", echo_protocol::raw},
    enum_name<echo_protocol>{"sockperf", echo_protocol::sockperf},
};
inline constexpr std::array balance_names{
    enum_name<balance_policy>{"round_robin", balance_policy::round_robin},
    enum_name<balance_policy>{"least_conn", balance_policy::least_conn},
    enum_name<balance_policy>{"random_two", balance_policy::random_two},
    enum_name<balance_policy>{"source_hash", balance_policy::source_hash},
};

inline constexpr std::array proxy_protocol_names{
    enum_name<proxy_protocol_version>{"none", proxy_protocol_version::none},
    enum_name<proxy_protocol_version>{"v1", proxy_protocol_version::v1},
    enum_name<proxy_protocol_version>{"v2", proxy_protocol_version::v2},
};

inline constexpr std::array backend_names{
    enum_name<io_backend>{"auto", io_backend::automatic},
    enum_name<io_backend>{"io_uring", io_backend::io_uring},
    enum_name<io_backend>{"epoll", io_backend::epoll},
};

template <typename E, std::size_t N>
std::string_view name_of(const std::array<enum_name<E>, N>& names, E value) {
    for (const auto& n : names) {
        if (n.value == value) {
            return n.name;
        }
    }
    return "?";
}

template <typename E, std::size_t N>
std::string one_of(const std::array<enum_name<E>, N>& names) {
    std::string out;
    for (std::size_t i = 0; i < N; ++i) {
        if (i != 0) {
            out += i + 1 == N ? " or " : ", ";
        }
        out += "\"" + std::string(names[i].name) + "\"";
    }
    return out;
}

template <typename E, std::size_t N>
expected<E, std::string> parse_enum(const std::array<enum_name<E>, N>& names, std::string_view text) {
    for (const auto& n : names) {
        if (n.name == text) {
            return n.value;
        }
    }
    std::array<std::string_view, N> candidates;
    for (std::size_t i = 0; i < N; ++i) {
        candidates[i] = names[i].name;
    }
    std::string msg = "expected " + one_of(names) + ", found \"" + std::string(text) + "\"";
    if (auto hint = closest(text, candidates)) {
        msg += " (did you mean \"" + *hint + "\"?)";
    }
    return unexpected{msg};
}

}  // namespace shardd::config::internal
