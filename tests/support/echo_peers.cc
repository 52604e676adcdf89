#include "tests/support/echo_peers.hh"

#include "tests/support/echo_daemon.hh"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <poll.h>
#include <random>
#include <regex>
#include <sched.h>
#include <set>
#include <sstream>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd::test {

namespace {

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

}  // namespace

int ms_left(steady::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

double seconds_since(steady::time_point t) { return std::chrono::duration<double>(steady::now() - t).count(); }

void socket_fd::reset() {
    if (_fd >= 0) {
        ::close(std::exchange(_fd, -1));
    }
}

std::string listener_toml(const std::string& extra, const std::string& listen) {
    return "[[listener]]\nname = \"echo\"\nlisten = " + listen + "\nmode = \"echo\"\n" + extra + "\n";
}

// Sends `msg` while reading its echo (never blocks on either), until all of
// it came back, the peer closed or failed, or the deadline. Returns what came
// back.
std::string echo_exchange(int fd, const std::string& msg, std::chrono::milliseconds timeout) {
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
std::string echo_check(int fd, const std::string& msg, std::chrono::milliseconds timeout) {
    return mismatch(echo_exchange(fd, msg, timeout), msg);
}

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
bool close_cleanly(int fd, std::chrono::milliseconds timeout) {
    std::string rest;
    return ::shutdown(fd, SHUT_WR) == 0 && recv_until_eof(fd, rest, timeout) && rest.empty();
}

// Closes with an RST instead of a FIN.
void reset_connection(socket_fd& s) {
    const linger l{1, 0};
    ::setsockopt(s.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    s.reset();
}

std::vector<shard_stats> drained_stats(const std::string& log) {
    static const std::regex line(
        R"(\[shard (\d+)\] drained: connections accepted (\d+), closed (\d+), refused (\d+), idle-closed (\d+), )"
        R"(errors (\d+) \(protocol (\d+)\); bytes in (\d+), out (\d+), spilled (\d+), spliced (\d+); ENOBUFS (\d+), )"
        R"(backpressure pauses (\d+), accept back-offs (\d+), log lines suppressed (\d+))");
    std::vector<shard_stats> out;
    for (std::sregex_iterator it(log.begin(), log.end(), line), end; it != end; ++it) {
        const auto& m = *it;
        auto n = [&m](int i) { return static_cast<std::uint64_t>(std::stoull(m[i].str())); };
        shard_stats s;
        s.shard = static_cast<unsigned>(n(1));
        s.accepted = n(2);
        s.closed = n(3);
        s.refused = n(4);
        s.idle_closed = n(5);
        s.errors = n(6);
        s.protocol_errors = n(7);
        s.bytes_in = n(8);
        s.bytes_out = n(9);
        s.spilled = n(10);
        s.spliced = n(11);
        s.enobufs = n(12);
        s.pauses = n(13);
        s.backoffs = n(14);
        s.log_suppressed = n(15);
        out.push_back(s);
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
        t.protocol_errors += s.protocol_errors;
        t.spilled += s.spilled;
        t.spliced += s.spliced;
        t.log_suppressed += s.log_suppressed;
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

// Descriptors of `pid` numbered below `limit` (RLIMIT_NOFILE caps the number
// a new descriptor gets, not how many there are). With `skip_unix`, leaves
// out Unix-domain sockets: sd_notify() opens one for each message and closes
// it just after sending, so right after READY=1 it may still be there.
std::size_t fds_below(int pid, int limit, bool skip_unix) {
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

std::string sockperf_message(std::uint64_t seq, std::uint16_t flags, std::uint32_t length, std::uint64_t seed) {
    std::string m(14, '\0');
    for (int i = 0; i < 8; ++i) {
        m[i] = static_cast<char>(seq >> (56 - 8 * i));
    }
    m[8] = static_cast<char>(flags >> 8);
    m[9] = static_cast<char>(flags & 0xff);
    for (int i = 0; i < 4; ++i) {
        m[10 + i] = static_cast<char>(length >> (24 - 8 * i));
    }
    if (length > 14) {
        m += pattern(length - 14, seed);
    }
    return m;
}

std::string sockperf_reply(std::string m) {
    m[9] = static_cast<char>(static_cast<unsigned char>(m[9]) & ~flag_client);
    return m;
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
// window closes, at most `data.size()` bytes. Returns once no socket has been
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

}  // namespace shardd::test
