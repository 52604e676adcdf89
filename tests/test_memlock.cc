// shardd as an unprivileged user under a small RLIMIT_MEMLOCK, through the
// real binary: Docker's default 64 KiB and the kernel's default 8 MiB. Without
// CAP_IPC_LOCK the kernel charges io_uring memory to that limit (registered
// buffers always; since 6.14 the rings and the provided-buffer ring too), and
// what does not fit must degrade with one warning whose numbers add up, never
// stop the daemon.
//
// Needs root, to become another user (setpriv) with a lowered limit (prlimit);
// both are util-linux. Without root every test here is skipped (exit 77).

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sched.h>
#include <sstream>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

using namespace shardd::test;

namespace {

constexpr std::size_t kib = 1024;
constexpr std::size_t docker_memlock = 64 * kib;     // Docker's default, soft and hard
constexpr std::size_t default_memlock = 8192 * kib;  // the kernel's default since 5.16 (MLOCK_LIMIT)

// What meson counts as a skipped test.
constexpr int meson_skip = 77;

// Every daemon runs as a uid of its own, which no account and no other test
// uses: the kernel counts locked memory per user, across processes, and hands
// a closed ring's pages back only later, from a worker. Under a shared uid
// (nobody: test_executor and test_io_memory drop to it), another test, another
// run, or this file's previous daemon could change what fits. 2e9 plus eight
// per pid stays below 2^31 for any pid (PID_MAX_LIMIT is 2^22).
constexpr unsigned uid_base = 2'000'000'000;
unsigned next_uid() {
    static unsigned n = 0;
    return uid_base + static_cast<unsigned>(getpid()) * 8 + (n++ % 8);
}

void skip_unless_unprivileged_user_possible() {
    std::string why;
    if (geteuid() != 0) {
        why = "not root: cannot run shardd as another user";
    } else if (std::ifstream f("/proc/sys/kernel/io_uring_disabled"); f) {
        int disabled = 0;
        if (f >> disabled && disabled != 0) {
            why = "kernel.io_uring_disabled = " + std::to_string(disabled) + ": no io_uring for unprivileged users";
        }
    }
    if (!why.empty()) {
        std::cerr << "SKIP: " << why << "\n";
        std::exit(meson_skip);
    }
}

// A copy of shardd that any user can run: the build tree may sit below a
// directory the test uid cannot enter (a home directory, a CI work dir).
class public_binary {
public:
    public_binary() {
        std::string tmpl = "/tmp/shardd-memlock-bin-XXXXXX";
        if (!mkdtemp(tmpl.data())) {
            throw std::runtime_error("mkdtemp failed");
        }
        _dir = tmpl;
        _path = _dir + "/shardd";
        std::filesystem::copy_file(shardd_binary(), _path);
        chmod(_dir.c_str(), 0755);
        chmod(_path.c_str(), 0755);
    }
    ~public_binary() {
        std::error_code ec;
        std::filesystem::remove_all(_dir, ec);
    }
    public_binary(const public_binary&) = delete;
    public_binary& operator=(const public_binary&) = delete;
    const std::string& path() const { return _path; }

private:
    std::string _dir;
    std::string _path;
};

unsigned first_allowed_cpu() {
    cpu_set_t set;
    CPU_ZERO(&set);
    REQUIRE(sched_getaffinity(0, sizeof(set), &set) == 0);
    for (unsigned cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (CPU_ISSET(cpu, &set)) {
            return cpu;
        }
    }
    FAIL("empty affinity mask");
    return 0;
}

// One shard (a shard's needs are the unit of every number in the warning),
// one raw echo listener, on io_uring: RLIMIT_MEMLOCK is io_uring's limit (the
// epoll backend locks nothing), so these run on io_uring whatever backend
// the suite runs on.
std::string one_shard_config(const std::string& runtime_extra = "") {
    return echo_config(R"(
[[listener]]
name = "echo"
listen = ["127.0.0.1:0"]
mode = "echo"
)",
                       "cpus = \"" + std::to_string(first_allowed_cpu()) + "\"\nbackend = \"io_uring\"\n" +
                           runtime_extra);
}

