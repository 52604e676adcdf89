// The graceful drain through the real shardd binary: on SIGTERM or SIGINT
// every shard stops accepting at once, open connections finish (a transfer
// in the middle of 8 MiB gets every byte back), connections still open
// after shutdown_timeout are closed, a second signal stops at once, and the
// daemon exits 0 each time.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"

#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd::test;

namespace {

using clock_type = std::chrono::steady_clock;

const std::string listener = R"(
[[listener]]
name = "echo"
listen = ["127.0.0.1:0"]
mode = "echo"
)";

// shardd on one echo listener, like echo_daemon, but keeping its
// $NOTIFY_SOCKET: STOPPING=1 says the daemon took the stop signal (it is
// sent before the shards are told to drain), so a second signal sent after
// it cannot merge with the first.
class drain_daemon {
public:
    explicit drain_daemon(const std::string& runtime_extra)
        : _config("shardd.toml", echo_config(listener, runtime_extra)) {
        _process =
            std::make_unique<daemon_process>(std::vector<std::string>{"-c", _config.path()},
                                             std::map<std::string, std::string>{{"NOTIFY_SOCKET", _notify.path()}});
        if (!_notify.wait_for("READY=1")) {
            throw std::runtime_error("shardd did not become ready; stderr:\n" + _process->stderr_text());
        }
        const std::string& err = _process->stderr_text();
        std::smatch m;
        if (!std::regex_search(err, m, std::regex(R"(listening on (\S+) \()"))) {
            throw std::runtime_error("shardd logged no listening address; stderr:\n" + err);
        }
        _address = m[1].str();
        if (std::regex_search(err, m, std::regex(R"(ready: (\d+) shards? running)"))) {
            _shards = std::stoul(m[1].str());
        }
    }

    daemon_process& process() { return *_process; }
    notify_socket& notify() { return _notify; }
    const std::string& address() const { return _address; }
    std::size_t shards() const { return _shards; }

private:
    temp_file _config;
    notify_socket _notify;
    std::unique_ptr<daemon_process> _process;
    std::string _address;
    std::size_t _shards = 0;
};

sockaddr_in ipv4(const std::string& address) {
    const auto colon = address.rfind(':');
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1))));
    REQUIRE(inet_pton(AF_INET, address.substr(0, colon).c_str(), &sin.sin_addr) == 1);
    return sin;
}

// Waits for the peer to close `fd` (EOF or reset), discarding any bytes.
bool closed_by_peer(int fd, clock_type::time_point deadline) {
    char buf[4096];
    while (true) {
        pollfd p{fd, POLLIN, 0};
        const int rc = poll(&p, 1, ms_left(deadline));
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc <= 0) {
            return false;
        }
        const ssize_t r = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno == ECONNRESET)) {
            return true;
        }
        if (r < 0 && errno != EAGAIN && errno != EINTR) {
            return false;
        }
    }
}

// Connects to `address` until the connection is refused, which is how a
// listener that stopped accepting shows. Stopping is asynchronous (each
// shard closes its own listening socket), so a connection may still get in
// first: it is then half-closed and waited for until the daemon ends it
// (served: EOF after the echo; still in a closed socket's backlog: reset),
// so that every attempt waits on something real. A connect() reset by a
// listening socket closing under it is tried again. Returns the outcome.
std::string wait_until_refused(const std::string& address, std::chrono::milliseconds timeout = default_timeout) {
    const auto deadline = clock_type::now() + timeout;
    const sockaddr_in sin = ipv4(address);
    for (int attempt = 0; attempt < 1000; ++attempt) {
        if (clock_type::now() >= deadline) {
            return "still accepting at the deadline, after " + std::to_string(attempt) + " attempts";
        }
        socket_fd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(c.get() >= 0);
        if (::connect(c.get(), reinterpret_cast<const sockaddr*>(&sin), sizeof(sin)) != 0) {
            if (errno == ECONNREFUSED) {
                return "refused";
            }
            // Reset: the handshake raced a listening socket that closed.
            if (errno == ECONNRESET || errno == EINTR) {
                continue;
            }
            return std::string("connect: ") + std::strerror(errno);
        }
        ::shutdown(c.get(), SHUT_WR);
        if (!closed_by_peer(c.get(), deadline)) {
            return "a connection made during the drain (attempt " + std::to_string(attempt + 1) +
                   ") was never closed by the daemon";
        }
    }
    return "still accepting after 1000 attempts";
}

