#pragma once
// shardd-bench's command line.

#include "reactor/cpu_set.hh"
#include "reactor/socket_address.hh"

#include <chrono>
#include <optional>
#include <string>

namespace shardd::bench {

enum class protocol { raw, sockperf };

struct options {
    socket_address target;
    protocol proto = protocol::raw;
    cpu_set cpus;  // client executors, one per CPU
    unsigned connections = 1;
    unsigned depth = 1;  // messages in flight per connection (closed loop)
    std::size_t size_min = 64;
    std::size_t size_max = 64;
    std::chrono::nanoseconds duration = std::chrono::seconds(10);
    std::chrono::nanoseconds warmup = std::chrono::seconds(1);
    double connect_rate = 0;  // connections per second; 0: all at once
    double rate = 0;          // messages per second in total; 0: closed loop
    bool json = false;
    bool progress = true;  // a redrawn line per second on a terminal
};

// Parses argv. On --help prints usage and returns exit code 0; on a usage
// error prints it and returns 64.
struct parse_outcome {
    std::optional<options> opts;
    int exit_code = 0;
};
parse_outcome parse_options(int argc, char** argv);

}  // namespace shardd::bench
