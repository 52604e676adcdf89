// The echo service through the real shardd binary, on ephemeral loopback
// ports: bytes come back exactly, in order, over IPv4 and IPv6, for every
// size; half-close; resets; many connections at once, spread over shards.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"
#include "tests/support/proxy_peers.hh"

#include <catch2/catch.hpp>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <random>
#include <regex>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

using namespace shardd::test;

namespace {

const std::string raw_listener = R"(
[[listener]]
name = "echo"
listen = ["127.0.0.1:0", "[::1]:0"]
mode = "echo"
)";

// `conns` connections at once, each writing `messages` messages of `size`
// bytes back to back from a thread of its own, while this thread reads every
// connection's echo in turn and checks it byte for byte. Message m of
// connection i carries pattern seed `seed + i * messages + m`.
void echo_at_once(echo_daemon& d, int conns, int messages, std::size_t size, std::uint64_t seed) {
    std::vector<int> fds;
    for (int i = 0; i < conns; ++i) {
        fds.push_back(d.connect());
    }
    // Catch2's macros are not thread-safe: the writers only report.
    std::vector<std::thread> writers;
    std::vector<char> sent(conns, 0);
    for (int i = 0; i < conns; ++i) {
        writers.emplace_back([&, i] {
            bool ok = true;
            for (int m = 0; m < messages && ok; ++m) {
                ok = send_all(fds[i], pattern(size, seed + i * messages + m));
            }
            sent[i] = ok ? 1 : 0;
        });
    }
    for (int m = 0; m < messages; ++m) {
        for (int i = 0; i < conns; ++i) {
            const std::string back = recv_exact(fds[i], size);
            INFO("connection " << i << ", message " << m);
            CHECK(back == pattern(size, seed + i * messages + m));
        }
    }
    for (auto& w : writers) {
        w.join();
    }
    for (int i = 0; i < conns; ++i) {
        CHECK(sent[i] == 1);
        close(fds[i]);
    }
}

// 16 connections x 8 messages of 64 KiB at once (echo_at_once), then a
// clean stop: every byte in went back out. Returns the drained counters;
// `log` gets the daemon's stderr.
shard_stats bulk_echo_then_stop(echo_daemon& d, std::uint64_t seed, std::string& log) {
    echo_at_once(d, 16, 8, 64 * 1024, seed);
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    INFO(r->err);
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(t.bytes_in == 16 * 8 * 64 * 1024);
    CHECK(t.bytes_out == t.bytes_in);
    CHECK(t.errors == 0);
    log = r->err;
    return t;
}

}  // namespace

