// The echo service through the real shardd binary, abused: hundreds of
// connections with random traffic in random interleavings, clients that reset
// mid-stream or never read, max_connections, idle_timeout, a daemon that runs
// out of file descriptors, and the max_pending bound on what a client that
// never reads may hold of its shard's receive buffers. Every wait is on a
// socket (poll with a deadline) or on the daemon's own log and counters;
// every load loop is bounded in count and in time.

#include "tests/support/echo_daemon.hh"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <poll.h>
#include <random>
#include <regex>
#include <sched.h>
#include <set>
#include <sstream>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd::test;

namespace {

using steady = std::chrono::steady_clock;

int ms_left(steady::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

double seconds_since(steady::time_point t) { return std::chrono::duration<double>(steady::now() - t).count(); }

// An owned socket; -1 when empty.
class socket_fd {
public:
    socket_fd() = default;
    explicit socket_fd(int fd) : _fd(fd) {}
    socket_fd(socket_fd&& o) noexcept : _fd(std::exchange(o._fd, -1)) {}
    socket_fd& operator=(socket_fd&& o) noexcept {
        reset();
        _fd = std::exchange(o._fd, -1);
        return *this;
    }
    ~socket_fd() { reset(); }
    int get() const { return _fd; }
    void reset() {
        if (_fd >= 0) {
            ::close(std::exchange(_fd, -1));
        }
    }

private:
    int _fd = -1;
};

std::string listener_toml(const std::string& extra = "", const std::string& listen = R"(["127.0.0.1:0"])") {
    return "[[listener]]\nname = \"echo\"\nlisten = " + listen + "\nmode = \"echo\"\n" + extra + "\n";
}

// Sends `msg` while reading its echo (never blocks on either), until all of
// it came back, the peer closed or failed, or the deadline. Returns what came
// back.
std::string echo_exchange(int fd, const std::string& msg, std::chrono::milliseconds timeout = default_timeout) {
    const auto deadline = steady::now() + timeout;
    std::string back;
    std::size_t sent = 0;
    static char buf[65536];
    while (back.size() < msg.size()) {
        pollfd p{fd, static_cast<short>(POLLIN | (sent < msg.size() ? POLLOUT : 0)), 0};
        if (poll(&p, 1, ms_left(deadline)) <= 0) {
            break;
        }
        if ((p.revents & POLLOUT) && sent < msg.size()) {
            const ssize_t n = ::send(fd, msg.data() + sent, msg.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                sent += static_cast<std::size_t>(n);
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                break;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            const ssize_t n = ::recv(fd, buf, std::min(sizeof(buf), msg.size() - back.size()), MSG_DONTWAIT);
            if (n == 0) {
                break;
            }
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    continue;
                }
                break;
            }
            back.append(buf, static_cast<std::size_t>(n));
        }
    }
    return back;
}

// "" when `back` is `sent`; otherwise what differs, briefly (assertions on
// the strings themselves would print megabytes of binary).
std::string mismatch(const std::string& back, const std::string& sent) {
    const auto diff = std::mismatch(back.begin(), back.end(), sent.begin(), sent.end());
    if (diff.first == back.end() && diff.second == sent.end()) {
        return "";
    }
    std::string what = "got " + std::to_string(back.size()) + " of " + std::to_string(sent.size()) + " bytes back";
    if (diff.first != back.end()) {
        what += ", first difference at byte " + std::to_string(diff.first - back.begin());
    }
    return what;
}

// Echoes `msg` over `fd`: "" when it came back byte-exact, else what went
// wrong.
std::string echo_check(int fd, const std::string& msg, std::chrono::milliseconds timeout = default_timeout) {
    return mismatch(echo_exchange(fd, msg, timeout), msg);
}

enum class peer_end { eof, reset, data, timeout };

const char* to_string(peer_end e) {
    switch (e) {
    case peer_end::eof: return "EOF";
    case peer_end::reset: return "reset";
    case peer_end::data: return "unexpected data";
    case peer_end::timeout: return "nothing (timeout)";
    }
    return "?";
}

// What a socket that should be closed by the peer, with nothing to read,
// sees first.
peer_end wait_for_close(int fd, std::chrono::milliseconds timeout) {
    const auto deadline = steady::now() + timeout;
    while (true) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, ms_left(deadline)) <= 0) {
            return peer_end::timeout;
        }
        char c;
        const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
        if (n == 0) {
            return peer_end::eof;
        }
        if (n > 0) {
            return peer_end::data;
        }
        if (errno == ECONNRESET || errno == EPIPE) {
            return peer_end::reset;
        }
        if (errno != EAGAIN && errno != EINTR) {
            return peer_end::reset;
        }
    }
}

// Half-closes, then reads until the daemon's EOF: everything sent came back
// and the daemon is done with the connection (as far as the peer can see).
bool close_cleanly(int fd, std::chrono::milliseconds timeout = default_timeout) {
    std::string rest;
    return ::shutdown(fd, SHUT_WR) == 0 && recv_until_eof(fd, rest, timeout) && rest.empty();
}

