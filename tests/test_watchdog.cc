// The systemd watchdog through the real binary and a fake $NOTIFY_SOCKET:
// with $WATCHDOG_USEC set, WATCHDOG=1 comes every half interval while every
// shard runs; a shard thread that stops running (held by ptrace, as a shard
// wedged in one task or starved of its CPU would be) stops the pings, and
// they resume when it runs again. $WATCHDOG_PID naming another process turns
// the watchdog off, as sd_watchdog_enabled(3) says.
#include "reactor/cpu_set.hh"
#include "tests/support/process.hh"

#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sys/ptrace.h>
#include <sys/wait.h>

using namespace shardd;
using namespace shardd::test;

namespace {

std::string config_on_one_cpu() {
    const auto allowed = allowed_cpus();
    return "[runtime]\ncpus = \"" + std::to_string(allowed ? allowed->cpus()[0] : 0u) +
           "\"\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n";
}

// The thread id of shard 0 ("shardd/0"), or -1.
int shard_thread(int pid) {
    for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
        std::ifstream comm(e.path() / "comm");
        std::string name;
        std::getline(comm, name);
        if (name == "shardd/0") {
            return std::stoi(e.path().filename().string());
        }
    }
    return -1;
}

// Holds one thread of a child process stopped, without stopping the others:
// PTRACE_SEIZE and PTRACE_INTERRUPT act on that thread alone (PTRACE_ATTACH
// and SIGSTOP would stop the whole process). Released on destruction.
class held_thread {
public:
    explicit held_thread(int tid) : _tid(tid) {
        if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
            _error = std::string("PTRACE_SEIZE: ") + std::strerror(errno);
            return;
        }
        _seized = true;
        int status = 0;
        if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 || waitpid(tid, &status, __WALL) != tid) {
            _error = std::string("PTRACE_INTERRUPT: ") + std::strerror(errno);
        }
    }
    ~held_thread() { release(); }
    held_thread(const held_thread&) = delete;
    held_thread& operator=(const held_thread&) = delete;

    const std::string& error() const { return _error; }
    void release() {
        if (_seized) {
            _seized = false;
            ptrace(PTRACE_DETACH, _tid, nullptr, nullptr);
        }
    }

private:
    int _tid;
    bool _seized = false;
    std::string _error;
};

}  // namespace

TEST_CASE("watchdog: WATCHDOG=1 every half interval while the shards run", "[daemon][watchdog]") {
    temp_file f("shardd.toml", config_on_one_cpu());
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}, {"WATCHDOG_USEC", "400000"}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    for (int i = 0; i < 5; ++i) {
        INFO("ping " << i);
        REQUIRE(notify.wait_for("WATCHDOG=1").has_value());
    }
    d.signal(SIGTERM);
    const auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    CHECK_THAT(r->err, Catch::Contains("watchdog: WATCHDOG=1 every 200 ms while every shard runs"));
    CHECK_THAT(r->err, !Catch::Contains("withholding"));
}

TEST_CASE("watchdog: off when WATCHDOG_PID names another process, or WATCHDOG_USEC is malformed",
          "[daemon][watchdog]") {
    temp_file f("shardd.toml", config_on_one_cpu());
    for (const auto& env : std::vector<std::map<std::string, std::string>>{
             {{"WATCHDOG_USEC", "200000"}, {"WATCHDOG_PID", "1"}},
             {{"WATCHDOG_USEC", "2s"}},
         }) {
        notify_socket notify;
        auto with_notify = env;
        with_notify["NOTIFY_SOCKET"] = notify.path();
        daemon_process d({"-c", f.path()}, with_notify);
        REQUIRE(notify.wait_for("READY=1").has_value());
        d.signal(SIGTERM);
        REQUIRE(notify.wait_for("STOPPING=1").has_value());
        const auto r = d.wait();
        REQUIRE(r.has_value());
        CHECK(r->exit_code == 0);
        CHECK_THAT(r->err, !Catch::Contains("WATCHDOG=1 every"));
        if (env.count("WATCHDOG_PID") == 0) {
            CHECK_THAT(r->err, Catch::Contains("WATCHDOG_USEC=2s is not a positive number of microseconds"));
        }
    }
}

TEST_CASE("watchdog: a shard that stops running stops the pings until it runs again", "[daemon][watchdog]") {
    temp_file f("shardd.toml", config_on_one_cpu());
    notify_socket notify;
    // 1 s: a ping every 500 ms, and a shard must have beaten within 500 ms.
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}, {"WATCHDOG_USEC", "1000000"}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    REQUIRE(notify.wait_for("WATCHDOG=1").has_value());

    const int tid = shard_thread(d.pid());
    REQUIRE(tid > 0);
    held_thread held(tid);
    if (!held.error().empty()) {
        // Only where ptrace is forbidden (kernel.yama.ptrace_scope = 3, or a
        // seccomp profile around the tests).
        WARN("cannot hold the shard's thread: " << held.error() << "; skipped");
        return;
    }
    // The main thread notices within a ping or two, and says so: to the log
    // and in STATUS=. Every WATCHDOG=1 sent before that is read here too.
    const auto status = notify.wait_for("STATUS=shard 0 not running; watchdog pings withheld");
    INFO(d.stderr_text());
    REQUIRE(status.has_value());
    CHECK(d.wait_for_output("watchdog: shard 0 did not run for 500 ms; withholding WATCHDOG=1"));
    // No ping for three intervals: systemd would have restarted us.
    CHECK_FALSE(notify.wait_for("WATCHDOG=1", std::chrono::seconds(3)).has_value());

    held.release();
    REQUIRE(notify.wait_for("WATCHDOG=1").has_value());
    CHECK(d.wait_for_output("watchdog: every shard runs again"));
    d.signal(SIGTERM);
    const auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}
