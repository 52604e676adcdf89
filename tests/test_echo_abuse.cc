// The echo service through the real shardd binary, abused by its peers:
// hundreds of connections with random traffic in random interleavings,
// clients that reset mid-stream, a client that sends 64 MiB and never reads,
// the max_pending bound on what clients that never read may hold of their
// shard's receive buffers, and the other clients they must not starve. Every
// wait is on a socket (poll with a deadline) or on the daemon's own log and
// counters; every load loop is bounded in count and in time.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <poll.h>
#include <random>
#include <sstream>
#include <sys/socket.h>

using namespace shardd::test;

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
    CHECK(rss_stalled < rss_before + 8 * 1024 + rss_slack_kib());

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

TEST_CASE("echo abuse: a client that never reads makes the daemon hold at most max_pending + one buffer",
          "[echo][abuse]") {
    // transit.hh: "bytes received but not yet sent back (held buffers
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
