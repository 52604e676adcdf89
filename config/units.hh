#pragma once
// Parsing and printing of the value syntaxes the config uses: sizes with
// binary units, durations, and CPU lists. Each parser returns either the value
// or a sentence that says what was expected, for the diagnostics.

#include "reactor/cpu_set.hh"
#include "reactor/expected.hh"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace shardd::config {

using duration = std::chrono::nanoseconds;

// "4MiB", "64 KiB", "512B", "512". Units: B, KiB, MiB, GiB, TiB (powers of
// 1024). "KB"/"MB" are refused with a hint, because whether they mean 1000 or
// 1024 is exactly the ambiguity a config should not have.
expected<std::uint64_t, std::string> parse_size(std::string_view text);
// The largest unit that divides the value exactly: 4194304 -> "4MiB".
std::string format_size(std::uint64_t bytes);

// "50us", "10s", "1m30s". Units: ns, us, ms, s, m, h. A bare number is refused:
// "timeout = 10" could mean anything.
expected<duration, std::string> parse_duration(std::string_view text);
// The largest unit that divides exactly, with compound minutes: "1m30s".
std::string format_duration(duration d);

// Kernel list format: "0-3,6", "1", "0,2,4-5". ("all" is the caller's: it
// depends on the allowed set.)
inline constexpr unsigned max_cpu_number = 65535;
expected<cpu_set, std::string> parse_cpu_list(std::string_view text);

}  // namespace shardd::config
