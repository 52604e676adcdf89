#include "bench/options.hh"

#include "config/units.hh"

#include <CLI/CLI.hpp>
#include <iostream>
#include <unistd.h>

namespace shardd::bench {

namespace {

constexpr std::size_t sockperf_header = 14;
// One message at most this large: beyond it nothing about an echo server is
// measured that a bulk transfer tool (iperf3) does not measure better.
constexpr std::size_t max_message = 16u << 20;

std::optional<std::chrono::nanoseconds> duration_of(const std::string& s, const char* what, std::string& err) {
    auto d = config::parse_duration(s);
    if (!d) {
        err = std::string(what) + ": " + d.error();
        return std::nullopt;
    }
    return *d;
}

}  // namespace

parse_outcome parse_options(int argc, char** argv) {
    options o;
    CLI::App app{"shardd-bench: a TCP echo load generator that verifies every byte and reports honest latency",
                 "shardd-bench"};
    app.footer(R"(Examples:
  shardd-bench 127.0.0.1:7007                              1 connection, 64 B, 10 s
  shardd-bench -c 256 -d 4 --cpus 1 127.0.0.1:7007         256 connections x 4 in flight on CPU 1
  shardd-bench -c 64 --size 4KiB --duration 30s [::1]:7007
  shardd-bench --size 64-1500 --rate 50000 127.0.0.1:7007  open loop: 50k msg/s, latency from the intended send time
  shardd-bench --protocol sockperf --json 127.0.0.1:11111  drive a sockperf server; JSON report
Exit status: 0 ok; 1 if any byte failed verification, no connection succeeded, a connection was
reset or closed early, or messages went unanswered (the numbers then describe a failing server);
64 bad command line.)");
    std::string target;
    std::string proto = "raw";
    std::string cpus;
    std::string size = "64";
    std::string duration = "10s";
    std::string warmup = "1s";
    app.add_option("target", target, "HOST:PORT to load (an IP address, [IPv6] in brackets)")->required();
    app.add_option("--protocol", proto, "raw (bytes verified in order) or sockperf (sockperf's 14-byte header)")
        ->check(CLI::IsMember({"raw", "sockperf"}));
    app.add_option("--cpus", cpus, "client CPUs, one executor each (default: all this process may use)");
    app.add_option("-c,--connections", o.connections, "connections, spread over the executors")
        ->check(CLI::Range(1u, 1000000u));
    app.add_option("-d,--depth", o.depth,
                   "messages in flight per connection (closed loop); those the window has room for leave in one send")
        ->check(CLI::Range(1u, 4096u));
    app.add_option("-s,--size", size, "message size, or MIN-MAX for uniformly random sizes (64, 4KiB, 64-1500)");
    app.add_option("--duration", duration, "measured time (10s)");
    app.add_option("--warmup", warmup, "unmeasured time first (1s)");
    app.add_option("--connect-rate", o.connect_rate, "new connections per second (default: all at once)")
        ->check(CLI::PositiveNumber);
    app.add_option("--rate", o.rate, "open loop: messages per second in total, latency from the intended send time")
        ->check(CLI::PositiveNumber);
    app.add_flag("--json", o.json, "print the report as one JSON object");
    app.add_flag("!--no-progress", o.progress, "no per-second progress line");
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::cout << app.help();
        return {std::nullopt, 0};
    } catch (const CLI::ParseError& e) {
        std::cerr << "shardd-bench: " << e.what() << "\nRun 'shardd-bench --help' for usage.\n";
        return {std::nullopt, 64};
    }
    auto usage = [](const std::string& msg) {
        std::cerr << "shardd-bench: " << msg << "\n";
        return parse_outcome{std::nullopt, 64};
    };
    auto addr = socket_address::parse(target);
    if (!addr) {
        return usage("target: " + addr.error() + ", found \"" + target + "\"");
    }
    if (addr->port() == 0) {
        return usage("target: port 0 is not a server");
    }
    o.target = *addr;
    o.proto = proto == "sockperf" ? protocol::sockperf : protocol::raw;
    if (cpus.empty()) {
        auto allowed = allowed_cpus();
        if (!allowed) {
            return usage("cannot read this process's CPUs: " + allowed.error().message());
        }
        o.cpus = *allowed;
    } else {
        auto parsed = config::parse_cpu_list(cpus);
        if (!parsed) {
            return usage("--cpus: " + parsed.error());
        }
        o.cpus = *parsed;
    }
    const auto dash = size.find('-');
    auto min = config::parse_size(size.substr(0, dash));
    auto max = dash == std::string::npos ? min : config::parse_size(size.substr(dash + 1));
    if (!min || !max || *min > *max || *min == 0 || *max > max_message) {
        return usage("--size: expected a size like 64, 4KiB or 64-1500 (1 B to 16 MiB, MIN <= MAX), found \"" + size +
                     "\"");
    }
    o.size_min = *min;
    o.size_max = *max;
    if (o.proto == protocol::sockperf && o.size_min < sockperf_header) {
        return usage("--size: sockperf messages are at least 14 bytes (its header)");
    }
    std::string err;
    auto d = duration_of(duration, "--duration", err);
    auto w = duration_of(warmup, "--warmup", err);
    if (!d || !w) {
        return usage(err);
    }
    if (d->count() == 0) {
        return usage("--duration: must be more than 0s");
    }
    o.duration = *d;
    o.warmup = *w;
    o.progress = o.progress && !o.json && isatty(2);
    return {o, 0};
}

}  // namespace shardd::bench