TEST_CASE("echo: 1 B, 64 B, 16 KiB and 8 MiB come back byte-exact over IPv4 and IPv6", "[echo]") {
    echo_daemon d(echo_config(raw_listener));
    REQUIRE(d.addresses().size() == 2);
    CHECK(d.addresses()[1].rfind("[::1]:", 0) == 0);
    for (std::size_t a = 0; a < d.addresses().size(); ++a) {
        socket_fd c(d.connect(a));
        std::uint64_t seed = 1;
        for (std::size_t size : {std::size_t{1}, std::size_t{64}, std::size_t{16 * 1024}, std::size_t{8 << 20}}) {
            INFO(d.addresses()[a] << ", " << size << " bytes");
            const std::string msg = pattern(size, seed++);
            // 8 MiB is more than both socket buffers: write and read at once.
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
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}

TEST_CASE("echo: 64 KiB messages on 16 connections at once come back byte-exact", "[echo][bulk]") {
    // Each way the bytes can go: spliced (the default: a receive that fills a
    // whole pool buffer moves the stream to splice(2), server/splice_pipes.hh)
    // or copied through the pool (splice = false), and both ways the buffer
    // ring can run: the default pool (512 buffers, of which the kernel's ring
    // holds a target that grows under a burst; hot buffers,
    // reactor/buffer_ring.hh) and a pool the ring holds entirely.
    struct variant {
        std::string runtime;
        bool splice;
    };
    const variant v = GENERATE(variant{"", true}, variant{"", false}, variant{"recv_buffers = 64", true},
                               variant{"recv_buffers = 64", false});
    INFO("runtime: " << (v.runtime.empty() ? "defaults" : v.runtime) << ", splice " << v.splice);
    echo_daemon d(echo_config(raw_listener + (v.splice ? "" : "splice = false\n"), v.runtime));
    std::string log;
    const shard_stats t = bulk_echo_then_stop(d, 1000, log);
    INFO(log);
    if (v.splice) {
        // 64 KiB writes reach the daemon as segments of up to 64 KiB (the
        // loopback MTU): receives fill whole 32 KiB buffers, so streams
        // move to splice.
        CHECK(t.spliced > 0);
    } else {
        CHECK(t.spliced == 0);
    }
}

TEST_CASE("echo: where splice(2) is refused (seccomp, EPERM), bulk streams are copied; logged once", "[echo][bulk]") {
    // As a container's seccomp profile could: shardd learns it from the
    // first refusal, says so once, and every stream goes on through the pool.
    echo_daemon d(echo_config(raw_listener), "", seccomp_exec_wrapper("splice"));
    std::string log;
    const shard_stats t = bulk_echo_then_stop(d, 2000, log);
    INFO(log);
    CHECK(t.spliced == 0);
    static const std::regex refused("splice\\(2\\) between sockets does not work here \\(Operation not permitted\\)");
    const auto lines = std::distance(std::sregex_iterator(log.begin(), log.end(), refused), std::sregex_iterator());
    CHECK(lines == 1);
}

TEST_CASE("echo: after a spliced burst, small messages go back to the pool, on the now non-blocking socket",
          "[echo][bulk]") {
    // 300 KiB (more than max_pending) makes the stream splice; four small
    // messages in a row take it back to the multishot receive, which must
    // still wait for data on a socket that splice left O_NONBLOCK.
    echo_daemon d(echo_config("[admin]\nlisten = \"127.0.0.1:0\"\n" + raw_listener));
    std::smatch m;
    const std::string& err = d.process().stderr_text();
    REQUIRE(std::regex_search(err, m, std::regex(R"(admin endpoint: listening on (\S+))")));
    const std::string admin = m[1].str();
    socket_fd c(d.connect());
    CHECK(echo_check(c.get(), pattern(300 * 1024, 11)) == "");
    for (std::uint64_t i = 0; i < 4; ++i) {
        CHECK(echo_check(c.get(), pattern(64, 20 + i)) == "");
    }
    const std::uint64_t spliced = stats_sum(admin, "bytes_spliced");
    CHECK(spliced > 0);
    // Back on the copy path: round trips still work, and splice no more.
    for (std::uint64_t i = 0; i < 8; ++i) {
        CHECK(echo_check(c.get(), pattern(64, 30 + i)) == "");
    }
    CHECK(stats_sum(admin, "bytes_spliced") == spliced);
}

TEST_CASE("echo: half-close gets everything back, then EOF", "[echo]") {
    // Spliced (300 KiB in one write fills whole pool buffers) or copied.
    const bool splice = GENERATE(true, false);
    INFO("splice " << splice);
    echo_daemon d(echo_config(raw_listener + (splice ? "" : "splice = false\n")));
    {
        socket_fd c(d.connect());
        const std::string msg = pattern(300 * 1024, 7);
        REQUIRE(send_all(c.get(), msg));
        REQUIRE(shutdown(c.get(), SHUT_WR) == 0);
        std::string back;
        CHECK(recv_until_eof(c.get(), back));
        CHECK(back.size() == msg.size());
        CHECK(back == msg);
    }
    auto r = d.stop();
    REQUIRE(r.has_value());
    INFO(r->err);
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(t.bytes_out == 300 * 1024);
    CHECK(t.errors == 0);
    CHECK((t.spliced > 0) == splice);
}

TEST_CASE("echo: a buffer ring that runs dry (ENOBUFS) is survived and counted", "[echo]") {
    // 8 buffers of 1 KiB per shard for 32 connections sending 64 KiB each
    // at once, each allowed to hold 64 KiB: any one of them can empty the
    // ring, so receives must find it empty, wait, and carry on.
    echo_daemon d(echo_config(R"(
[[listener]]
name = "echo"
listen = ["127.0.0.1:0"]
mode = "echo"
max_pending = "64KiB"
)",
                              "recv_buffers = 8\nrecv_buffer_size = \"1KiB\""));
    // Every client writes while the daemon's buffers, not the clients, are
    // the bottleneck.
    echo_at_once(d, 32, 1, 64 * 1024, 100);
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    // Summed over the shards' exit lines: "ENOBUFS N,".
    std::uint64_t enobufs = 0;
    static const std::regex counted(R"(ENOBUFS (\d+),)");
    for (std::sregex_iterator it(r->err.begin(), r->err.end(), counted), end; it != end; ++it) {
        enobufs += std::stoull((*it)[1].str());
    }
    INFO(r->err);
    CHECK(enobufs > 0);
}

TEST_CASE("echo: with spin_before_park, request/response round trips come back byte-exact", "[echo]") {
    // The busy-poll path: with a 100 ms spin every request lands while the
    // shard polls instead of sleeping, and the loop must reap and answer it
    // without a blocking wait in between. Random sizes up to two receive
    // buffers, one request in flight, on two connections taking turns.
    echo_daemon d(echo_config(raw_listener, "spin_before_park = \"100ms\""));
    {
        socket_fd a(d.connect());
        socket_fd b(d.connect());
        const int one = 1;
        REQUIRE(setsockopt(a.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0);
        REQUIRE(setsockopt(b.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0);
        std::mt19937_64 rng(42);
        std::uniform_int_distribution<std::size_t> size(1, 32 * 1024);
        for (std::uint64_t i = 0; i < 500; ++i) {
            const int fd = (i % 2 == 0) ? a.get() : b.get();
            const std::string msg = pattern(size(rng), 1000 + i);
            REQUIRE(send_all(fd, msg));
            const std::string back = recv_exact(fd, msg.size());
            INFO("round trip " << i << ", " << msg.size() << " bytes");
            REQUIRE(back == msg);
        }
    }
    // Closed first: the drain then has nothing to wait for.
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}