// Closes with an RST instead of a FIN.
void reset_connection(socket_fd& s) {
    const linger l{1, 0};
    ::setsockopt(s.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    s.reset();
}

// One shard's "drained: ..." line, logged at exit.
struct shard_stats {
    unsigned shard = 0;
    std::uint64_t accepted = 0, closed = 0, refused = 0, idle_closed = 0, errors = 0;
    std::uint64_t bytes_in = 0, bytes_out = 0, enobufs = 0, pauses = 0, backoffs = 0;
};

std::vector<shard_stats> drained_stats(const std::string& log) {
    static const std::regex line(
        R"(\[shard (\d+)\] drained: connections accepted (\d+), closed (\d+), refused (\d+), idle-closed (\d+), )"
        R"(errors (\d+); bytes in (\d+), out (\d+); ENOBUFS (\d+), backpressure pauses (\d+), accept back-offs (\d+))");
    std::vector<shard_stats> out;
    for (std::sregex_iterator it(log.begin(), log.end(), line), end; it != end; ++it) {
        const auto& m = *it;
        auto n = [&m](int i) { return static_cast<std::uint64_t>(std::stoull(m[i].str())); };
        out.push_back({static_cast<unsigned>(n(1)), n(2), n(3), n(4), n(5), n(6), n(7), n(8), n(9), n(10), n(11)});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.shard < b.shard; });
    return out;
}

shard_stats sum(const std::vector<shard_stats>& all) {
    shard_stats t;
    for (const auto& s : all) {
        t.accepted += s.accepted;
        t.closed += s.closed;
        t.refused += s.refused;
        t.idle_closed += s.idle_closed;
        t.errors += s.errors;
        t.bytes_in += s.bytes_in;
        t.bytes_out += s.bytes_out;
        t.enobufs += s.enobufs;
        t.pauses += s.pauses;
        t.backoffs += s.backoffs;
    }
    return t;
}

// Log lines at warning level or above ("TIME LEVEL [thread] message"), except
// the executor's stall report: on a loaded CI machine the kernel may take a
// shard's CPU away mid-slice, which the executor cannot tell from a task
// that did not yield.
std::string alarming_lines(const std::string& log) {
    std::string out;
    std::istringstream in(log);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string time;
        std::string level;
        words >> time >> level;
        if ((level == "warning" || level == "error" || level == "critical") &&
            line.find("held the CPU for") == std::string::npos) {
            out += line + "\n";
        }
    }
    return out;
}

std::size_t cpus_allowed() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        return 1;
    }
    return static_cast<std::size_t>(CPU_COUNT(&set));
}

// Inodes of the Unix-domain sockets open in this network namespace.
std::set<std::string> unix_socket_inodes() {
    std::set<std::string> out;
    std::ifstream f("/proc/net/unix");
    std::string line;
    std::getline(f, line);  // header
    while (std::getline(f, line)) {
        // Num RefCount Protocol Flags Type St Inode [Path]
        std::istringstream words(line);
        std::string w;
        for (int i = 0; i < 7 && words >> w; ++i) {
        }
        out.insert(w);
    }
    return out;
}

// Descriptors of `pid` numbered below `limit` (RLIMIT_NOFILE caps the number
// a new descriptor gets, not how many there are). With `skip_unix`, leaves
// out Unix-domain sockets: sd_notify() opens one for each message and closes
// it just after sending, so right after READY=1 it may still be there.
std::size_t fds_below(int pid, int limit, bool skip_unix = false) {
    const auto unix_inodes = skip_unix ? unix_socket_inodes() : std::set<std::string>{};
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
        if (std::stoi(e.path().filename().string()) >= limit) {
            continue;
        }
        std::error_code ec;
        const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
        // "socket:[12345]"
        if (skip_unix && target.rfind("socket:[", 0) == 0 &&
            unix_inodes.count(target.substr(8, target.size() - 9)) > 0) {
            continue;
        }
        ++n;
    }
    return n;
}

std::string proc_limit(int pid, const std::string& name) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/limits");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind(name, 0) == 0) {
            return line;
        }
    }
    return "";
}

int first_allowed_cpu() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (CPU_ISSET(c, &set)) {
                return c;
            }
        }
    }
    return 0;
}

// Clients that write and never read: each sends (non-blocking) until its
// window closes, at most `limit` bytes. Returns once no socket has been
// writable for `stall` (all windows closed) or at `deadline`; counts what
// each sent into `sent`. Returns whether all stalled.
bool flood_until_stalled(const std::vector<socket_fd>& hogs, const std::string& data, std::vector<std::size_t>& sent,
                         std::chrono::milliseconds stall, steady::time_point deadline) {
    sent.assign(hogs.size(), 0);
    std::vector<pollfd> pfds;
    while (steady::now() < deadline) {
        pfds.clear();
        for (const auto& h : hogs) {
            pfds.push_back({h.get(), POLLOUT, 0});
        }
        const int rc = poll(pfds.data(), pfds.size(), std::min(static_cast<int>(stall.count()), ms_left(deadline)));
        if (rc < 0) {
            return false;
        }
        if (rc == 0) {
            return steady::now() < deadline;
        }
        for (std::size_t i = 0; i < hogs.size(); ++i) {
            if (pfds[i].revents & (POLLERR | POLLHUP)) {
                return false;
            }
            if ((pfds[i].revents & POLLOUT) && sent[i] < data.size()) {
                const ssize_t n =
                    ::send(hogs[i].get(), data.data() + sent[i], data.size() - sent[i], MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN) {
                    return false;
                }
                sent[i] += n > 0 ? static_cast<std::size_t>(n) : 0;
            }
        }
        if (std::all_of(sent.begin(), sent.end(), [&](std::size_t n) { return n == data.size(); })) {
            return false;  // never stalled
        }
    }
    return false;
}

