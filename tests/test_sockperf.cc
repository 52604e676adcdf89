// The sockperf protocol through the real shardd binary: the real sockperf
// client (ping-pong, under-load, throughput) against a protocol = "sockperf"
// listener; and the framing by hand over raw sockets: messages split byte by
// byte, several in one segment, warm-up and no-reply messages that must not
// come back, 64 KiB-range messages, and bad lengths that close only their
// own connection.

#include "reactor/cpu_set.hh"
#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"

#include <arpa/inet.h>
#include <array>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <random>
#include <regex>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd;
using namespace shardd::test;

namespace {

using clock_type = std::chrono::steady_clock;

const std::string sockperf_binary = "/usr/bin/sockperf";

std::string sockperf_listener(const std::string& extra = "") {
    return "[[listener]]\nname = \"sp\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\nprotocol = \"sockperf\"\n" +
           extra;
}

void set_nodelay(int fd) {
    const int one = 1;
    REQUIRE(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0);
}

// "127.0.0.1:PORT" of our end of `fd`: how the daemon names the peer.
std::string local_address(int fd) {
    sockaddr_in sin{};
    socklen_t len = sizeof(sin);
    REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0);
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sin.sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(sin.sin_port));
}

// Sends `out` (in pieces of the sizes in `chunks`, one send() each, cycling;
// as much as fits when `chunks` is empty) while reading, from one thread, so
// that neither side's buffers can fill up and stall the other. Returns what
// came back once `expect` bytes have, or less at EOF, error or the deadline.
std::string exchange(int fd, const std::string& out, std::size_t expect, const std::vector<std::size_t>& chunks = {},
                     std::chrono::milliseconds timeout = default_timeout) {
    const auto deadline = clock_type::now() + timeout;
    std::string in;
    std::size_t sent = 0;
    std::size_t next_chunk = 0;
    char buf[65536];
    while (in.size() < expect || sent < out.size()) {
        pollfd p{fd, static_cast<short>(POLLIN | (sent < out.size() ? POLLOUT : 0)), 0};
        const int rc = poll(&p, 1, ms_left(deadline));
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc <= 0) {
            break;
        }
        if ((p.revents & POLLOUT) && sent < out.size()) {
            std::size_t n = out.size() - sent;
            if (!chunks.empty()) {
                n = std::min(n, chunks[next_chunk++ % chunks.size()]);
            }
            const ssize_t w = ::send(fd, out.data() + sent, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                sent += static_cast<std::size_t>(w);
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                break;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            const ssize_t r = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (r > 0) {
                in.append(buf, static_cast<std::size_t>(r));
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                break;
            }
        }
    }
    return in;
}

// True when nothing is readable on `fd` within `wait`. Only a guard against
// extra bytes after everything expected has been read: it never delays a
// passing test by more than `wait`.
bool nothing_more(int fd, std::chrono::milliseconds wait = std::chrono::milliseconds(300)) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, static_cast<int>(wait.count())) == 0;
}

// sockperf's output, with its colour escapes removed.
std::string run_sockperf(const std::vector<std::string>& args) {
    if (access(sockperf_binary.c_str(), X_OK) != 0) {
        FAIL(sockperf_binary << " is missing: sockperf is a declared test dependency (the Debian package "
                                "\"sockperf\"); run .ci/install-deps");
    }
    const run_result r = run_program(sockperf_binary, args, std::chrono::minutes(2));
    const std::string out = std::regex_replace(r.out + r.err, std::regex("\x1b\\[[0-9;]*m"), "");
    INFO("sockperf " << [&] {
        std::string s;
        for (const auto& a : args) {
            s += a + " ";
        }
        return s;
    }() << "\n" << out);
    CHECK(r.exit_code == 0);
    // sockperf exits 0 even when it cannot connect: its output tells.
    CHECK_THAT(out, !Catch::Contains("ERROR"));
    CHECK_THAT(out, Catch::Contains("sockperf: Test ended"));
    return out;
}

