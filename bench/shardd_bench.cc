// shardd-bench: a TCP echo load generator on shardd's own reactor. One pinned
// executor per client CPU, connections spread over them, every byte verified,
// latency in log-linear histograms merged at the end.

#include "bench/load.hh"
#include "reactor/executor_pool.hh"

#include <cstdio>
#include <iostream>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sstream>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <thread>

using namespace shardd;
using namespace shardd::bench;

namespace {

double seconds_of(std::chrono::nanoseconds d) { return static_cast<double>(d.count()) / 1e9; }

double cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::string human_ns(std::uint64_t ns) {
    char buf[32];
    if (ns < 10'000) {
        std::snprintf(buf, sizeof(buf), "%.2fus", static_cast<double>(ns) / 1e3);
    } else if (ns < 10'000'000) {
        std::snprintf(buf, sizeof(buf), "%.1fus", static_cast<double>(ns) / 1e3);
    } else {
        std::snprintf(buf, sizeof(buf), "%.1fms", static_cast<double>(ns) / 1e6);
    }
    return buf;
}

std::string size_text(const options& o) {
    return o.size_min == o.size_max ? std::to_string(o.size_min) + " B"
                                    : std::to_string(o.size_min) + "-" + std::to_string(o.size_max) + " B";
}

}  // namespace

