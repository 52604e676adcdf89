#pragma once
// The command line: shardd [-c FILE] [--check] [--print-config] [--cpus LIST]
// [--log-level LEVEL] [--version] [--help]

#include "config/load.hh"
#include "reactor/expected.hh"

#include <string>

namespace shardd::server {

// sysexits.h values, which systemd and init scripts understand.
inline constexpr int exit_ok = 0;
inline constexpr int exit_failure = 1;
inline constexpr int exit_usage = 64;   // EX_USAGE: bad command line
inline constexpr int exit_config = 78;  // EX_CONFIG: bad configuration

inline constexpr const char* default_config_path = "/etc/shardd/shardd.toml";

struct cli_options {
    std::string config_path = default_config_path;
    bool check = false;
    bool print_config = false;
    config::overrides over;
};

// The options, or the exit code to leave with now (after --help, --version,
// or a usage error, which is printed to stderr).
expected<cli_options, int> parse_cli(int argc, char** argv);

}  // namespace shardd::server
