// shardd-micro: micro-benchmarks of the runtime, in nanoseconds per operation.
//
// Performance is measured, not assumed. Each benchmark puts a number on one
// step of the echo path (starting a task, a coroutine switch, a trip through
// the scheduler, an io_uring round trip, a message to another shard), so that
// a change to the reactor is judged by what it costs. Each warms up, then
// times a fixed number of operations `repetitions` times; we report the median
// and the spread, because on a shared VM a mean hides the outliers that
// matter. bench/README.md says what each number means.

#include "reactor/cpu_set.hh"
#include "reactor/executor.hh"
#include "reactor/executor_pool.hh"
#include "reactor/io.hh"
#include "reactor/shard_mesh.hh"

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <latch>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sstream>
#include <string>
#include <sys/utsname.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace shardd;

namespace {

constexpr int repetitions = 5;
// Tasks (and so operations) in flight for the batched and pipelined variants:
// enough that one io_uring_enter or one mesh drain carries a real batch, small
// next to the 1024-entry rings and mesh queues, so nothing hits a backlog.
constexpr unsigned in_flight = 64;
// Spawns between joins, like a burst of accepted connections: the joiner's own
// wake-up is a negligible share of each spawn. (1024 live frames also outgrow
// glibc's per-thread cache of freed blocks; bench/README.md has the effect.)
constexpr unsigned spawn_batch = 1024;

// Results are folded in here so the compiler cannot drop the work: an atomic
// store is a side effect it must keep.
std::atomic<std::uint64_t> g_sink{0};

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "shardd-micro: %s\n", what.c_str());
    std::exit(1);
}

// executor::create()'s error: an error_code or a struct with a `message`
// (the reactor's API is moving; the benchmarks should not care).
template <typename E>
std::string describe(const E& e) {
    if constexpr (requires { e.message(); }) {
        return e.message();
    } else {
        return e.message;
    }
}

// The benchmark bodies. Each performs `n` operations on the current executor.
using body_fn = task<void> (*)(std::uint64_t n);

task<void> trivial() { co_return; }

task<void> spawn_join_batch(std::uint64_t n) {
    executor* ex = executor::current();
    std::vector<join_handle<void>> handles;
    handles.reserve(spawn_batch);
    for (std::uint64_t done = 0; done < n; done += handles.size()) {
        handles.clear();
        for (std::uint64_t i = 0; i < std::min<std::uint64_t>(spawn_batch, n - done); ++i) {
            handles.push_back(ex->spawn(trivial()));
        }
        for (auto& h : handles) {
            co_await h;
        }
    }
}

task<void> spawn_join_one(std::uint64_t n) {
    executor* ex = executor::current();
    for (std::uint64_t i = 0; i < n; ++i) {
        co_await ex->spawn(trivial());
    }
}

task<std::uint64_t> child(std::uint64_t v) { co_return v + 1; }

task<void> await_child(std::uint64_t n) {
    std::uint64_t acc = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
        acc = co_await child(acc);
    }
    g_sink.fetch_add(acc, std::memory_order_relaxed);
}

task<void> yield_loop(std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; ++i) {
        co_await yield();
    }
}

task<void> submit_to_loop(std::uint64_t n) {
    std::uint64_t acc = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
        acc += co_await submit_to(1, [] { return 1; });
    }
    g_sink.fetch_add(acc, std::memory_order_relaxed);
}

task<void> nop_loop(std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; ++i) {
        auto r = co_await nop();
        if (!r) {
            throw std::system_error(r.error(), "nop");
        }
    }
}

// `Body` split over `in_flight` spawned tasks, all joined: n operations total.
template <body_fn Body>
task<void> fan_out(std::uint64_t n) {
    executor* ex = executor::current();
    std::vector<join_handle<void>> handles;
    for (unsigned i = 0; i < in_flight; ++i) {
        handles.push_back(ex->spawn(Body(n / in_flight + (i < n % in_flight ? 1 : 0))));
    }
    for (auto& h : handles) {
        co_await h;
    }
}

enum class placement { one_shard, two_shards, two_shards_spinning };

struct benchmark {
    const char* name;
    body_fn body;
    // Chosen so that one repetition takes 0.2-1 s on a 2-core VM (bench/README.md).
    std::uint64_t iterations;
    placement where;
};