std::uint64_t test_seed() {
    const unsigned s = Catch::rngSeed();
    return s != 0 ? s : std::random_device{}();
}

}  // namespace

TEST_CASE("echo abuse: 200 connections with random messages in random interleavings come back byte-exact",
          "[echo][abuse]") {
    const std::uint64_t seed = test_seed();
    INFO("seed " << seed << " (rerun with --rng-seed " << seed << ")");
    std::mt19937_64 rng(seed);
    auto uniform = [&rng](std::size_t lo, std::size_t hi) {
        return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
    };
    // Sizes from 1 B to 64 KiB: half uniform, half log-uniform so that small
    // messages are common too.
    auto message_size = [&]() -> std::size_t {
        if (uniform(0, 1) == 0) {
            return uniform(1, 64 * 1024);
        }
        const std::size_t k = uniform(0, 15);
        return uniform(std::size_t{1} << k, std::size_t{2} << k);
    };

    echo_daemon d(echo_config(listener_toml("", R"(["127.0.0.1:0", "[::1]:0"])")));
    REQUIRE(d.addresses().size() == 2);

    constexpr std::size_t clients = 200;
    struct client {
        socket_fd s;
        std::string data;               // everything it sends, in order
        std::vector<std::size_t> ends;  // where each message ends in `data`
        bool lockstep = false;          // next message only once the last came back
        std::size_t sent = 0;
        std::size_t got = 0;
        bool shut = false;  // half-closed after the last byte
        bool done = false;  // EOF after everything came back, or failed
        std::string failure;
    };
    std::vector<client> cs(clients);
    std::uint64_t total_bytes = 0;
    for (std::size_t i = 0; i < clients; ++i) {
        client& c = cs[i];
        const std::size_t messages = uniform(1, 20);
        std::size_t total = 0;
        for (std::size_t m = 0; m < messages; ++m) {
            total += message_size();
            c.ends.push_back(total);
        }
        c.data = pattern(total, seed * 1000 + i);
        c.lockstep = uniform(0, 1) == 0;
        total_bytes += total;
    }
    // All connected before any traffic: 200 connections open at once.
    for (std::size_t i = 0; i < clients; ++i) {
        cs[i].s = socket_fd(d.connect(i % 2));
    }

    const auto start = steady::now();
    const auto deadline = start + std::chrono::seconds(120);
    std::size_t open = clients;
    std::size_t rounds = 0;
    static char buf[65536];
    std::vector<pollfd> pfds;
    std::vector<std::size_t> who;
    std::vector<std::size_t> order;
    for (; open > 0 && rounds < 2'000'000 && steady::now() < deadline; ++rounds) {
        pfds.clear();
        who.clear();
        for (std::size_t i = 0; i < clients; ++i) {
            client& c = cs[i];
            if (c.done) {
                continue;
            }
            std::size_t may_send = c.data.size();
            if (c.lockstep) {
                const auto next = std::upper_bound(c.ends.begin(), c.ends.end(), c.got);
                may_send = next == c.ends.end() ? c.data.size() : *next;
            }
            const short events = static_cast<short>(POLLIN | (c.sent < may_send ? POLLOUT : 0));
            pfds.push_back({c.s.get(), events, 0});
            who.push_back(i);
        }
        if (poll(pfds.data(), pfds.size(), ms_left(deadline)) <= 0) {
            break;
        }
        // Serve the ready ones in a random order, with random chunk sizes.
        order.resize(pfds.size());
        for (std::size_t k = 0; k < order.size(); ++k) {
            order[k] = k;
        }
        std::shuffle(order.begin(), order.end(), rng);
        for (std::size_t k : order) {
            const pollfd& p = pfds[k];
            client& c = cs[who[k]];
            if ((p.revents & POLLOUT) && c.sent < c.data.size()) {
                std::size_t may_send = c.data.size();
                if (c.lockstep) {
                    may_send = *std::upper_bound(c.ends.begin(), c.ends.end(), c.got);
                }
                const std::size_t chunk = uniform(1, std::min<std::size_t>(may_send - c.sent, 256 * 1024));
                const ssize_t n = ::send(c.s.get(), c.data.data() + c.sent, chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n > 0) {
                    c.sent += static_cast<std::size_t>(n);
                } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                    c.failure = std::string("send: ") + std::strerror(errno);
                }
                if (c.sent == c.data.size() && !c.shut) {
                    // Half-close at once: the rest must still come back.
                    ::shutdown(c.s.get(), SHUT_WR);
                    c.shut = true;
                }
            }
            if (c.failure.empty() && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
                const std::size_t want = uniform(0, 9) == 0 ? uniform(1, 100) : uniform(1, sizeof(buf));
                const ssize_t n = ::recv(c.s.get(), buf, want, MSG_DONTWAIT);
                if (n > 0) {
                    const auto len = static_cast<std::size_t>(n);
                    if (c.got + len > c.sent) {
                        c.failure = "received " + std::to_string(c.got + len) + " bytes, only " +
                                    std::to_string(c.sent) + " sent";
                    } else if (std::memcmp(buf, c.data.data() + c.got, len) != 0) {
                        std::size_t at = 0;
                        while (buf[at] == c.data[c.got + at]) {
                            ++at;
                        }
                        c.failure = "echo differs at byte " + std::to_string(c.got + at) + " of " +
                                    std::to_string(c.data.size());
                    }
                    c.got += len;
                } else if (n == 0) {
                    if (c.got != c.data.size()) {
                        c.failure = "EOF after " + std::to_string(c.got) + " of " + std::to_string(c.data.size()) +
                                    " bytes (" + std::to_string(c.sent) + " sent)";
                    }
                    c.done = true;
                    --open;
                } else if (errno != EAGAIN && errno != EINTR) {
                    c.failure =
                        std::string("recv: ") + std::strerror(errno) + " after " + std::to_string(c.got) + " bytes";
                }
            }
            if (!c.failure.empty() && !c.done) {
                c.done = true;
                --open;
            }
        }
    }
    const double took = seconds_since(start);
    INFO(total_bytes << " bytes over " << clients << " connections in " << took << " s, " << rounds << " poll rounds");

    std::size_t failed = 0;
    std::ostringstream failures;
    for (std::size_t i = 0; i < clients; ++i) {
        const client& c = cs[i];
        if (!c.done || !c.failure.empty()) {
            ++failed;
            if (failed <= 10) {
                failures << "connection " << i << " (" << c.ends.size() << " messages, " << c.data.size() << " bytes, "
                         << (c.lockstep ? "lockstep" : "pipelined") << "): "
                         << (c.done ? c.failure
                                    : "unfinished: " + std::to_string(c.sent) + " sent, " + std::to_string(c.got) +
                                          " back")
                         << "\n";
            }
        }
    }
    INFO(failures.str());
    CHECK(failed == 0);
    for (auto& c : cs) {
        c.s.reset();
    }

    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    const auto shards = drained_stats(r->err);
    INFO(r->err);
    REQUIRE(shards.size() == cpus_allowed());
    std::ostringstream spread;
    for (const auto& s : shards) {
        spread << (s.shard == 0 ? "" : " / ") << s.accepted;
    }
    WARN("connections per shard: " << spread.str() << " (" << took << " s for " << (total_bytes >> 20)
                                   << " MiB each way)");
    const shard_stats t = sum(shards);
    CHECK(t.accepted == clients);
    CHECK(t.closed == clients);
    CHECK(t.errors == 0);
    CHECK(t.refused == 0);
    CHECK(t.bytes_in == total_bytes);
    CHECK(t.bytes_out == total_bytes);
    if (shards.size() >= 2) {
        // SO_REUSEPORT hashes each connection's 4-tuple to a shard: 200 on
        // one shard of two has a probability of 2^-199.
        for (const auto& s : shards) {
            INFO("shard " << s.shard);
            CHECK(s.accepted >= 1);
        }
    }
}

