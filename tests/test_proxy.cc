// The proxy through the real shardd binary, over loopback: byte-exact relay
// both ways at once, many short connections, half-close both ways, resets
// both ways, refused and unanswered servers with retries, passive health.
// Upstreams are real processes (shardd's own echo listener) or sockets this
// test owns; every wait is on a socket, with a deadline.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"
#include "tests/support/loopback.hh"
#include "tests/support/proxy_peers.hh"

#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <cerrno>
#include <netinet/in.h>
#include <poll.h>
#include <random>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>

using namespace shardd::test;

TEST_CASE("64 MiB each way at once through one proxied connection, byte-exact", "[proxy]") {
    // Both ways a relay can go: spliced (the default, for a bulk stream) and
    // copied through the receive pool (splice = false), in the proxy and in
    // the echo behind it.
    const bool splice = GENERATE(true, false);
    INFO("splice " << splice);
    const std::string off = splice ? "" : "splice = false\n";
    auto echo = std::make_unique<echo_daemon>(
        echo_config("[[listener]]\nname = \"e\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n" + off, cpus_key()));
    auto proxy = start_proxy(quoted_list({echo->addresses()[0]}), "", off);
    const int fd = proxy->connect();
    constexpr std::size_t total = 64u << 20;
    const std::string data = pattern(total, 7);
    std::string back;
    back.reserve(total);
    // The writer uses random sizes; the reader checks everything that
    // came back (through the proxy, the echo, and the proxy again).
    std::thread writer([&] {
        std::mt19937 rng(42);
        std::size_t off = 0;
        while (off < total) {
            const std::size_t n = std::min<std::size_t>(total - off, 1 + rng() % 100'000);
            if (!send_all(fd, data.substr(off, n))) {
                break;
            }
            off += n;
        }
        shutdown(fd, SHUT_WR);
    });
    const int err = read_to_end(fd, back, std::chrono::seconds(120));
    writer.join();
    CHECK(err == 0);
    REQUIRE(back.size() == total);
    CHECK(back == data);
    close(fd);
    for (auto* d : {proxy.get(), echo.get()}) {
        auto r = d->stop();
        REQUIRE(r.has_value());
        INFO(r->err);
        const shard_stats t = sum(drained_stats(r->err));
        CHECK(t.bytes_out == t.bytes_in);
        CHECK((t.spliced > 0) == splice);
    }
}

TEST_CASE("1000 short proxied connections, each served", "[proxy]") {
    auto echo = start_echo();
    auto proxy = start_proxy(quoted_list({echo->addresses()[0]}));
    int served = 0;
    for (int i = 0; i < 1000; ++i) {
        const int fd = proxy->connect();
        const std::string msg = pattern(100 + i % 900, static_cast<std::uint64_t>(i));
        REQUIRE(send_all(fd, msg));
        shutdown(fd, SHUT_WR);
        std::string back;
        if (read_to_end(fd, back) == 0 && back == msg) {
            ++served;
        }
        close(fd);
    }
    CHECK(served == 1000);
}

TEST_CASE("the client's FIN reaches the server, which still answers", "[proxy][half-close]") {
    loopback_socket server(16);
    auto proxy = start_proxy(quoted_list({addr(server.port())}));
    const int client = proxy->connect();
    const int upstream = accept_one(server);
    REQUIRE(upstream >= 0);
    REQUIRE(send_all(client, "request"));
    REQUIRE(shutdown(client, SHUT_WR) == 0);
    // The server reads the request and then EOF: the FIN came through.
    std::string got;
    REQUIRE(read_to_end(upstream, got) == 0);
    CHECK(got == "request");
    // And the other direction still flows: a long answer, then the server's FIN.
    const std::string answer = pattern(4u << 20, 3);
    REQUIRE(send_all(upstream, answer));
    REQUIRE(shutdown(upstream, SHUT_WR) == 0);
    std::string back;
    CHECK(read_to_end(client, back) == 0);
    CHECK(back == answer);
    close(client);
    close(upstream);
}

TEST_CASE("the server's FIN reaches the client, which still sends", "[proxy][half-close]") {
    loopback_socket server(16);
    auto proxy = start_proxy(quoted_list({addr(server.port())}));
    const int client = proxy->connect();
    const int upstream = accept_one(server);
    REQUIRE(upstream >= 0);
    REQUIRE(send_all(upstream, "banner"));
    REQUIRE(shutdown(upstream, SHUT_WR) == 0);
    std::string got;
    REQUIRE(read_to_end(client, got) == 0);
    CHECK(got == "banner");
    const std::string upload = pattern(4u << 20, 5);
    REQUIRE(send_all(client, upload));
    REQUIRE(shutdown(client, SHUT_WR) == 0);
    std::string back;
    CHECK(read_to_end(upstream, back) == 0);
    CHECK(back == upload);
    close(client);
    close(upstream);
}

TEST_CASE("a pair half-closed for longer than half_close_timeout is closed, and counted", "[proxy][half-close]") {
    loopback_socket server(16);
    auto proxy = start_proxy(quoted_list({addr(server.port())}), "", "half_close_timeout = \"200ms\"\n");
    const int client = proxy->connect();
    const int upstream = accept_one(server);
    REQUIRE(upstream >= 0);
    REQUIRE(send_all(client, "bye"));
    const auto half_closed = steady::now();
    REQUIRE(shutdown(client, SHUT_WR) == 0);
    std::string got;
    REQUIRE(read_to_end(upstream, got) == 0);
    CHECK(got == "bye");
    // The server neither answers nor closes: the pair ends at the timeout,
    // and the client sees its end.
    std::string rest;
    const int err = read_to_end(client, rest);
    CHECK((err == 0 || err == ECONNRESET));
    CHECK(steady::now() - half_closed >= 200ms);
    close(client);
    close(upstream);
    const auto r = proxy->stop();
    REQUIRE(r);
    CHECK_THAT(r->err, Catch::Contains("half-close timeouts 1"));
}

TEST_CASE("a reset travels on, both ways", "[proxy][reset]") {
    loopback_socket server(16);
    auto proxy = start_proxy(quoted_list({addr(server.port())}));
    SECTION("client resets: the server sees a reset") {
        const int client = proxy->connect();
        const int upstream = accept_one(server);
        REQUIRE(upstream >= 0);
        REQUIRE(send_all(client, "x"));
        REQUIRE(recv_exact(upstream, 1) == "x");
        close_with_reset(client);
        std::string rest;
        CHECK(read_to_end(upstream, rest) == ECONNRESET);
        close(upstream);
    }
    SECTION("server resets: the client sees a reset") {
        const int client = proxy->connect();
        const int upstream = accept_one(server);
        REQUIRE(upstream >= 0);
        REQUIRE(send_all(upstream, "y"));
        REQUIRE(recv_exact(client, 1) == "y");
        close_with_reset(upstream);
        std::string rest;
        CHECK(read_to_end(client, rest) == ECONNRESET);
        close(client);
    }
}

TEST_CASE("a refused server is skipped: the client sees no error", "[proxy][retry]") {
    loopback_socket refusing(-1);  // bound, not listening: connects are refused
    auto echo = start_echo();
    // max_fails 0: the refusing server stays in the rotation, so that
    // every other connection meets it first.
    auto proxy = start_proxy(quoted_list({addr(refusing.port()), echo->addresses()[0]}), "max_fails = 0\n");
    for (int i = 0; i < 20; ++i) {
        const int fd = proxy->connect();
        REQUIRE(send_all(fd, "ping"));
        CHECK(recv_exact(fd, 4) == "ping");
        close(fd);
    }
}

TEST_CASE("every server refused: the client is closed within the retry bound", "[proxy][retry]") {
    loopback_socket a(-1), b(-1);
    auto proxy = start_proxy(quoted_list({addr(a.port()), addr(b.port())}),
                             "retries = 3\nconnect_timeout = \"500ms\"\nmax_fails = 0\n");
    const auto start = std::chrono::steady_clock::now();
    const int fd = proxy->connect();
    std::string got;
    const int err = read_to_end(fd, got);
    // (retries + 1) x connect_timeout = 2 s, plus a margin for a slow machine.
    CHECK(std::chrono::steady_clock::now() - start < 2s + 10s);
    CHECK((err == 0 || err == ECONNRESET));
    CHECK(got.empty());
    close(fd);
}

TEST_CASE("a server that never answers the handshake times out; the next one serves", "[proxy][retry]") {
    // A backlog of 0 that nobody accepts from: once its queue is full, the
    // kernel drops further SYNs, and a connect waits for connect_timeout.
    loopback_socket silent(0);
    std::vector<int> fillers;
    for (int i = 0; i < 4; ++i) {
        const int f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin.sin_port = htons(silent.port());
        (void)::connect(f, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
        fillers.push_back(f);
    }
    auto echo = start_echo();
    auto proxy = start_proxy(quoted_list({addr(silent.port()), echo->addresses()[0]}),
                             "connect_timeout = \"200ms\"\nmax_fails = 0\n");
    for (int i = 0; i < 4; ++i) {
        const int fd = proxy->connect();
        REQUIRE(send_all(fd, "hello"));
        CHECK(recv_exact(fd, 5) == "hello");
        close(fd);
    }
    for (int f : fillers) {
        close(f);
    }
}

TEST_CASE("a refusing server is marked down once, on every shard, and tried again later", "[proxy][health]") {
    loopback_socket refusing(-1);
    auto echo = start_echo();
    // Every CPU this test may use: two shards where there are two.
    const std::string runtime = cpus_allowed() >= 2 ? "cpus = \"all\"\n" : cpus_key();
    auto proxy = start_proxy(quoted_list({addr(refusing.port()), echo->addresses()[0]}),
                             "max_fails = 1\nfail_timeout = \"1s\"\n", "", runtime);
    // Connections spread over the shards; all are served, and after the
    // first failure no shard tries the refusing server for a second.
    for (int i = 0; i < 40; ++i) {
        const int fd = proxy->connect();
        REQUIRE(send_all(fd, "ok"));
        CHECK(recv_exact(fd, 2) == "ok");
        close(fd);
    }
    auto r = proxy->stop();
    REQUIRE(r);
    const std::string log = r->err;
    const std::string down = "server " + addr(refusing.port()) + " is down for 1s";
    std::size_t count = 0;
    for (std::size_t at = log.find(down); at != std::string::npos; at = log.find(down, at + 1)) {
        ++count;
    }
    // Once down, it stays down for the whole loop unless the loop outlasts
    // fail_timeout on a slow machine; then it is tried again and marked
    // down again, once per second at most.
    CHECK(count >= 1);
    CHECK(count <= 1 + 30);
}

TEST_CASE("a server marked down gets connections again after fail_timeout, once it answers", "[proxy][health]") {
    loopback_socket revived(-1);  // refuses until it listens
    auto echo = start_echo();
    auto proxy = start_proxy(quoted_list({addr(revived.port()), echo->addresses()[0]}),
                             "max_fails = 1\nfail_timeout = \"1s\"\n");
    const std::string down = "server " + addr(revived.port()) + " is down for 1s";
    // Clients until one meets the refusal (every one is served regardless).
    const auto deadline = steady::now() + generous;
    while (proxy->process().stderr_text().find(down) == std::string::npos && steady::now() < deadline) {
        const int fd = proxy->connect();
        REQUIRE(send_all(fd, "ok"));
        CHECK(recv_exact(fd, 2) == "ok");
        close(fd);
    }
    REQUIRE(proxy->process().stderr_text().find(down) != std::string::npos);
    // The server comes back. Once fail_timeout has passed, a client is sent
    // to it again: round_robin over two servers tries it every other time.
    REQUIRE(listen(revived.fd(), 16) == 0);
    int served_by_revived = -1;
    int clients = 0;
    while (served_by_revived < 0 && steady::now() < deadline) {
        const int fd = proxy->connect();
        ++clients;
        REQUIRE(send_all(fd, "hi"));
        // Either the echo answers, or the revived server has a connection.
        pollfd p[2] = {{revived.fd(), POLLIN, 0}, {fd, POLLIN, 0}};
        REQUIRE(poll(p, 2, ms_left(deadline)) >= 1);
        if (p[0].revents & POLLIN) {
            served_by_revived = accept4(revived.fd(), nullptr, nullptr, SOCK_CLOEXEC);
            REQUIRE(served_by_revived >= 0);
            // It is this client's server: the bytes arrive, the answer goes back.
            CHECK(recv_exact(served_by_revived, 2) == "hi");
            REQUIRE(send_all(served_by_revived, "hi"));
        }
        CHECK(recv_exact(fd, 2) == "hi");
        close(fd);
    }
    INFO(clients << " clients after the server listened again");
    REQUIRE(served_by_revived >= 0);
    close(served_by_revived);
    const std::string up = "server " + addr(revived.port()) + " is up again";
    auto r = proxy->stop();
    REQUIRE(r);
    CHECK(r->err.find(up) != std::string::npos);
}

namespace {

// Three servers this test owns, and how many connections each accepted.
struct counting_pool {
    std::vector<std::unique_ptr<loopback_socket>> servers;
    std::vector<int> accepted_fds;
    std::vector<int> counts;

    explicit counting_pool(std::size_t n) : counts(n, 0) {
        for (std::size_t i = 0; i < n; ++i) {
            servers.push_back(std::make_unique<loopback_socket>(4096));
        }
    }
    ~counting_pool() {
        for (int fd : accepted_fds) {
            if (fd >= 0) {
                close(fd);
            }
        }
    }
    // Waits for the one connection the proxy makes for a client, and says
    // to which server it went (-1: none within the deadline).
    int accept_next(bool keep_open) {
        std::vector<pollfd> p;
        for (auto& s : servers) {
            p.push_back({s->fd(), POLLIN, 0});
        }
        if (poll(p.data(), p.size(), static_cast<int>(std::chrono::milliseconds(generous).count())) <= 0) {
            return -1;
        }
        for (std::size_t i = 0; i < p.size(); ++i) {
            if (p[i].revents & POLLIN) {
                const int fd = accept4(servers[i]->fd(), nullptr, nullptr, SOCK_CLOEXEC);
                REQUIRE(fd >= 0);
                ++counts[i];
                if (keep_open) {
                    accepted_fds.push_back(fd);
                } else {
                    close(fd);
                }
                return static_cast<int>(i);
            }
        }
        return -1;
    }
    std::string servers_toml(const std::vector<int>& weights) const {
        std::string out = "[";
        for (std::size_t i = 0; i < servers.size(); ++i) {
            out += (i ? ", " : "") + std::string("{ address = \"") + addr(servers[i]->port()) +
                   "\", weight = " + std::to_string(weights[i]) + " }";
        }
        return out + "]";
    }
};

// A client from a chosen loopback address (127.0.0.X), for source_hash.
int connect_from(const std::string& from_ip, const std::string& to) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    REQUIRE(inet_pton(AF_INET, from_ip.c_str(), &sin.sin_addr) == 1);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0);
    const auto colon = to.rfind(':');
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(static_cast<std::uint16_t>(std::stoi(to.substr(colon + 1))));
    REQUIRE(inet_pton(AF_INET, to.substr(0, colon).c_str(), &dst.sin_addr) == 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) == 0);
    return fd;
}

}  // namespace