struct unprivileged {
    unsigned uid;
    std::unique_ptr<echo_daemon> daemon;
};

// Starts shardd as `uid`, without capabilities, with RLIMIT_MEMLOCK soft and
// hard at `memlock` bytes. echo_daemon runs `shell_prefix` in /bin/sh as root;
// this prefix hands the config and notify socket (mode 0700 temp dirs) to the
// uid, then execs prlimit -> setpriv -> shardd in place of the shell, so the
// daemon keeps the pid echo_daemon knows and echo_daemon's own `exec "$0"`
// after the prefix is never reached. $1 is the config file.
unprivileged start(const public_binary& bin, std::size_t memlock, const std::string& config) {
    setenv("TMPDIR", "/tmp", 1);  // temp dirs under a parent the uid can enter
    const unsigned uid = next_uid();
    const std::string id = std::to_string(uid);
    const std::string prefix =
        "chown " + id + ":" + id +
        " \"${1%/*}\" \"$1\" \"${NOTIFY_SOCKET%/*}\" \"$NOTIFY_SOCKET\" && exec prlimit --memlock=" +
        std::to_string(memlock) + ":" + std::to_string(memlock) + " setpriv --reuid=" + id + " --regid=" + id +
        " --clear-groups --inh-caps=-all '" + bin.path() + "' -c \"$1\"";
    return {uid, std::make_unique<echo_daemon>(config, prefix)};
}

std::string proc_status_field(int pid, const std::string& field) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind(field + ":", 0) == 0) {
            std::istringstream in(line.substr(field.size() + 1));
            std::string first;
            in >> first;
            return first;
        }
    }
    return "";
}

// UserBufs (registered fixed buffers) of each io_uring ring the process
// holds, from /proc/PID/fdinfo: what the kernel says was registered.
std::vector<int> registered_buffers_per_ring(int pid) {
    std::vector<int> out;
    const std::string base = "/proc/" + std::to_string(pid);
    for (const auto& fd : std::filesystem::directory_iterator(base + "/fd")) {
        std::error_code ec;
        if (std::filesystem::read_symlink(fd.path(), ec).string() != "anon_inode:[io_uring]") {
            continue;
        }
        std::ifstream info(base + "/fdinfo/" + fd.path().filename().string());
        std::string line;
        while (std::getline(info, line)) {
            if (line.rfind("UserBufs:", 0) == 0) {
                out.push_back(std::stoi(line.substr(9)));
            }
        }
    }
    return out;
}

std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.find(needle) != std::string::npos) {
            out.push_back(line);
        }
    }
    return out;
}

std::size_t number_after(const std::string& line, const std::string& pattern) {
    std::smatch m;
    if (!std::regex_search(line, m, std::regex(pattern))) {
        FAIL("no match for /" << pattern << "/ in: " << line);
    }
    return std::stoull(m[1].str());
}

// The same bytes come back, for a small and a large write.
void check_echo(echo_daemon& d) {
    socket_fd c(d.connect());
    std::uint64_t seed = 11;
    for (std::size_t size : {std::size_t{1}, std::size_t{64 * kib}, std::size_t{1024 * kib}}) {
        INFO(size << " bytes");
        const std::string msg = pattern(size, seed++);
        // 1 MiB is more than both socket buffers: write and read at once.
        // Catch2's macros are not thread-safe: the writer only reports.
        bool sent = false;
        std::thread writer([&] { sent = send_all(c.get(), msg); });
        const std::string back = recv_exact(c.get(), size);
        writer.join();
        CHECK(sent);
        REQUIRE(back.size() == size);
        CHECK(back == msg);
    }
}

// Runs as `uid`, with no capability and the limit it was given.
void check_unprivileged(echo_daemon& d, unsigned uid) {
    CHECK(proc_status_field(d.pid(), "Uid") == std::to_string(uid));
    CHECK(proc_status_field(d.pid(), "CapEff") == "0000000000000000");
}

void check_stops_cleanly(echo_daemon& d) {
    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO("stderr:\n" << r->err);
    CHECK(r->exit_code == 0);
    CHECK(lines_with(r->err, " error ").empty());
    CHECK(lines_with(r->err, " critical ").empty());
}