// One echo round trip on a blocking socket.
bool echo_round_trip(int fd, std::uint64_t seed) {
    const std::string msg = pattern(1000, seed);
    return send_all(fd, msg) && recv_exact(fd, msg.size()) == msg;
}

// A client that sends `out` while reading back, from one thread, never more
// than `window` bytes ahead of what came back (so that a transfer is still
// in the middle when the test wants it to be).
struct transfer {
    transfer(int fd_, std::string out_, std::size_t window_) : fd(fd_), out(std::move(out_)), window(window_) {}

    int fd;
    std::string out;
    std::size_t window;
    std::size_t sent = 0;
    std::string in;
    std::string failure;

    // Runs until `done()` or the deadline; false on an error, EOF or the
    // deadline.
    template <typename Done>
    bool pump(Done done, std::chrono::milliseconds timeout = default_timeout) {
        const auto deadline = clock_type::now() + timeout;
        char buf[65536];
        while (!done()) {
            const bool can_send = sent < out.size() && sent < in.size() + window;
            pollfd p{fd, static_cast<short>(POLLIN | (can_send ? POLLOUT : 0)), 0};
            const int rc = poll(&p, 1, ms_left(deadline));
            if (rc < 0 && errno == EINTR) {
                continue;
            }
            if (rc <= 0) {
                failure = "deadline: sent " + std::to_string(sent) + ", received " + std::to_string(in.size());
                return false;
            }
            if (can_send && (p.revents & POLLOUT)) {
                const std::size_t n = std::min({out.size() - sent, in.size() + window - sent, std::size_t{64 * 1024}});
                const ssize_t w = ::send(fd, out.data() + sent, n, MSG_NOSIGNAL);
                if (w > 0) {
                    sent += static_cast<std::size_t>(w);
                } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    failure = std::string("send: ") + std::strerror(errno);
                    return false;
                }
            }
            if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
                const ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
                if (r > 0) {
                    in.append(buf, static_cast<std::size_t>(r));
                } else if (r == 0) {
                    failure = "EOF after " + std::to_string(in.size()) + " bytes back";
                    return false;
                } else if (errno != EAGAIN && errno != EINTR) {
                    failure = std::string("recv: ") + std::strerror(errno);
                    return false;
                }
            }
        }
        return true;
    }
};

int count_of(const std::string& text, const std::regex& re) {
    return static_cast<int>(std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
}

}  // namespace

TEST_CASE("drain: SIGTERM mid-transfer refuses new connections, finishes the transfer, exits 0", "[drain]") {
    // Far above what the transfer needs even on a loaded machine: the drain
    // must end because the connection ended, not because of the timeout.
    drain_daemon d("shutdown_timeout = \"120s\"");
    REQUIRE(d.shards() > 0);
    socket_fd c(connect_to(d.address()));
    REQUIRE(fcntl(c.get(), F_SETFL, fcntl(c.get(), F_GETFL) | O_NONBLOCK) == 0);
    constexpr std::size_t total = 8 << 20;
    transfer t{c.get(), pattern(total, 77), 2 << 20};

    {
        const bool ok = t.pump([&] { return t.in.size() >= (1 << 20); });
        INFO(t.failure);
        REQUIRE(ok);
    }
    REQUIRE(t.sent < total);  // the window keeps it in the middle
    d.process().signal(SIGTERM);
    REQUIRE(d.notify().wait_for("STOPPING=1").has_value());

    // (i) New connections are refused.
    CHECK(wait_until_refused(d.address()) == "refused");

    // (ii) The transfer goes on to the end, byte-exact, then EOF.
    {
        const bool ok = t.pump([&] { return t.in.size() >= total; });
        INFO(t.failure);
        REQUIRE(ok);
    }
    CHECK(t.sent == total);
    REQUIRE(t.in.size() == total);
    CHECK(t.in == t.out);
    REQUIRE(::shutdown(c.get(), SHUT_WR) == 0);
    std::string extra;
    CHECK(recv_until_eof(c.get(), extra));
    CHECK(extra.empty());

    // (iii) The daemon exits 0 on its own, every shard drained.
    auto r = d.process().wait(std::chrono::minutes(1));
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    CHECK_THAT(r->err, Catch::Contains("[main] SIGTERM received: draining (shutdown_timeout 2m)"));
    CHECK(count_of(r->err, std::regex(R"(\[shard \d+\] draining: \d+ connections? open)")) >= 1);
    CHECK(count_of(r->err, std::regex(R"(\[shard \d+\] drained: connections accepted \d+)")) ==
          static_cast<int>(d.shards()));
    CHECK_THAT(r->err, !Catch::Contains("shutdown_timeout: closing"));
    CHECK_THAT(r->err, !Catch::Contains("received again"));
}

