#pragma once
// TOML text -> validated config, collecting every problem rather than
// stopping at the first: an operator fixing a config wants the whole list.

#include "config/config.hh"
#include "config/diagnostic.hh"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shardd::config {

// Values given on the command line; they win over the file.
struct overrides {
    std::optional<std::string> cpus;       // --cpus
    std::optional<std::string> log_level;  // --log-level
};

struct load_result {
    std::optional<config> cfg;            // set only when there is no error
    std::vector<diagnostic> diagnostics;  // errors and warnings, in file order

    bool ok() const { return cfg.has_value(); }
};

// The largest config file load_file() reads. A shardd configuration is a few
// KiB (the example with every key is about 2 KiB); anything past 1 MiB is
// some other file given by mistake (a log, a binary, /dev/zero), and the cap
// keeps reading it from taking unbounded memory and time.
inline constexpr std::uint64_t max_config_file_size = 1 * MiB;

// `allowed` is the set runtime.cpus must fall in (normally allowed_cpus()).
// Reads regular files, and pipes and devices too (`-c /dev/stdin`), up to
// max_config_file_size.
load_result load_file(const std::string& path, const overrides& over, const cpu_set& allowed);
// `name` stands for the file name in diagnostics.
load_result load_string(std::string_view text, const std::string& name, const overrides& over, const cpu_set& allowed);

// Parses a --log-level value; the error says what was expected.
expected<log_level, std::string> parse_log_level(std::string_view text);

// The effective config as TOML that load_string() reads back to the same
// config.
std::string to_toml(const config& cfg);

}  // namespace shardd::config
