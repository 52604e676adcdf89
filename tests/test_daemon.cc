// The daemon skeleton through the real binary: readiness through
// $NOTIFY_SOCKET (as systemd sees it), one pinned thread per CPU, log lines
// that name their thread, reload, and a clean exit on SIGTERM/SIGINT.
#include "reactor/cpu_set.hh"
#include "tests/support/process.hh"

#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

using namespace shardd;
using namespace shardd::test;

namespace {

const std::string listener = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n";

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string trimmed(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
        s.pop_back();
    }
    return s;
}

// thread name -> Cpus_allowed_list of every thread of `pid`.
std::map<std::string, std::string> thread_affinities(int pid) {
    std::map<std::string, std::string> out;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
        const std::string dir = entry.path().string();
        const std::string name = trimmed(read_file(dir + "/comm"));
        std::istringstream status(read_file(dir + "/status"));
        for (std::string line; std::getline(status, line);) {
            if (line.rfind("Cpus_allowed_list:", 0) == 0) {
                out[name] = trimmed(line.substr(line.find_first_not_of(" \t", 18)));
            }
        }
    }
    return out;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        out.push_back(line);
    }
    return out;
}

}  // namespace

TEST_CASE("one pinned, named thread per CPU; READY, then SIGTERM exits 0", "[daemon]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    temp_file f("shardd.toml", listener);
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}});
    auto ready = notify.wait_for("READY=1");
    REQUIRE(ready.has_value());
    CHECK_THAT(*ready, Catch::Contains("MAINPID=" + std::to_string(d.pid())));

    auto threads = thread_affinities(d.pid());
    CHECK(threads.size() == allowed->size() + 1);  // main + one per CPU
    for (std::size_t i = 0; i < allowed->size(); ++i) {
        const std::string name = "shardd/" + std::to_string(i);
        INFO(name);
        REQUIRE(threads.contains(name));
        CHECK(threads[name] == std::to_string(allowed->cpus()[i]));
    }

    // Each shard owns three io_uring instances (main, latency, poll), or on
    // the epoll backend (the suite's second run) one epoll instance, and an
    // eventfd.
    const char* env = std::getenv("SHARDD_BACKEND");
    const bool epoll = env != nullptr && std::string(env) == "epoll";
    const std::string backend = epoll ? "epoll" : "io_uring";
    std::map<std::string, int> fds;
    for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(d.pid()) + "/fd")) {
        std::error_code ec;
        ++fds[std::filesystem::read_symlink(e.path(), ec).string()];
    }
    CHECK(fds["anon_inode:[io_uring]"] == static_cast<int>((epoll ? 0 : 3) * allowed->size()));
    CHECK(fds["anon_inode:[eventpoll]"] == static_cast<int>((epoll ? 1 : 0) * allowed->size()));
    CHECK(fds["anon_inode:[eventfd]"] >= static_cast<int>(allowed->size()));

    d.signal(SIGTERM);
    CHECK(notify.wait_for("STOPPING=1").has_value());
    auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    CHECK_THAT(r->err, Catch::Contains("[main] runtime: backend auto, "));
    CHECK_THAT(r->err, Catch::Contains("[main] ready: " + std::to_string(allowed->size()) + " shard"));
    CHECK_THAT(r->err, Catch::Contains("[shard 0] started on CPU " + std::to_string(allowed->cpus()[0]) +
                                       (epoll ? "; backend epoll\n" : "; backend io_uring, rings: main ")));
    CHECK_THAT(r->err, Catch::Contains(" running on " + backend + "\n"));
    // io_uring is usable here (or epoll was asked for): nothing to warn about.
    CHECK_THAT(r->err, !Catch::Contains("not usable"));
    CHECK_THAT(r->err, Catch::Contains("[shard 0] stopped"));
    CHECK_THAT(r->err, Catch::Contains("[main] SIGTERM received: draining"));
    // Every line names its thread.
    for (const auto& line : lines_of(r->err)) {
        INFO(line);
        CHECK((line.find(" [main] ") != std::string::npos || line.find(" [shard ") != std::string::npos));
    }
}