TEST_CASE("drain: a connection still open at shutdown_timeout is closed, then exit 0", "[drain]") {
    // Waiting in its multishot receive, or (after a 256 KiB burst) in a
    // spliced relay's poll: the drain's abort ends either wait.
    const bool spliced = GENERATE(false, true);
    INFO("spliced " << spliced);
    drain_daemon d("shutdown_timeout = \"1s\"");
    socket_fd c(connect_to(d.address()));
    if (spliced) {
        // The first burst's first receive fills a whole buffer (it arrives
        // as 64 KiB segments), so once its echo is out the connection
        // splices; the second burst goes through the pipe.
        for (std::uint64_t seed : {5, 6}) {
            const std::string burst = pattern(256 * 1024, seed);
            REQUIRE(send_all(c.get(), burst));
            REQUIRE(recv_exact(c.get(), burst.size()) == burst);
        }
    } else {
        REQUIRE(echo_round_trip(c.get(), 1));  // served, not just in the backlog
    }
    const auto before = clock_type::now();
    d.process().signal(SIGTERM);
    REQUIRE(d.notify().wait_for("STOPPING=1").has_value());
    std::string extra;
    CHECK(recv_until_eof(c.get(), extra));  // the daemon closed it
    const auto elapsed = clock_type::now() - before;
    CHECK(extra.empty());
    CHECK(elapsed >= std::chrono::seconds(1));  // not before shutdown_timeout
    auto r = d.process().wait();
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    CHECK_THAT(r->err, Catch::Contains("draining: 1 connection open, closing them in at most 1s"));
    CHECK_THAT(r->err, Catch::Contains("shutdown_timeout: closing 1 connection"));
    CHECK(count_of(r->err, std::regex(R"(\[shard \d+\] drained: )")) == static_cast<int>(d.shards()));
    const shard_stats t = sum(drained_stats(r->err));
    CHECK((t.spliced > 0) == spliced);
}

TEST_CASE("drain: a second SIGTERM stops at once", "[drain]") {
    drain_daemon d("shutdown_timeout = \"60s\"");
    socket_fd c(connect_to(d.address()));
    REQUIRE(echo_round_trip(c.get(), 2));
    const auto before = clock_type::now();
    d.process().signal(SIGTERM);
    REQUIRE(d.notify().wait_for("STOPPING=1").has_value());
    d.process().signal(SIGTERM);
    auto r = d.process().wait(std::chrono::seconds(20));
    REQUIRE(r.has_value());
    const auto elapsed = clock_type::now() - before;
    INFO(r->err);
    CHECK(r->exit_code == 0);
    CHECK(elapsed < std::chrono::seconds(20));
    CHECK_THAT(r->err, Catch::Contains("[main] SIGTERM received: draining (shutdown_timeout 1m)"));
    CHECK_THAT(r->err, Catch::Contains("[main] SIGTERM received again: stopping now"));
    CHECK_THAT(r->err, !Catch::Contains("shutdown_timeout: closing"));
    // The process is gone: so is the connection.
    CHECK(closed_by_peer(c.get(), clock_type::now() + default_timeout));
}

TEST_CASE("drain: SIGINT drains like SIGTERM", "[drain]") {
    drain_daemon d("shutdown_timeout = \"120s\"");
    socket_fd c(connect_to(d.address()));
    REQUIRE(echo_round_trip(c.get(), 3));
    d.process().signal(SIGINT);
    REQUIRE(d.notify().wait_for("STOPPING=1").has_value());
    CHECK(wait_until_refused(d.address()) == "refused");
    // The open connection is still served until it ends.
    CHECK(echo_round_trip(c.get(), 4));
    REQUIRE(::shutdown(c.get(), SHUT_WR) == 0);
    std::string extra;
    CHECK(recv_until_eof(c.get(), extra));
    CHECK(extra.empty());
    auto r = d.process().wait(std::chrono::minutes(1));
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    CHECK_THAT(r->err, Catch::Contains("[main] SIGINT received: draining (shutdown_timeout 2m)"));
    CHECK(count_of(r->err, std::regex(R"(\[shard \d+\] drained: )")) == static_cast<int>(d.shards()));
    CHECK_THAT(r->err, !Catch::Contains("shutdown_timeout: closing"));
}