// The one memlock warning: its numbers, all KiB, must add up. Returns it.
std::string check_one_consistent_warning(const std::string& err, std::size_t memlock) {
    const auto warnings = lines_with(err, "RLIMIT_MEMLOCK");
    INFO("stderr:\n" << err);
    REQUIRE(warnings.size() == 1);
    const std::string& w = warnings[0];
    CHECK(w.find(" warning ") != std::string::npos);
    CHECK(w.find("LimitMEMLOCK=") != std::string::npos);
    CHECK(w.find("ulimit -l") != std::string::npos);
    CHECK(number_after(w, R"(RLIMIT_MEMLOCK is (\d+) KiB)") == memlock / kib);
    const std::size_t need = number_after(w, R"(Full speed needs (\d+) KiB per shard)");
    const std::size_t arena = number_after(w, R"(per shard \((\d+) KiB of io_memory)");
    const std::size_t rings = number_after(w, R"(KiB of io_memory \+ (\d+) KiB of rings)");
    CHECK(need == arena + rings);
    CHECK(need > memlock / kib);  // else nothing would have had to give
    // io_memory was refused: what it asked for is what the total counts.
    CHECK(number_after(w, R"(without registered io_memory \((\d+) KiB more did not fit)") == arena);
    // Whole pages, once per shard (6.12+ shares one registration between
    // the main and poll rings) or twice (before).
    CHECK(arena % 4 == 0);
    if (w.find("smaller io_uring rings") != std::string::npos) {
        const std::size_t locked = number_after(w, R"((\d+) KiB locked instead of)");
        CHECK(number_after(w, R"(KiB locked instead of (\d+) KiB)") == rings);
        CHECK(locked < rings);
        CHECK(locked <= memlock / kib);
    }
    return w;
}

}  // namespace

TEST_CASE("memlock: under Docker's 64 KiB an unprivileged shard starts, echoes, warns once and exits 0", "[memlock]") {
    skip_unless_unprivileged_user_possible();
    public_binary bin;
    auto [uid, d] = start(bin, docker_memlock, one_shard_config());
    check_unprivileged(*d, uid);
    check_echo(*d);
    // io_memory does not fit: no ring has registered buffers.
    const auto bufs = registered_buffers_per_ring(d->pid());
    CHECK(bufs.size() == 3);
    for (int n : bufs) {
        CHECK(n == 0);
    }
    const std::string err = d->process().stderr_text();
    check_one_consistent_warning(err, docker_memlock);
    check_stops_cleanly(*d);
}

TEST_CASE("memlock: under the default 8 MiB an unprivileged shard registers its 4 MiB io_memory, without a warning",
          "[memlock]") {
    skip_unless_unprivileged_user_possible();
    public_binary bin;
    auto [uid, d] = start(bin, default_memlock, one_shard_config());
    check_unprivileged(*d, uid);
    check_echo(*d);
    // Registered on the main and poll rings, not on the latency ring.
    auto bufs = registered_buffers_per_ring(d->pid());
    std::sort(bufs.begin(), bufs.end());
    CHECK(bufs == std::vector<int>{0, 1, 1});
    const std::string err = d->process().stderr_text();
    INFO("stderr:\n" << err);
    CHECK(lines_with(err, "RLIMIT_MEMLOCK").empty());
    check_stops_cleanly(*d);
}

TEST_CASE("memlock: under 8 MiB a 16 MiB io_memory runs unregistered with one warning that adds up", "[memlock]") {
    skip_unless_unprivileged_user_possible();
    public_binary bin;
    auto [uid, d] = start(bin, default_memlock, one_shard_config("io_memory = \"16MiB\"\n"));
    check_unprivileged(*d, uid);
    check_echo(*d);
    for (int n : registered_buffers_per_ring(d->pid())) {
        CHECK(n == 0);
    }
    const std::string w = check_one_consistent_warning(d->process().stderr_text(), default_memlock);
    // The rings fit; io_memory alone is too big for the limit.
    CHECK(w.find("smaller io_uring rings") == std::string::npos);
    CHECK(w.find("or use a smaller io_memory") != std::string::npos);
    check_stops_cleanly(*d);
}