const benchmark benchmarks[] = {
    {"spawn_join_batch1024", spawn_join_batch, 2'000'000, placement::one_shard},
    {"spawn_join_one", spawn_join_one, 4'000'000, placement::one_shard},
    {"await_child_task", await_child, 20'000'000, placement::one_shard},
    {"yield", yield_loop, 40'000'000, placement::one_shard},
    {"submit_to_rtt", submit_to_loop, 10'000, placement::two_shards},
    {"submit_to_rtt_spin50us", submit_to_loop, 100'000, placement::two_shards_spinning},
    {"submit_to_pipelined64", fan_out<submit_to_loop>, 500'000, placement::two_shards},
    {"nop_sequential", nop_loop, 200'000, placement::one_shard},
    {"nop_batched64", fan_out<nop_loop>, 4'000'000, placement::one_shard},
};

// Warm-up, then `repetitions` timed runs; ns/op of each run.
task<std::vector<double>> measure(body_fn body, std::uint64_t n) {
    // Warm caches, the allocator's free lists and the branch predictors, and
    // let the CPU leave any idle state.
    co_await body(std::max<std::uint64_t>(n / 5, 1));
    std::vector<double> ns_per_op;
    for (int rep = 0; rep < repetitions; ++rep) {
        const auto start = std::chrono::steady_clock::now();
        co_await body(n);
        const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
        ns_per_op.push_back(elapsed.count() / static_cast<double>(n));
    }
    co_return ns_per_op;
}

executor_builder builder_for(placement where) {
    // await_child_task runs its whole loop in one resumption (symmetric
    // transfer never returns to the scheduler): by design, not a stall.
    auto b = executor_builder().name("micro").stall_threshold(0ns);
    if (where == placement::two_shards_spinning) {
        b.spin_before_park(50us);
    }
    return b;
}

// Pins the calling thread first, as executor_pool does, then creates its
// executor: rings and frames then come from that CPU's memory.
std::unique_ptr<executor> make_executor(unsigned cpu, placement where) {
    if (auto ec = pin_current_thread(cpu)) {
        fail("cannot pin to CPU " + std::to_string(cpu) + ": " + ec.message());
    }
    auto ex = executor::create(builder_for(where).config());
    if (!ex) {
        fail("cannot create an executor: " + describe(ex.error()));
    }
    return std::move(*ex);
}

// On a thread of its own pinned to `cpu`, as a shard runs: the main thread's
// affinity stays untouched for the two-shard benchmarks.
std::vector<double> run_one_shard(unsigned cpu, body_fn body, std::uint64_t n) {
    std::vector<double> samples;
    std::thread([&] {
        auto ex = make_executor(cpu, placement::one_shard);
        samples = ex->run(measure(body, n));  // a throw ends the process, with its what()
    }).join();
    return samples;
}

// Shard 0 runs the benchmark against shard 1, which only answers messages.
std::vector<double> run_two_shards(const cpu_set& allowed, placement where, body_fn body, std::uint64_t n) {
    std::vector<double> samples;
    if (allowed.size() >= 2) {
        const cpu_set cpus({allowed.cpus()[0], allowed.cpus()[1]});
        auto pool = executor_pool::start(cpus, builder_for(where), [&](unsigned shard) -> task<void> {
            if (shard == 0) {
                samples = co_await measure(body, n);
            }
        });
        if (!pool) {
            fail(pool.error());
        }
        (*pool)->join();
        for (const auto& e : (*pool)->errors()) {
            if (!e.empty()) {
                fail(e);
            }
        }
        return samples;
    }
    // executor_pool runs one shard per CPU; with one CPU allowed, wire two
    // shards by hand, both pinned to it, to still measure the mesh itself.
    const unsigned cpu = allowed.cpus()[0];
    shard_mesh mesh(2);
    std::latch attached(2);
    std::barrier<> left_loops(2);
    executor* peer = nullptr;
    auto shard = [&](unsigned id) {
        auto ex = make_executor(cpu, where);
        mesh.attach(id, *ex);
        if (id == 1) {
            peer = ex.get();
        }
        attached.arrive_and_wait();
        if (id == 0) {
            samples = ex->run(measure(body, n));
            peer->request_stop();
        } else {
            ex->run();
        }
        // Neither executor may go while the other could still wake it.
        left_loops.arrive_and_wait();
    };
    { std::jthread t0(shard, 0), t1(shard, 1); }
    return samples;
}

// Machine facts, printed with the numbers: without them a number means little.
using facts = std::vector<std::pair<std::string, std::string>>;

facts collect_facts(const cpu_set& allowed) {
    std::string model = "unknown";
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);) {
        if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
            model = line.substr(line.find(':') + 2);
            break;
        }
    }
    utsname u{};
    const std::string kernel = uname(&u) == 0 ? u.release : "unknown";
#ifdef IO_URING_VERSION_MAJOR
    const std::string liburing = std::to_string(IO_URING_VERSION_MAJOR) + "." + std::to_string(IO_URING_VERSION_MINOR);
#elif defined(SHARDD_LIBURING_VERSION)
    const std::string liburing = SHARDD_LIBURING_VERSION;  // pkg-config's, from bench/meson.build
#else
    const std::string liburing = "2.3";
#endif
#ifdef __clang__
    const std::string compiler = __VERSION__;  // "Debian Clang 14.0.6"
#else
    const std::string compiler = "g++ " __VERSION__;       // g++ says only "12.2.0"
#endif
#ifdef NDEBUG
    const std::string build = SHARDD_BUILDTYPE ", NDEBUG";
#else
    const std::string build = SHARDD_BUILDTYPE ", asserts on";
#endif
    // The flag set the kernel accepted decides how a NOP round trip is run
    // (DEFER_TASKRUN or not), so it belongs with the numbers.
    std::string ring_flags = "unknown";
    std::thread([&] {
        if (auto ex = executor::create({})) {
            ring_flags = (*ex)->main_ring().describe_flags();
        }
    }).join();
    return {{"cpu_model", model},
            {"cpus", std::to_string(std::thread::hardware_concurrency())},
            {"allowed_cpus", allowed.to_string()},
            {"kernel", kernel},
            {"liburing", liburing},
            {"compiler", compiler},
            {"build", build},
            {"main_ring_flags", ring_flags}};
}

// Seconds of CPU time since boot on `cpus`: busy (steal included: the host
// took it) and in all, from /proc/stat; and ours, whose threads run only there.
// Busy minus ours is what other work took from a benchmark: on a shared VM,
// the noise, so each row reports it (10 ms resolution: meaningful from ~1 s).
std::array<double, 3> cpu_times(const std::vector<unsigned>& cpus) {
    std::array<double, 3> t{0, 0, static_cast<double>(std::clock()) / CLOCKS_PER_SEC};
    const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    std::ifstream stat("/proc/stat");
    for (std::string line; std::getline(stat, line);) {
        std::istringstream in(line);
        std::string name;
        double v[8] = {};  // user nice system idle iowait irq softirq steal
        in >> name >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5] >> v[6] >> v[7];
        for (unsigned c : cpus) {
            if (name == "cpu" + std::to_string(c)) {
                for (int i = 0; i < 8; ++i) {
                    t[0] += (i == 3 || i == 4) ? 0 : v[i] / tick;
                    t[1] += v[i] / tick;
                }
            }
        }
    }
    return t;
}