std::uint64_t number_after(const std::string& text, const std::string& re) {
    std::smatch m;
    if (!std::regex_search(text, m, std::regex(re))) {
        return 0;
    }
    return std::stoull(m[1].str());
}

std::vector<std::string> client_args(const std::string& mode, const std::string& address) {
    const auto colon = address.rfind(':');
    return {mode, "--tcp", "-i", address.substr(0, colon), "-p", address.substr(colon + 1), "-t", "2"};
}

// Latency modes: sockperf counts what it sent and what came back.
void check_latency_output(const std::string& out, bool every_message_replied) {
    INFO(out);
    CHECK_THAT(out, Catch::Contains("# dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0"));
    CHECK_THAT(out, Catch::Contains("Summary: Latency is"));
    const std::string valid = R"(\[Valid Duration\] RunTime=[0-9.]+ sec; SentMessages=(\d+); ReceivedMessages=(\d+))";
    std::smatch m;
    REQUIRE(std::regex_search(out, m, std::regex(valid)));
    const std::uint64_t sent_valid = std::stoull(m[1].str());
    const std::uint64_t received = std::stoull(m[2].str());
    CHECK(sent_valid > 0);
    CHECK(received > 0);
    CHECK(received <= sent_valid);
    if (every_message_replied) {
        // Each reply comes back before the next message goes (sockperf's
        // count can miss one in flight at the window's edge).
        CHECK(received + 2 >= sent_valid);
    } else {
        // under-load asks for a reply to one message in 100 (--reply-every):
        // a server that answered everything would come close to sent.
        CHECK(received * 10 < sent_valid);
    }
}

// Bytes the daemon received over its life ("served N connections: B bytes
// received, ..."), from its log after exit.
std::uint64_t bytes_served(const std::string& log) {
    return number_after(log, R"(served \d+ connections?: (\d+) bytes received)");
}

}  // namespace

TEST_CASE("sockperf ping-pong: every message comes back, none dropped", "[sockperf]") {
    echo_daemon d(echo_config(sockperf_listener()));
    SECTION("14-byte messages") {
        auto args = client_args("ping-pong", d.addresses()[0]);
        args.insert(args.end(), {"-m", "14"});
        check_latency_output(run_sockperf(args), true);
    }
    SECTION("65000-byte messages") {
        auto args = client_args("ping-pong", d.addresses()[0]);
        args.insert(args.end(), {"-m", "65000"});
        check_latency_output(run_sockperf(args), true);
    }
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}

TEST_CASE("sockperf under-load: replies only to the messages that ask for one", "[sockperf]") {
    echo_daemon d(echo_config(sockperf_listener()));
    auto args = client_args("under-load", d.addresses()[0]);
    args.insert(args.end(), {"--mps", "10000"});
    check_latency_output(run_sockperf(args), false);
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}

TEST_CASE("sockperf throughput: the daemon takes in every message", "[sockperf]") {
    // Throughput mode asks for no reply: what the daemon counted in says
    // the messages arrived. The drain lets it read to the client's EOF.
    echo_daemon d(echo_config(sockperf_listener(), "shutdown_timeout = \"60s\""));
    std::uint64_t at_least = 0;
    for (const std::string size : {"14", "1400", "65000"}) {
        INFO("-m " << size);
        auto args = client_args("throughput", d.addresses()[0]);
        args.insert(args.end(), {"-m", size});
        const std::string out = run_sockperf(args);
        INFO(out);
        const std::uint64_t messages = number_after(out, R"(Total of (\d+) messages sent in)");
        CHECK(messages > 0);
        CHECK(number_after(out, R"(Summary: Message Rate is (\d+) \[msg/sec\])") > 0);
        at_least += messages * std::stoull(size);
    }
    auto r = d.stop(std::chrono::minutes(2));
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    INFO(r->err);
    CHECK(bytes_served(r->err) >= at_least);
}