TEST_CASE("echo abuse: clients that reset mid-stream disturb no one", "[echo][abuse]") {
    echo_daemon d(echo_config(listener_toml()));
    // Opened before the resets, used again after them.
    socket_fd a(d.connect());
    const std::string hello = pattern(1000, 1);
    REQUIRE(echo_check(a.get(), hello) == "");

    struct variant {
        const char* what;
        std::size_t send;  // how much of `big` to send (as far as it goes)
        std::size_t read;  // how much of the echo to read first
    };
    const variant variants[] = {
        {"reset right after connect", 0, 0},
        {"reset after 1 byte, its echo unread", 1, 0},
        {"reset after 100 KiB, nothing read", 100 * 1024, 0},
        {"reset after 1 MiB, 64 KiB of the echo read", 1 << 20, 64 * 1024},
        {"reset after 4 MiB, all of its echo read", 4 << 20, 4 << 20},
        {"reset after 5 bytes of the echo, the window closed", 16 << 20, 5},
    };
    const std::string big = pattern(16 << 20, 2);
    std::uint64_t seed = 10;
    for (const auto& v : variants) {
        INFO(v.what);
        socket_fd b(d.connect());
        const auto deadline = steady::now() + default_timeout;
        std::size_t sent = 0;
        std::string back;
        static char buf[65536];
        std::string error;
        // Send up to v.send, reading up to v.read of the echo; once the reads
        // are done, stop when the window stays closed for 300 ms.
        while ((sent < v.send || back.size() < std::min(v.read, sent)) && error.empty()) {
            const bool reading = back.size() < std::min(v.read, sent);
            pollfd p{b.get(), static_cast<short>((reading ? POLLIN : 0) | (sent < v.send ? POLLOUT : 0)), 0};
            const int rc = poll(&p, 1, reading ? ms_left(deadline) : std::min(300, ms_left(deadline)));
            if (rc <= 0) {
                break;
            }
            if ((p.revents & POLLOUT) && sent < v.send) {
                const ssize_t n = ::send(b.get(), big.data() + sent, std::min<std::size_t>(v.send - sent, 1 << 20),
                                         MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n > 0) {
                    sent += static_cast<std::size_t>(n);
                } else if (errno != EAGAIN) {
                    error = std::string("send: ") + std::strerror(errno);
                }
            }
            if (reading && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
                const ssize_t n =
                    ::recv(b.get(), buf, std::min(sizeof(buf), std::min(v.read, sent) - back.size()), MSG_DONTWAIT);
                if (n > 0) {
                    back.append(buf, static_cast<std::size_t>(n));
                } else if (n == 0 || errno != EAGAIN) {
                    error = n == 0 ? "EOF" : std::string("recv: ") + std::strerror(errno);
                }
            }
        }
        INFO(sent << " bytes sent, " << back.size() << " read back");
        CHECK(error.empty());
        REQUIRE(back.size() == std::min(v.read, sent));
        CHECK(mismatch(back, big.substr(0, back.size())) == "");
        reset_connection(b);

        // The connection from before still echoes, and new ones are served.
        const std::string msg = pattern(256 * 1024, seed++);
        CHECK(echo_check(a.get(), msg) == "");
        socket_fd c(d.connect());
        CHECK(echo_check(c.get(), msg) == "");
        CHECK(close_cleanly(c.get()));
    }
    for (int i = 0; i < 5; ++i) {
        socket_fd c(d.connect());
        const std::string msg = pattern(64 * 1024, seed++);
        CHECK(echo_check(c.get(), msg) == "");
        CHECK(close_cleanly(c.get()));
    }
    CHECK(echo_check(a.get(), hello) == "");
    CHECK(close_cleanly(a.get()));

    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    const shard_stats t = sum(drained_stats(r->err));
    // A reset after its echo was read hits a receive the daemon has armed.
    CHECK(t.errors >= 1);
    CHECK(t.closed == t.accepted);
    // a, one per variant after it, five more; the first reset may beat
    // accept(2) to the connection.
    CHECK(t.accepted >= 1 + 2 * std::size(variants) - 1 + 5);
    CHECK(alarming_lines(r->err) == "");
}

