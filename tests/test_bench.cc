// shardd-bench through the real binary, against an echo server that this test
// runs on loopback and that can misbehave on purpose: flip a byte, drop a
// byte, or die mid-run. A client that measures must notice every one.
#include "tests/support/loopback.hh"
#include "tests/support/process.hh"

#include <arpa/inet.h>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

using namespace shardd::test;

namespace {

enum class fault { none, flip_byte, drop_byte, die, mute };

// Echoes every connection from its own thread. After `fault_after` bytes of a
// connection, applies `f` once.
class echo_server {
public:
    echo_server(fault f, std::size_t fault_after) : _fault(f), _fault_after(fault_after), _listen(128) {
        _acceptor = std::thread([this] { accept_loop(); });
    }
    ~echo_server() {
        _stop = true;
        ::shutdown(_listen.fd(), SHUT_RDWR);
        _acceptor.join();
        for (auto& t : _workers) {
            t.join();
        }
    }
    std::string address() const { return "127.0.0.1:" + std::to_string(_listen.port()); }

private:
    void accept_loop() {
        while (!_stop) {
            pollfd p{_listen.fd(), POLLIN, 0};
            if (poll(&p, 1, 100) <= 0) {
                continue;
            }
            int fd = accept4(_listen.fd(), nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) {
                continue;
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            _workers.emplace_back([this, fd] { serve(fd); });
        }
    }
    void serve(int fd) {
        std::vector<char> buf(65536);
        std::size_t total = 0;
        bool faulted = false;
        while (!_stop) {
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, 100) <= 0) {
                continue;
            }
            ssize_t n = recv(fd, buf.data(), buf.size(), 0);
            if (n <= 0) {
                break;
            }
            std::size_t len = static_cast<std::size_t>(n);
            if (!faulted && total + len > _fault_after) {
                faulted = true;
                const std::size_t at = _fault_after > total ? _fault_after - total : 0;
                if (_fault == fault::flip_byte) {
                    buf[at] = static_cast<char>(buf[at] ^ 0x40);
                } else if (_fault == fault::drop_byte) {
                    std::memmove(buf.data() + at, buf.data() + at + 1, len - at - 1);
                    --len;
                } else if (_fault == fault::die) {
                    break;  // close mid-stream, replies outstanding
                }
            }
            if (faulted && _fault == fault::mute) {
                continue;  // keeps reading, never answers again
            }
            total += static_cast<std::size_t>(n);
            for (std::size_t sent = 0; sent < len;) {
                ssize_t w = send(fd, buf.data() + sent, len - sent, MSG_NOSIGNAL);
                if (w <= 0) {
                    close(fd);
                    return;
                }
                sent += static_cast<std::size_t>(w);
            }
        }
        close(fd);
    }

    fault _fault;
    std::size_t _fault_after;
    loopback_socket _listen;
    std::atomic<bool> _stop{false};
    std::thread _acceptor;
    std::vector<std::thread> _workers;
};

// A short run: 1s measured, no warm-up, on one client CPU.
run_result bench(const std::vector<std::string>& extra, const std::string& target) {
    std::vector<std::string> args = {"--duration", "1s", "--warmup", "0s", "--cpus", "0", "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(target);
    return run_program(shardd_bench_binary(), args);
}

// The value of "key": in the one-line JSON report (numbers only).
double json_number(const std::string& js, const std::string& key) {
    const auto at = js.find("\"" + key + "\":");
    REQUIRE(at != std::string::npos);
    return std::stod(js.substr(at + key.size() + 3));
}

}  // namespace

TEST_CASE("a correct echo server: every byte verified, exit 0, JSON report", "[bench]") {
    echo_server server(fault::none, 0);
    auto r = bench({"-c", "4", "-d", "2", "--size", "1-3000"}, server.address());
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::StartsWith("{\"target\":\"" + server.address() + "\""));
    CHECK_THAT(r.out, Catch::EndsWith("\"ok\":true}\n"));
    CHECK(json_number(r.out, "messages") > 0);
    CHECK(json_number(r.out, "verification_errors") == 0);
    CHECK(json_number(r.out, "connected") == 4);
    CHECK(json_number(r.out, "p50") > 0);
    CHECK(json_number(r.out, "p99") >= json_number(r.out, "p50"));
    CHECK(json_number(r.out, "max") >= json_number(r.out, "p99.99"));
}