// Opens a client through the proxy and waits until its pair relays (a byte
// went from the client to the server): the proxy has counted the
// connection as open by then. Returns the client; the pool keeps the
// server side.
int open_relayed(echo_daemon& proxy, counting_pool& pool) {
    const int fd = proxy.connect();
    REQUIRE(pool.accept_next(true) >= 0);
    REQUIRE(send_all(fd, "!"));
    REQUIRE(recv_exact(pool.accepted_fds.back(), 1) == "!");
    return fd;
}

TEST_CASE("round_robin: weights 1:2:3 over 3000 connections, within 10%", "[proxy][balance]") {
    counting_pool pool(3);
    auto proxy = start_proxy(pool.servers_toml({1, 2, 3}), "balance = \"round_robin\"\n");
    for (int i = 0; i < 3000; ++i) {
        const int fd = proxy->connect();
        REQUIRE(pool.accept_next(false) >= 0);
        close(fd);
    }
    for (int i = 0; i < 3; ++i) {
        const double expected = 3000.0 * (i + 1) / 6;
        INFO("server " << i << " got " << pool.counts[i]);
        CHECK(std::abs(pool.counts[i] - expected) <= 0.1 * expected);
    }
}

TEST_CASE("random_two: weights 1:2:3 over 600 open connections, within 10%", "[proxy][balance]") {
    // Open connections, so that the load it compares is the same from run to
    // run; one shard, whose generator is seeded, so the run repeats. 1200
    // descriptors here: above a soft limit of 1024.
    REQUIRE(raise_fd_limit(2048) >= 2048);
    counting_pool pool(3);
    auto proxy = start_proxy(pool.servers_toml({1, 2, 3}), "balance = \"random_two\"\n");
    std::vector<int> clients;
    for (int i = 0; i < 600; ++i) {
        clients.push_back(open_relayed(*proxy, pool));
    }
    for (int i = 0; i < 3; ++i) {
        const double expected = 600.0 * (i + 1) / 6;
        INFO("server " << i << " got " << pool.counts[i]);
        CHECK(std::abs(pool.counts[i] - expected) <= 0.1 * expected);
    }
    for (int fd : clients) {
        close(fd);
    }
}