TEST_CASE("--cpus picks the shards' CPUs; SIGINT exits 0", "[daemon]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    const unsigned last = allowed->cpus().back();
    temp_file f("shardd.toml", listener);
    notify_socket notify;
    daemon_process d({"-c", f.path(), "--cpus", std::to_string(last)}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    auto threads = thread_affinities(d.pid());
    CHECK(threads.size() == 2);
    CHECK(threads["shardd/0"] == std::to_string(last));
    d.signal(SIGINT);
    auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}

TEST_CASE("JSON logs are one object per line, naming the thread", "[daemon]") {
    temp_file f("shardd.toml", "[runtime]\ncpus = \"0\"\n[log]\nformat = \"json\"\n" + listener);
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    d.signal(SIGTERM);
    auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    const auto lines = lines_of(r->err);
    REQUIRE(lines.size() >= 4);
    bool saw_shard = false;
    for (const auto& line : lines) {
        INFO(line);
        CHECK_THAT(line, Catch::StartsWith("{\"time\":\""));
        CHECK_THAT(line, Catch::EndsWith("\"}"));
        CHECK_THAT(line, Catch::Contains("\",\"level\":\"info\",\"thread\":\""));
        saw_shard |= line.find("\"thread\":\"shard 0\"") != std::string::npos;
    }
    CHECK(saw_shard);
    CHECK_THAT(r->err, Catch::Contains("\"msg\":\"listener l: echo/raw on 127.0.0.1:0"));
}

TEST_CASE("--log-level warn silences info lines", "[daemon]") {
    temp_file f("shardd.toml", "[runtime]\ncpus = \"0\"\n" + listener);
    notify_socket notify;
    daemon_process d({"-c", f.path(), "--log-level", "warn"}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    d.signal(SIGTERM);
    auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    CHECK(r->err.empty());
}

TEST_CASE("SIGHUP reloads; a bad new config keeps the running one", "[daemon]") {
    const std::string dir_config = "[runtime]\ncpus = \"0\"\n" + listener;
    temp_file f("shardd.toml", dir_config);
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());

    // Break the file, then reload: the daemon says why and keeps serving.
    std::ofstream(f.path()) << "[runtime]\ncpus = \"0\"\nbogus = 1\n" << listener;
    d.signal(SIGHUP);
    auto reloading = notify.wait_for("RELOADING=1");
    REQUIRE(reloading.has_value());
    CHECK_THAT(*reloading, Catch::Contains("MONOTONIC_USEC="));
    REQUIRE(notify.wait_for("READY=1").has_value());

    // A good file with a new log level takes effect at once.
    std::ofstream(f.path()) << "[runtime]\ncpus = \"0\"\n[log]\nlevel = \"debug\"\n" << listener;
    d.signal(SIGHUP);
    REQUIRE(notify.wait_for("RELOADING=1").has_value());
    REQUIRE(notify.wait_for("READY=1").has_value());

    // The format switches live too; [runtime] waits for a restart.
    std::ofstream(f.path()) << "[runtime]\ncpus = \"0\"\nring_entries = 64\n[log]\nlevel = \"debug\"\n"
                            << "format = \"json\"\n"
                            << listener;
    d.signal(SIGHUP);
    REQUIRE(notify.wait_for("RELOADING=1").has_value());
    REQUIRE(notify.wait_for("READY=1").has_value());

    d.signal(SIGTERM);
    auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    CHECK_THAT(r->err, Catch::Contains(":3:1: runtime.bogus: unknown key"));
    CHECK_THAT(r->err, Catch::Contains("reload failed: keeping the running configuration"));
    CHECK_THAT(r->err, Catch::Contains("reload: log level debug, format text"));
    CHECK_THAT(r->err, Catch::Contains(
                           "\"level\":\"info\",\"thread\":\"main\",\"msg\":\"reload: log level debug, format json\"}"));
    CHECK_THAT(r->err, Catch::Contains("\"level\":\"warning\",\"thread\":\"main\",\"msg\":\"reload: "
                                       "runtime.ring_entries needs a restart: keeping the running value; applying the "
                                       "rest\"}"));
}