struct result {
    std::string name;
    std::uint64_t iterations = 0;
    std::vector<double> ns_per_op;  // sorted
    std::string where;
    double others_percent = 0;  // of the benchmark's CPUs' time, taken by other work
    double median() const { return ns_per_op[ns_per_op.size() / 2]; }
};

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
    }
    return out + "\"";
}

void print_json(const facts& machine, double scale, const std::vector<result>& results) {
    std::printf("{\"machine\":{");
    for (std::size_t i = 0; i < machine.size(); ++i) {
        std::printf("%s%s:%s", i ? "," : "", json_string(machine[i].first).c_str(),
                    json_string(machine[i].second).c_str());
    }
    std::printf("},\"repetitions\":%d,\"iterations_scale\":%g,\"benchmarks\":[", repetitions, scale);
    for (std::size_t i = 0; i < results.size(); ++i) {
        const result& r = results[i];
        std::printf("%s{\"name\":%s,\"iterations\":%llu,\"ns_per_op_median\":%.2f,\"ns_per_op_min\":%.2f,"
                    "\"ns_per_op_max\":%.2f,\"ops_per_sec\":%.0f,\"others_cpu_percent\":%.1f,\"where\":%s}",
                    i ? "," : "", json_string(r.name).c_str(), static_cast<unsigned long long>(r.iterations),
                    r.median(), r.ns_per_op.front(), r.ns_per_op.back(), 1e9 / r.median(), r.others_percent,
                    json_string(r.where).c_str());
    }
    std::printf("]}\n");
}

struct options {
    std::string filter;
    double scale = 1.0;
    bool json = false;
};