TEST_CASE("a flipped byte is a verification error and exit 1", "[bench]") {
    // One message holds the fault: no wall-clock race on a loaded machine.
    echo_server server(fault::flip_byte, 10000);
    auto r = bench({"-c", "1", "--size", "32KiB"}, server.address());
    CHECK(r.exit_code == 1);
    CHECK(json_number(r.out, "verification_errors") == 1);
    CHECK_THAT(r.err, Catch::Contains("verification failed at byte 10000"));
}

TEST_CASE("a dropped byte is a verification error and exit 1", "[bench]") {
    echo_server server(fault::drop_byte, 5000);
    auto r = bench({"-c", "1", "--size", "8KiB"}, server.address());
    CHECK(r.exit_code == 1);
    CHECK(json_number(r.out, "verification_errors") == 1);
}

TEST_CASE("a server that dies mid-run gives a clear error, not a hang", "[bench]") {
    echo_server server(fault::die, 20000);
    auto r = bench({"-c", "1", "--size", "32KiB"}, server.address());
    INFO(r.err);
    CHECK(json_number(r.out, "early_closes") == 1);
    CHECK_THAT(r.err, Catch::Contains("the server closed the connection"));
}

TEST_CASE("a server that stops answering: the run ends on time, exit 1, says so", "[bench]") {
    echo_server server(fault::mute, 20000);
    auto r = bench({"-c", "2", "--size", "32KiB"}, server.address());
    INFO(r.err);
    CHECK(r.exit_code == 1);
    CHECK(json_number(r.out, "unanswered") >= 1);
    CHECK_THAT(r.err, Catch::Contains("got no reply"));
}

TEST_CASE("a refused connection is reported and exits 1", "[bench]") {
    // Bound, not listening: connections to it are refused.
    loopback_socket refusing(-1);
    auto r = bench({"-c", "2"}, "127.0.0.1:" + std::to_string(refusing.port()));
    CHECK(r.exit_code == 1);
    CHECK(json_number(r.out, "connect_errors") == 2);
    CHECK_THAT(r.err, Catch::Contains("Connection refused"));
}

TEST_CASE("--rate holds the requested rate within 5%", "[bench]") {
    echo_server server(fault::none, 0);
    // 2000 msg/s over 2 connections for 2s: 4000 messages.
    std::vector<std::string> args = {"--duration", "2s", "--warmup", "0s",     "--cpus", "0",
                                     "--json",     "-c", "2",        "--rate", "2000"};
    args.push_back(server.address());
    auto r = run_program(shardd_bench_binary(), args);
    INFO(r.out << r.err);
    // What the rate governs is what was sent: answered in the window, or
    // still unanswered at the end when a loaded machine starves the test's
    // echo threads (which the exit code then reports, as it should).
    const double unanswered = json_number(r.out, "unanswered");
    CHECK(json_number(r.out, "messages") + unanswered == Approx(4000).epsilon(0.05));
    CHECK(r.exit_code == (unanswered == 0 ? 0 : 1));
}

TEST_CASE("bad command lines exit 64 and say why", "[bench]") {
    auto r = run_program(shardd_bench_binary(), {"--size", "0", "127.0.0.1:1"});
    CHECK(r.exit_code == 64);
    CHECK_THAT(r.err, Catch::Contains("--size"));
    r = run_program(shardd_bench_binary(), {"localhost:80"});
    CHECK(r.exit_code == 64);
    CHECK_THAT(r.err, Catch::Contains("host names are not resolved"));
    r = run_program(shardd_bench_binary(), {"--protocol", "sockperf", "--size", "8", "127.0.0.1:1"});
    CHECK(r.exit_code == 64);
    r = run_program(shardd_bench_binary(), {"--help"});
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::Contains("Examples:"));
}