TEST_CASE("echo abuse: a client that sends 64 MiB and never reads costs the daemon no memory", "[echo][abuse]") {
    echo_daemon d(echo_config(listener_toml()));
    {
        // Warm-up: every code path of an echo has run once.
        socket_fd w(d.connect());
        const std::string msg = pattern(1 << 20, 1);
        REQUIRE(echo_check(w.get(), msg) == "");
        REQUIRE(close_cleanly(w.get()));
    }
    const std::size_t rss_before = rss_kib(d.pid());

    constexpr std::size_t flood = 64 << 20;
    const std::string data = pattern(flood, 2);
    socket_fd hog(d.connect());
    const auto start = steady::now();
    const auto deadline = start + std::chrono::seconds(60);
    std::size_t sent = 0;
    bool stalled = false;
    std::string error;
    while (sent < flood && steady::now() < deadline) {
        const ssize_t n = ::send(hog.get(), data.data() + sent, flood - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
            continue;
        }
        if (errno != EAGAIN) {
            error = std::string("send: ") + std::strerror(errno);
            break;
        }
        // The window is closed when it stays closed for 2 s.
        pollfd p{hog.get(), POLLOUT, 0};
        const int rc = poll(&p, 1, std::min(2000, ms_left(deadline)));
        if (rc == 0) {
            stalled = true;
            break;
        }
    }
    REQUIRE(error == "");
    const std::size_t rss_stalled = rss_kib(d.pid());
    const double rss_growth_mib = (static_cast<double>(rss_stalled) - static_cast<double>(rss_before)) / 1024.0;
    WARN("never-reading client: " << (sent >> 10) << " KiB written before the window closed (" << seconds_since(start)
                                  << " s); daemon RSS " << rss_before << " KiB -> " << rss_stalled << " KiB ("
                                  << rss_growth_mib << " MiB growth)");
    REQUIRE(stalled);
    CHECK(sent < flood);
    CHECK(rss_stalled < rss_before + 8 * 1024);

    // Meanwhile another client is served.
    {
        socket_fd other(d.connect());
        const std::string msg = pattern(4 << 20, 3);
        CHECK(echo_check(other.get(), msg) == "");
        CHECK(close_cleanly(other.get()));
    }
    // Once the hog reads, every byte comes back, in order, and the rest of
    // the 64 MiB goes through: the daemon resumes after backpressure.
    {
        std::string back;
        back.reserve(flood);
        const auto until = steady::now() + std::chrono::seconds(60);
        static char buf[65536];
        while (back.size() < flood) {
            pollfd q{hog.get(), static_cast<short>(POLLIN | (sent < flood ? POLLOUT : 0)), 0};
            if (poll(&q, 1, ms_left(until)) <= 0) {
                break;
            }
            if ((q.revents & POLLOUT) && sent < flood) {
                const ssize_t n = ::send(hog.get(), data.data() + sent, flood - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
                sent += n > 0 ? static_cast<std::size_t>(n) : 0;
            }
            if (q.revents & (POLLIN | POLLHUP | POLLERR)) {
                const ssize_t n = ::recv(hog.get(), buf, sizeof(buf), MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN)) {
                    break;
                }
                back.append(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
            }
        }
        REQUIRE(back.size() == flood);
        CHECK(mismatch(back, data) == "");
        CHECK(close_cleanly(hog.get()));
    }

    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(t.pauses >= 1);
    CHECK(t.errors == 0);
    CHECK(alarming_lines(r->err) == "");
}

TEST_CASE("echo abuse: max_connections = 2 closes the third connection at once", "[echo][abuse]") {
    echo_daemon d(echo_config(listener_toml("max_connections = 2")));
    socket_fd c1(d.connect());
    socket_fd c2(d.connect());
    // An echo proves each is accepted and counted.
    const std::string m1 = pattern(10000, 1);
    const std::string m2 = pattern(10000, 2);
    REQUIRE(echo_check(c1.get(), m1) == "");
    REQUIRE(echo_check(c2.get(), m2) == "");

    {
        // connect(2) succeeds (the kernel completes the handshake); then the
        // daemon accepts and closes it.
        socket_fd c3(d.connect());
        const peer_end e = wait_for_close(c3.get(), default_timeout);
        INFO("third connection: " << to_string(e));
        CHECK((e == peer_end::eof || e == peer_end::reset));
    }
    // The two still work.
    REQUIRE(echo_check(c1.get(), m2) == "");
    REQUIRE(echo_check(c2.get(), m1) == "");

    // Close one; the daemon's EOF comes just before it gives the slot back,
    // so a new connection may still be refused a few times.
    REQUIRE(close_cleanly(c1.get()));
    c1.reset();
    socket_fd c4;
    const std::string m4 = pattern(10000, 4);
    int attempts = 0;
    const auto deadline = steady::now() + default_timeout;
    while (attempts < 1000 && steady::now() < deadline) {
        ++attempts;
        socket_fd c(d.connect());
        if (echo_exchange(c.get(), m4, std::chrono::milliseconds(ms_left(deadline))) == m4) {
            c4 = std::move(c);
            break;
        }
    }
    INFO(attempts << " attempt(s) for a new connection after one closed");
    REQUIRE(c4.get() >= 0);
    CHECK(echo_check(c2.get(), m4) == "");

    // Two open again: the next is refused again.
    {
        socket_fd c5(d.connect());
        const peer_end e = wait_for_close(c5.get(), default_timeout);
        INFO("connection over the limit: " << to_string(e));
        CHECK((e == peer_end::eof || e == peer_end::reset));
    }
    CHECK(echo_check(c4.get(), m1) == "");
    CHECK(close_cleanly(c2.get()));
    CHECK(close_cleanly(c4.get()));

    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(t.refused >= 2);
    CHECK(t.accepted == 3);
    CHECK(t.closed == 3);
    CHECK(r->err.find("max_connections (2) reached") != std::string::npos);
}

TEST_CASE("echo abuse: idle_timeout = 1s closes idle connections and only those", "[echo][abuse]") {
    echo_daemon d(echo_config(listener_toml("idle_timeout = \"1s\"")));
    socket_fd idle(d.connect());
    socket_fd busy(d.connect());

    const std::string ping = pattern(100, 1);
    // The daemon's last activity on `idle` is no earlier than this send.
    const auto idle_last = steady::now();
    REQUIRE(echo_check(idle.get(), ping) == "");

    // `busy` echoes a message every ~100 ms for 3 s (paced by poll's timeout:
    // load shaping, not synchronisation); meanwhile wait for `idle` to close.
    const auto busy_start = steady::now();
    const auto busy_until = busy_start + std::chrono::seconds(3);
    const auto deadline = busy_start + std::chrono::seconds(20);
    std::optional<double> idle_closed_after;
    std::size_t busy_echoes = 0;
    std::string busy_failure;
    auto next_ping = steady::now();
    std::uint64_t seed = 100;
    steady::time_point busy_last;
    while (steady::now() < busy_until && busy_failure.empty()) {
        if (steady::now() >= next_ping) {
            const std::string msg = pattern(100, seed++);
            busy_last = steady::now();
            if (echo_exchange(busy.get(), msg, std::chrono::seconds(5)) != msg) {
                busy_failure = "echo " + std::to_string(busy_echoes + 1) + " failed after " +
                               std::to_string(seconds_since(busy_start)) + " s";
                break;
            }
            ++busy_echoes;
            next_ping = steady::now() + std::chrono::milliseconds(100);
        }
        pollfd p[2] = {{idle_closed_after ? -1 : idle.get(), POLLIN, 0}, {busy.get(), POLLIN, 0}};
        const int wait = std::max(0, std::min(ms_left(next_ping), ms_left(busy_until)));
        (void)poll(p, 2, wait);
        if (p[0].revents) {
            const peer_end e = wait_for_close(idle.get(), std::chrono::seconds(5));
            INFO("idle connection: " << to_string(e));
            CHECK(e == peer_end::eof);
            idle_closed_after = seconds_since(idle_last);
        }
        if (p[1].revents) {
            const peer_end e = wait_for_close(busy.get(), std::chrono::milliseconds(0));
            busy_failure = std::string("busy connection: ") + to_string(e) + " after " +
                           std::to_string(seconds_since(busy_start)) + " s";
        }
    }
    INFO(busy_echoes << " echoes on the busy connection");
    CHECK(busy_failure.empty());
    CHECK(busy_echoes >= 10);
    if (!idle_closed_after) {
        std::string rest;
        CHECK(recv_until_eof(idle.get(), rest, std::chrono::milliseconds(ms_left(deadline))));
        CHECK(rest.empty());
        idle_closed_after = seconds_since(idle_last);
    }
    // Now `busy` is idle too.
    std::string rest;
    CHECK(recv_until_eof(busy.get(), rest, std::chrono::milliseconds(ms_left(deadline))));
    CHECK(rest.empty());
    const double busy_closed_after = seconds_since(busy_last);
    WARN("idle_timeout 1s: idle connection closed " << *idle_closed_after << " s after its last byte, busy one "
                                                    << busy_closed_after << " s after its last");
    CHECK(*idle_closed_after >= 0.9);
    CHECK(*idle_closed_after <= 15.0);
    CHECK(busy_closed_after >= 0.9);
    CHECK(busy_closed_after <= 15.0);

    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(t.idle_closed == 2);
    CHECK(t.errors == 0);
}

TEST_CASE("echo abuse: out of file descriptors, the daemon waits cheaply and serves everyone once they free up",
          "[echo][abuse]") {
    constexpr int fd_limit = 64;
    echo_daemon d(echo_config(listener_toml()), "ulimit -n " + std::to_string(fd_limit));
    const int pid = d.pid();
    INFO(proc_limit(pid, "Max open files"));
    const std::size_t free_fds = fd_limit - fds_below(pid, fd_limit, true);
    INFO(free_fds << " descriptors free for connections");
    REQUIRE(free_fds >= 1);
    REQUIRE(free_fds < 150);

    constexpr std::size_t clients = 200;
    std::vector<socket_fd> cs;
    std::vector<std::string> msgs;
    for (std::size_t i = 0; i < clients; ++i) {
        // connect(2) succeeds while the daemon cannot accept: the kernel
        // completes the handshake into the listen backlog.
        cs.emplace_back(d.connect());
        msgs.push_back(pattern(1000, 1000 + i));
        REQUIRE(send_all(cs.back().get(), msgs.back()));
    }

    std::vector<std::string> back(clients);
    std::vector<bool> served(clients, false);
    std::size_t served_count = 0;
    std::string failure;
    // Reads whatever arrived on the unserved clients within `wait_ms`;
    // returns how many became served.
    std::vector<pollfd> pfds;
    std::vector<std::size_t> who;
    auto collect = [&](int wait_ms) {
        pfds.clear();
        who.clear();
        for (std::size_t i = 0; i < clients; ++i) {
            if (!served[i] && cs[i].get() >= 0) {
                pfds.push_back({cs[i].get(), POLLIN, 0});
                who.push_back(i);
            }
        }
        (void)d.process().stderr_text();  // keep the log pipe from filling
        std::size_t newly = 0;
        if (pfds.empty() || poll(pfds.data(), pfds.size(), wait_ms) <= 0) {
            return newly;
        }
        for (std::size_t k = 0; k < pfds.size(); ++k) {
            if (!pfds[k].revents) {
                continue;
            }
            const std::size_t i = who[k];
            char buf[2048];
            const ssize_t n = ::recv(cs[i].get(), buf, sizeof(buf), MSG_DONTWAIT);
            if (n <= 0) {
                if (n < 0 && errno == EAGAIN) {
                    continue;
                }
                failure = "client " + std::to_string(i) + ": " + (n == 0 ? "EOF" : std::strerror(errno)) + " after " +
                          std::to_string(back[i].size()) + " bytes";
                cs[i].reset();
                continue;
            }
            back[i].append(buf, static_cast<std::size_t>(n));
            if (back[i].size() >= msgs[i].size()) {
                if (back[i] != msgs[i]) {
                    failure = "client " + std::to_string(i) + ": echo differs";
                }
                served[i] = true;
                ++served_count;
                ++newly;
            }
        }
        return newly;
    };

    // Saturated: every free descriptor holds a served connection.
    const auto deadline = steady::now() + default_timeout;
    for (int rounds = 0; rounds < 10000 && served_count < free_fds && failure.empty() && steady::now() < deadline;
         ++rounds) {
        collect(ms_left(deadline));
    }
    INFO(served_count << " served at first; daemon descriptors below " << fd_limit << ": " << fds_below(pid, fd_limit));
    REQUIRE(failure.empty());
    REQUIRE(served_count == free_fds);

    // While saturated: no one else is served, and the daemon burns no CPU.
    const long hz = sysconf(_SC_CLK_TCK);
    const std::uint64_t ticks_before = cpu_ticks(pid);
    const auto window_start = steady::now();
    const auto window_end = window_start + std::chrono::seconds(2);
    std::size_t served_while_saturated = 0;
    for (int rounds = 0; rounds < 1000 && steady::now() < window_end; ++rounds) {
        served_while_saturated += collect(ms_left(window_end));
    }
    const std::uint64_t ticks = cpu_ticks(pid) - ticks_before;
    const double window = seconds_since(window_start);
    const double cpu_percent = 100.0 * static_cast<double>(ticks) / static_cast<double>(hz) / window;
    WARN("out of descriptors (" << served_count << " of " << clients << " served): daemon used " << ticks
                                << " ticks of CPU in " << window << " s = " << cpu_percent << "% of one CPU");
    CHECK(served_while_saturated == 0);
    CHECK(failure.empty());
    CHECK(window >= 1.9);
    CHECK(static_cast<double>(ticks) < 0.05 * window * static_cast<double>(hz));

    // Free them: every waiting client is served in turn (closing each once
    // its echo is back, which frees its descriptor for the next).
    for (std::size_t i = 0; i < clients; ++i) {
        if (served[i]) {
            cs[i].reset();
        }
    }
    const auto until = steady::now() + std::chrono::seconds(60);
    for (int rounds = 0; rounds < 100000 && served_count < clients && failure.empty() && steady::now() < until;
         ++rounds) {
        if (collect(ms_left(until)) > 0) {
            for (std::size_t i = 0; i < clients; ++i) {
                if (served[i]) {
                    cs[i].reset();
                }
            }
        }
    }
    INFO(served_count << " of " << clients << " served in the end");
    CHECK(failure.empty());
    CHECK(served_count == clients);
    cs.clear();

    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(t.backoffs >= 1);
    CHECK(t.accepted == clients);
    CHECK(t.errors == 0);
    CHECK(r->err.find("accept: Too many open files") != std::string::npos);
}

TEST_CASE("echo abuse: a client that never reads makes the daemon hold at most max_pending + one buffer",
          "[echo][abuse]") {
    // echo_connection.hh: "bytes received but not yet sent back (held buffers
    // plus completions not yet looked at) never exceed max_pending by more
    // than one buffer". After the never-reading clients reset, the bytes the
    // daemon took in and never sent back (bytes in - bytes out, by its own
    // counters) are what it held for them.
    constexpr std::size_t max_pending = 256 * 1024;
    constexpr std::size_t recv_buffer_size = 16 * 1024;
    echo_daemon d(echo_config(listener_toml("max_pending = \"256KiB\""), "recv_buffer_size = \"16KiB\""));
    constexpr std::size_t hog_count = 8;
    std::vector<socket_fd> hogs;
    for (std::size_t i = 0; i < hog_count; ++i) {
        hogs.emplace_back(d.connect());
        if (i % 2 == 1) {
            // A small receive window, as a slow reader on a thin link has.
            const int small = 4096;
            ::setsockopt(hogs.back().get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        }
    }
    const std::string data = pattern(64 << 20, 1);
    std::vector<std::size_t> sent;
    const auto start = steady::now();
    const bool stalled =
        flood_until_stalled(hogs, data, sent, std::chrono::seconds(2), start + std::chrono::seconds(60));
    std::ostringstream sent_kib;
    for (std::size_t n : sent) {
        sent_kib << " " << (n >> 10);
    }
    INFO("sent before the windows closed (KiB):" << sent_kib.str());
    REQUIRE(stalled);
    // A well-behaved client meanwhile: its bytes all go back out.
    {
        socket_fd other(d.connect());
        const std::string msg = pattern(1 << 20, 2);
        CHECK(echo_check(other.get(), msg) == "");
        CHECK(close_cleanly(other.get()));
    }
    for (auto& h : hogs) {
        reset_connection(h);
    }

    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    const shard_stats t = sum(drained_stats(r->err));
    REQUIRE(t.bytes_in >= t.bytes_out);
    const std::uint64_t held = t.bytes_in - t.bytes_out;
    const std::uint64_t bound = hog_count * (max_pending + recv_buffer_size);
    WARN(hog_count << " never-reading clients: the daemon held " << (held >> 10) << " KiB for them (bound "
                   << (bound >> 10) << " KiB = " << hog_count << " x (max_pending 256 KiB + one 16 KiB buffer))");
    CHECK(held <= bound);
}

TEST_CASE("echo abuse: clients that never read do not starve the shard's other clients", "[echo][abuse]") {
    // One shard with a small receive buffer ring (32 x 16 KiB = 512 KiB),
    // max_pending at its smallest (one buffer), and twelve clients that never
    // read: by the max_pending bound they hold at most 12 x (16 + 16) KiB =
    // 24 buffers, which leaves 8 for everyone else (a receive starved of
    // buffers waits for 32 / 8 = 4).
    const std::string cpu = std::to_string(first_allowed_cpu());
    echo_daemon d(echo_config(listener_toml("max_pending = \"16KiB\""),
                              "cpus = \"" + cpu + "\"\nrecv_buffers = 32\nrecv_buffer_size = \"16KiB\""));
    constexpr std::size_t hog_count = 12;
    constexpr int others = 4;
    const std::string data = pattern(64 << 20, 1);
    // How much each hog holds varies from run to run: up to three rounds,
    // each with fresh hogs, until one starves the others.
    int rounds = 0;
    int served = 0;
    std::string failures;
    for (; rounds < 3 && served == rounds * others; ++rounds) {
        std::vector<socket_fd> hogs;
        for (std::size_t i = 0; i < hog_count; ++i) {
            hogs.emplace_back(d.connect());
            // A small receive window, as a slow reader on a thin link has.
            const int small = 4096;
            ::setsockopt(hogs.back().get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        }
        std::vector<std::size_t> sent;
        const auto start = steady::now();
        REQUIRE(flood_until_stalled(hogs, data, sent, std::chrono::seconds(2), start + std::chrono::seconds(60)));

        // Others are served meanwhile (a healthy daemon takes milliseconds).
        const auto deadline = steady::now() + std::chrono::seconds(10);
        for (int i = 0; i < others; ++i) {
            socket_fd c(d.connect());
            const std::string msg = pattern(64 * 1024, 10 + static_cast<std::uint64_t>(rounds * others + i));
            const std::string what = echo_check(c.get(), msg, std::chrono::milliseconds(ms_left(deadline)));
            served += what.empty() ? 1 : 0;
            failures += what.empty() ? ""
                                     : "round " + std::to_string(rounds + 1) + ", client " + std::to_string(i) + ": " +
                                           what + "\n";
        }
        // Once they go, everyone is served again.
        for (auto& h : hogs) {
            reset_connection(h);
        }
        socket_fd c(d.connect());
        const std::string msg = pattern(64 * 1024, 100 + static_cast<std::uint64_t>(rounds));
        CHECK(echo_check(c.get(), msg) == "");
        CHECK(close_cleanly(c.get()));
    }
    WARN(hog_count << " never-reading clients on a 512 KiB buffer ring: " << served << " of " << rounds * others
                   << " other clients served in " << rounds << " round(s)");
    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    INFO(failures);
    CHECK(served == rounds * others);
}