TEST_CASE("sockperf framing: a message sent one byte at a time comes back whole, 0x1 cleared", "[sockperf]") {
    echo_daemon d(echo_config(sockperf_listener()));
    socket_fd c(d.connect());
    set_nodelay(c.get());
    const std::string m = sockperf_message(0x0102030405060708ull, flag_client | flag_reply, 14 + 50, 1);
    for (char byte : m) {
        REQUIRE(send_all(c.get(), std::string(1, byte)));
    }
    const std::string back = recv_exact(c.get(), m.size());
    REQUIRE(back.size() == m.size());
    CHECK(back == sockperf_reply(m));
    CHECK(back[9] == static_cast<char>(flag_reply));  // only 0x1 changed
    CHECK(back.substr(0, 9) == m.substr(0, 9));
    CHECK(back.substr(10) == m.substr(10));
    CHECK(nothing_more(c.get()));
}

TEST_CASE("sockperf framing: warm-up and no-reply messages do not come back", "[sockperf]") {
    echo_daemon d(echo_config(sockperf_listener()));
    socket_fd c(d.connect());
    const std::string asks = sockperf_message(1, flag_client | flag_reply, 14 + 10, 11);
    const std::string warmup = sockperf_message(2, flag_client | flag_reply | flag_warmup, 14 + 20, 12);
    const std::string silent = sockperf_message(3, flag_client, 14 + 30, 13);
    REQUIRE(send_all(c.get(), asks + warmup + silent));
    const std::string first = recv_exact(c.get(), asks.size());
    CHECK(first == sockperf_reply(asks));
    // Had the warm-up or no-reply message come back, its bytes would come
    // next instead of this one's.
    const std::string later = sockperf_message(4, flag_reply, 14 + 40, 14);
    REQUIRE(send_all(c.get(), later));
    CHECK(recv_exact(c.get(), later.size()) == later);  // 0x1 was clear: unchanged
    // A header-only message (length 14) is a message too.
    const std::string bare = sockperf_message(5, flag_client | flag_reply, 14, 0);
    REQUIRE(send_all(c.get(), bare));
    CHECK(recv_exact(c.get(), bare.size()) == sockperf_reply(bare));
    CHECK(nothing_more(c.get()));
}

TEST_CASE("sockperf framing: 65000-byte messages come back exactly", "[sockperf]") {
    echo_daemon d(echo_config(sockperf_listener()));
    socket_fd c(d.connect());
    // One, then three back to back with a warm-up one in the middle.
    const std::string big = sockperf_message(7, flag_client | flag_reply, 65000, 21);
    CHECK(exchange(c.get(), big, big.size()) == sockperf_reply(big));
    std::string out;
    std::string expect;
    for (std::uint64_t i = 0; i < 4; ++i) {
        const bool warm = i == 2;
        const std::string m = sockperf_message(100 + i, flag_client | flag_reply | (warm ? flag_warmup : 0),
                                               65000 - 7 * std::uint32_t(i), 30 + i);
        out += m;
        if (!warm) {
            expect += sockperf_reply(m);
        }
    }
    const std::string back = exchange(c.get(), out, expect.size());
    REQUIRE(back.size() == expect.size());
    CHECK(back == expect);
    CHECK(nothing_more(c.get()));
}

TEST_CASE("sockperf framing: random sizes, flags and segmentation", "[sockperf]") {
    echo_daemon d(echo_config(sockperf_listener()));
    socket_fd c(d.connect());
    set_nodelay(c.get());
    std::mt19937_64 rng(20240611);
    std::string out;
    std::string expect;
    for (std::uint64_t i = 0; i < 300; ++i) {
        const std::uint32_t length = 14 + static_cast<std::uint32_t>(rng() % 3000);
        const std::uint16_t flags = std::array<std::uint16_t, 4>{
            flag_client | flag_reply, flag_client, flag_client | flag_reply | flag_warmup, flag_reply}[rng() % 4];
        const std::string m = sockperf_message(i, flags, length, i + 1000);
        out += m;
        if ((flags & flag_reply) && !(flags & flag_warmup)) {
            expect += sockperf_reply(m);
        }
    }
    // Send boundaries anywhere: inside headers, across messages.
    std::vector<std::size_t> chunks;
    for (int i = 0; i < 97; ++i) {
        chunks.push_back(1 + rng() % (i % 3 == 0 ? 20 : 2000));
    }
    const std::string back = exchange(c.get(), out, expect.size(), chunks);
    REQUIRE(back.size() == expect.size());
    CHECK(back == expect);
    CHECK(nothing_more(c.get()));
}