TEST_CASE("least_conn spreads long-lived connections evenly, by weight", "[proxy][balance]") {
    counting_pool pool(3);
    auto proxy = start_proxy(pool.servers_toml({1, 1, 2}), "balance = \"least_conn\"\n");
    std::vector<int> clients;
    for (int i = 0; i < 40; ++i) {
        clients.push_back(open_relayed(*proxy, pool));
    }
    CHECK(pool.counts[0] == 10);
    CHECK(pool.counts[1] == 10);
    CHECK(pool.counts[2] == 20);
    for (int fd : clients) {
        close(fd);
    }
}

TEST_CASE("source_hash keeps each client host on one server, and spreads hosts", "[proxy][balance]") {
    counting_pool pool(3);
    auto proxy = start_proxy(pool.servers_toml({1, 1, 1}), "balance = \"source_hash\"\n");
    std::vector<int> used(3, 0);
    for (int host = 1; host <= 30; ++host) {
        const std::string ip = "127.0.0." + std::to_string(host + 1);
        int first = -1;
        for (int k = 0; k < 5; ++k) {
            const int fd = connect_from(ip, proxy->addresses()[0]);
            const int server = pool.accept_next(false);
            REQUIRE(server >= 0);
            if (first < 0) {
                first = server;
                ++used[static_cast<std::size_t>(server)];
            }
            CHECK(server == first);
            close(fd);
        }
    }
    // 30 hosts over 3 servers: each server gets some.
    for (int n : used) {
        CHECK(n > 0);
    }
}