[[noreturn]] void usage(int status) {
    std::fprintf(status ? stderr : stdout, "usage: shardd-micro [--filter NAME] [--iterations-scale X] [--json]\n"
                                           "  --filter NAME          run only the benchmarks whose name contains NAME\n"
                                           "  --iterations-scale X   multiply every iteration count by X (> 0)\n"
                                           "  --json                 print one JSON object instead of the table\n"
                                           "benchmarks:");
    for (const auto& b : benchmarks) {
        std::fprintf(status ? stderr : stdout, " %s", b.name);
    }
    std::fprintf(status ? stderr : stdout, "\n");
    std::exit(status);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--filter" && i + 1 < argc) {
            o.filter = argv[++i];
        } else if (arg == "--iterations-scale" && i + 1 < argc) {
            char* end = nullptr;
            o.scale = std::strtod(argv[++i], &end);
            if (*end != '\0' || !(o.scale > 0)) {
                std::fprintf(stderr, "shardd-micro: --iterations-scale needs a number > 0\n");
                usage(2);
            }
        } else if (arg == "--json") {
            o.json = true;
        } else if (arg == "--help" || arg == "-h") {
            usage(0);
        } else {
            std::fprintf(stderr, "shardd-micro: unknown or incomplete argument '%s'\n", arg.c_str());
            usage(2);
        }
    }
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const options opt = parse(argc, argv);
    // A stall warning from an executor must not land in the table or the JSON.
    spdlog::set_default_logger(spdlog::stderr_color_st("micro"));
    std::vector<const benchmark*> selected;
    for (const auto& b : benchmarks) {
        if (std::string(b.name).find(opt.filter) != std::string::npos) {
            selected.push_back(&b);
        }
    }
    if (selected.empty()) {
        std::fprintf(stderr, "shardd-micro: no benchmark matches '%s'\n", opt.filter.c_str());
        usage(2);
    }

    auto allowed = allowed_cpus();
    if (!allowed || allowed->empty()) {
        fail("cannot read the CPUs this process may use");
    }
    const facts machine = collect_facts(*allowed);
    const std::string one_cpu = "CPU " + std::to_string(allowed->cpus()[0]);
    const std::string two_cpus =
        allowed->size() >= 2 ? "CPUs " + std::to_string(allowed->cpus()[0]) + "," + std::to_string(allowed->cpus()[1])
                             : "both shards on " + one_cpu + " (one CPU allowed)";
    if (!opt.json) {
        for (const auto& [key, value] : machine) {
            std::printf("%-16s %s\n", key.c_str(), value.c_str());
        }
        std::printf("%d repetitions after a warm-up; ns/op median and min-max\n\n", repetitions);
        std::printf("%-24s %12s %10s %10s %14s %7s  %s\n", "benchmark", "ns/op median", "min", "max", "ops/s", "others",
                    "where");
        std::fflush(stdout);
    }

    std::vector<result> results;
    for (const benchmark* b : selected) {
        result r;
        r.name = b->name;
        r.iterations = std::max<std::uint64_t>(static_cast<std::uint64_t>(b->iterations * opt.scale), 1);
        std::vector<unsigned> used{allowed->cpus()[0]};
        if (b->where != placement::one_shard && allowed->size() >= 2) {
            used.push_back(allowed->cpus()[1]);
        }
        const auto before = cpu_times(used);
        if (b->where == placement::one_shard) {
            r.ns_per_op = run_one_shard(allowed->cpus()[0], b->body, r.iterations);
            r.where = one_cpu;
        } else {
            r.ns_per_op = run_two_shards(*allowed, b->where, b->body, r.iterations);
            r.where = two_cpus;
        }
        const auto after = cpu_times(used);
        r.others_percent =
            std::max(0.0, 100 * ((after[0] - before[0]) - (after[2] - before[2])) / (after[1] - before[1]));
        std::sort(r.ns_per_op.begin(), r.ns_per_op.end());
        if (!opt.json) {
            std::printf("%-24s %12.1f %10.1f %10.1f %14.0f %6.1f%%  %s\n", r.name.c_str(), r.median(),
                        r.ns_per_op.front(), r.ns_per_op.back(), 1e9 / r.median(), r.others_percent, r.where.c_str());
            std::fflush(stdout);
        }
        results.push_back(std::move(r));
    }
    if (opt.json) {
        print_json(machine, opt.scale, results);
    }
    return 0;
}