TEST_CASE("sockperf framing: a bad length closes that connection only, with the reason logged", "[sockperf]") {
    // One shard, so that the bad connections and the good one share it.
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    echo_daemon d(echo_config(sockperf_listener("max_message = \"1KiB\"\n"),
                              "cpus = \"" + std::to_string(allowed->cpus()[0]) + "\""));
    socket_fd good(d.connect());
    set_nodelay(good.get());
    const std::string m1 = sockperf_message(1, flag_client | flag_reply, 100, 41);
    REQUIRE(exchange(good.get(), m1, m1.size()) == sockperf_reply(m1));
    // A message of exactly max_message is fine.
    const std::string largest = sockperf_message(2, flag_client | flag_reply, 1024, 42);
    REQUIRE(exchange(good.get(), largest, largest.size()) == sockperf_reply(largest));
    // The good connection is in the middle of a message while the others fail.
    const std::string m3 = sockperf_message(3, flag_client | flag_reply, 500, 43);
    REQUIRE(send_all(good.get(), m3.substr(0, 20)));

    SECTION("length 10, below the header") {
        socket_fd bad(d.connect());
        const std::string who = local_address(bad.get());
        REQUIRE(send_all(bad.get(), sockperf_message(9, flag_client | flag_reply, 10, 0)));
        const peer_end how = wait_for_close(bad.get(), default_timeout);
        CHECK((how == peer_end::eof || how == peer_end::reset));
        // Logged (and flushed) before the daemon closed the socket.
        CHECK_THAT(d.process().stderr_text(),
                   Catch::Contains("closing connection from " + who +
                                   ": sockperf message length 10 outside 14..1024 (max_message)"));
    }
    SECTION("length 2000, above max_message") {
        socket_fd bad(d.connect());
        const std::string who = local_address(bad.get());
        // The daemon may close before it all went out: the send may fail.
        (void)send_all(bad.get(), sockperf_message(9, flag_client | flag_reply, 2000, 44));
        const peer_end how = wait_for_close(bad.get(), default_timeout);
        CHECK((how == peer_end::eof || how == peer_end::reset));
        CHECK_THAT(d.process().stderr_text(),
                   Catch::Contains("closing connection from " + who +
                                   ": sockperf message length 2000 outside 14..1024 (max_message)"));
    }
    SECTION("both, one after the other") {
        for (std::uint32_t length : {10u, 2000u, 0u, 1025u}) {
            INFO("length " << length);
            socket_fd bad(d.connect());
            const std::string who = local_address(bad.get());
            (void)send_all(bad.get(), sockperf_message(9, flag_client | flag_reply, length, 45).substr(0, 14));
            const peer_end how = wait_for_close(bad.get(), default_timeout);
            CHECK((how == peer_end::eof || how == peer_end::reset));
            CHECK_THAT(d.process().stderr_text(),
                       Catch::Contains("closing connection from " + who + ": sockperf message length " +
                                       std::to_string(length) + " outside 14..1024 (max_message)"));
        }
    }

    // The good connection finishes its message and goes on.
    REQUIRE(send_all(good.get(), m3.substr(20)));
    CHECK(recv_exact(good.get(), m3.size()) == sockperf_reply(m3));
    const std::string m4 = sockperf_message(4, flag_client | flag_reply, 300, 46);
    CHECK(exchange(good.get(), m4, m4.size()) == sockperf_reply(m4));
    // And ends as a good connection does: everything back, then EOF (so
    // that the drain at stop has nothing to wait for).
    REQUIRE(::shutdown(good.get(), SHUT_WR) == 0);
    std::string rest;
    CHECK(recv_until_eof(good.get(), rest));
    CHECK(rest.empty());
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}