TEST_CASE("max_connections: a client over it waits for a slot and goes through when one frees", "[proxy][queue]") {
    counting_pool pool(1);
    auto proxy = start_proxy("[{ address = \"" + addr(pool.servers[0]->port()) + "\", max_connections = 2 }]",
                             "queue_timeout = \"60s\"\n");
    const int a = open_relayed(*proxy, pool);
    const int b = open_relayed(*proxy, pool);
    const int c = proxy->connect();
    REQUIRE(send_all(c, "queued"));
    // Not connected while two are open (a correct proxy never connects it;
    // this look only bounds how long a wrong one would take to show).
    pollfd p{pool.servers[0]->fd(), POLLIN, 0};
    CHECK(poll(&p, 1, 300) == 0);
    // Both ends of a close, so its pair ends (a half-closed pair still
    // holds its slot).
    close(a);
    close(pool.accepted_fds[0]);
    pool.accepted_fds[0] = -1;
    // The slot frees: c goes through, with what it sent while it waited.
    REQUIRE(pool.accept_next(true) >= 0);
    CHECK(recv_exact(pool.accepted_fds.back(), 6) == "queued");
    close(b);
    close(c);
}

TEST_CASE("queue_timeout closes a client still queued; max_queue closes one over it at once", "[proxy][queue]") {
    counting_pool pool(1);
    auto proxy = start_proxy("[{ address = \"" + addr(pool.servers[0]->port()) + "\", max_connections = 1 }]",
                             "queue_timeout = \"300ms\"\nmax_queue = 1\n");
    const int a = open_relayed(*proxy, pool);
    const auto start = std::chrono::steady_clock::now();
    const int queued = proxy->connect();
    // Make sure the first is queued before the second comes: the proxy
    // reads nothing from a queued client, so this only orders the accepts.
    REQUIRE(send_all(queued, "q"));
    const int over = proxy->connect();
    std::string got;
    // Over max_queue: closed at once (well before the queued one).
    CHECK(read_to_end(over, got) == 0);
    CHECK(got.empty());
    // The queued one: closed at queue_timeout, never connected (with an
    // RST: it had sent a byte that nobody read).
    const int err = read_to_end(queued, got);
    CHECK((err == 0 || err == ECONNRESET));
    CHECK(std::chrono::steady_clock::now() - start >= 300ms);
    CHECK(pool.counts[0] == 1);
    close(over);
    close(queued);
    close(a);
}