int main(int argc, char** argv) {
    // The reactor logs (a stalled slice, on a loaded machine) go to stderr:
    // stdout carries the report alone, which --json makes machine-read.
    spdlog::set_default_logger(spdlog::stderr_color_mt("shardd-bench"));
    auto parsed = parse_options(argc, argv);
    if (!parsed.opts) {
        return parsed.exit_code;
    }
    const options o = *parsed.opts;
    const pattern bytes;
    const unsigned shards = static_cast<unsigned>(std::min<std::size_t>(o.cpus.size(), o.connections));
    std::vector<unsigned> cpu_list(o.cpus.cpus().begin(), o.cpus.cpus().begin() + shards);
    cpu_set used(cpu_list);

    run_plan plan;
    plan.opts = &o;
    plan.bytes = &bytes;
    // Give every shard time to start before the clock starts.
    plan.start = clock::now() + std::chrono::milliseconds(50);
    plan.measure_from = plan.start + o.warmup;
    plan.stop = plan.measure_from + o.duration;

    std::vector<shard_result> results(shards);
    std::vector<live_counters> live(shards);
    auto pool = executor_pool::start(used, executor_builder().name("bench").stall_threshold(std::chrono::seconds(1)),
                                     [&](unsigned s) { return run_shard(plan, s, shards, results[s], live[s]); });
    if (!pool) {
        std::cerr << "shardd-bench: cannot start the client executors: " << pool.error() << "\n";
        return 1;
    }

    // Progress: one line a second, redrawn in place (stderr, only on a
    // terminal). CPU use is read at the edges of the measured window.
    double cpu_at_measure = -1;
    double cpu_at_stop = -1;
    std::uint64_t last_msgs = 0;
    auto last_tick = clock::now();
    for (;;) {
        bool all_done = true;
        std::uint64_t msgs = 0;
        std::uint64_t errors = 0;
        std::uint64_t p99 = 0;
        for (auto& l : live) {
            all_done = all_done && l.done.load();
            msgs += l.messages.load(std::memory_order_relaxed);
            errors += l.errors.load(std::memory_order_relaxed);
            p99 = std::max(p99, l.p99_ns.load(std::memory_order_relaxed));
        }
        const auto now = clock::now();
        if (cpu_at_measure < 0 && now >= plan.measure_from) {
            cpu_at_measure = cpu_seconds();
        }
        if (cpu_at_stop < 0 && now >= plan.stop) {
            cpu_at_stop = cpu_seconds();
        }
        if (all_done) {
            break;
        }
        if (o.progress && now - last_tick >= std::chrono::seconds(1)) {
            const double rate = static_cast<double>(msgs - last_msgs) / seconds_of(now - last_tick);
            const double elapsed = std::max(0.0, seconds_of(now - plan.measure_from));
            std::fprintf(stderr, "\r\033[K%s %.0f/%.0fs  %.0f msg/s  p99 %s  errors %llu",
                         now < plan.measure_from ? "warm-up" : "measuring", std::min(elapsed, seconds_of(o.duration)),
                         seconds_of(o.duration), rate, human_ns(p99).c_str(), static_cast<unsigned long long>(errors));
            last_msgs = msgs;
            last_tick = now;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (o.progress) {
        std::fprintf(stderr, "\r\033[K");
    }
    (*pool)->join();
    if (cpu_at_measure < 0) {
        cpu_at_measure = cpu_seconds();
    }
    if (cpu_at_stop < 0) {
        cpu_at_stop = cpu_seconds();
    }

    shard_result total;
    for (auto& r : results) {
        total.latency.merge(r.latency);
        total.messages += r.messages;
        total.bytes += r.bytes;
        total.connected += r.connected;
        total.connect_errors += r.connect_errors;
        total.resets += r.resets;
        total.early_closes += r.early_closes;
        total.verification_errors += r.verification_errors;
        total.behind_schedule += r.behind_schedule;
        total.unanswered += r.unanswered;
        if (total.first_error.empty()) {
            total.first_error = r.first_error;
        }
    }
    for (const auto& e : (*pool)->errors()) {
        if (!e.empty() && total.first_error.empty()) {
            total.first_error = e;
        }
    }
    const double secs = seconds_of(o.duration);
    const double msg_rate = static_cast<double>(total.messages) / secs;
    const double mb_rate = static_cast<double>(total.bytes) / secs / 1e6;
    const double cpu_used = (cpu_at_stop - cpu_at_measure) / secs;  // cores
    const auto& h = total.latency;
    // A run is a result only if every byte checked out and the server kept
    // every connection and answered every message: otherwise the numbers
    // describe a partial, failing server.
    const bool ok = total.verification_errors == 0 && total.connected > 0 && total.resets == 0 &&
                    total.early_closes == 0 && total.messages > 0 && total.unanswered == 0;

    if (o.json) {
        std::ostringstream js;
        js << "{\"target\":\"" << o.target.to_string() << "\",\"protocol\":\""
           << (o.proto == protocol::raw ? "raw" : "sockperf") << "\",\"connections\":" << o.connections
           << ",\"depth\":" << o.depth << ",\"size_min\":" << o.size_min << ",\"size_max\":" << o.size_max
           << ",\"duration_s\":" << secs << ",\"warmup_s\":" << seconds_of(o.warmup) << ",\"rate\":" << o.rate
           << ",\"client_cpus\":" << shards << ",\"messages\":" << total.messages << ",\"msgs_per_s\":" << msg_rate
           << ",\"mb_per_s\":" << mb_rate << ",\"latency_ns\":{\"min\":" << h.min() << ",\"mean\":" << h.mean()
           << ",\"p50\":" << h.percentile(50) << ",\"p90\":" << h.percentile(90) << ",\"p99\":" << h.percentile(99)
           << ",\"p99.9\":" << h.percentile(99.9) << ",\"p99.99\":" << h.percentile(99.99) << ",\"max\":" << h.max()
           << "},\"connected\":" << total.connected << ",\"connect_errors\":" << total.connect_errors
           << ",\"resets\":" << total.resets << ",\"early_closes\":" << total.early_closes
           << ",\"verification_errors\":" << total.verification_errors
           << ",\"behind_schedule\":" << total.behind_schedule << ",\"unanswered\":" << total.unanswered
           << ",\"client_cpu_cores\":" << cpu_used << ",\"ok\":" << (ok ? "true" : "false") << "}";
        std::cout << js.str() << "\n";
    } else {
        std::printf("shardd-bench %s %s: %u connection%s x %s, %s, %s loop, %.0fs (+%.0fs warm-up), %u client CPU%s\n",
                    o.proto == protocol::raw ? "raw" : "sockperf", o.target.to_string().c_str(), o.connections,
                    o.connections == 1 ? "" : "s",
                    o.rate > 0 ? "open loop" : ("depth " + std::to_string(o.depth)).c_str(), size_text(o).c_str(),
                    o.rate > 0 ? "open" : "closed", secs, seconds_of(o.warmup), shards, shards == 1 ? "" : "s");
        std::printf("  messages   %llu  (%.0f msg/s, %.2f MB/s each way)\n",
                    static_cast<unsigned long long>(total.messages), msg_rate, mb_rate);
        std::printf("  latency    p50 %s  p90 %s  p99 %s  p99.9 %s  p99.99 %s  max %s\n",
                    human_ns(h.percentile(50)).c_str(), human_ns(h.percentile(90)).c_str(),
                    human_ns(h.percentile(99)).c_str(), human_ns(h.percentile(99.9)).c_str(),
                    human_ns(h.percentile(99.99)).c_str(), human_ns(h.max()).c_str());
        std::printf("  errors     connect %llu, resets %llu, closed early %llu, verification %llu, unanswered %llu\n",
                    static_cast<unsigned long long>(total.connect_errors),
                    static_cast<unsigned long long>(total.resets), static_cast<unsigned long long>(total.early_closes),
                    static_cast<unsigned long long>(total.verification_errors),
                    static_cast<unsigned long long>(total.unanswered));
        if (o.rate > 0) {
            std::printf("  open loop  %llu sends behind schedule%s\n",
                        static_cast<unsigned long long>(total.behind_schedule),
                        total.behind_schedule > 0 ? " (the server, or this client, could not keep up)" : "");
        }
        std::printf("  client CPU %.0f%% of %u core%s%s\n", cpu_used * 100, shards, shards == 1 ? "" : "s",
                    cpu_used > 0.9 * shards ? " (the client may be the bottleneck)" : "");
    }
    if (!total.first_error.empty()) {
        std::cerr << "shardd-bench: " << total.first_error << "\n";
    }
    if (total.connected == 0) {
        std::cerr << "shardd-bench: no connection to " << o.target.to_string() << " succeeded\n";
    } else if (total.unanswered > 0) {
        std::cerr << "shardd-bench: " << total.unanswered << " message" << (total.unanswered == 1 ? "" : "s")
                  << " got no reply within 2 s of the end: the server stopped answering"
                  << (o.proto == protocol::raw ? "" : " (or does not speak the sockperf protocol)") << "\n";
    } else if (total.messages == 0) {
        std::cerr << "shardd-bench: no message completed in the measured time\n";
    }
    return ok ? 0 : 1;
}
