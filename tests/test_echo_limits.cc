// The echo service through the real shardd binary, at its configured and
// system limits: max_connections = 2 refuses the third connection, idle_timeout
// = 1s closes idle connections and only those, and a daemon out of file
// descriptors (ulimit -n 64) waits without burning CPU and serves everyone once
// descriptors free up. Every wait is on a socket (poll with a deadline) or on
// the daemon's own log and counters; every load loop is bounded in count and in
// time.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd::test;

TEST_CASE("echo limits: max_connections = 2 closes the third connection at once", "[echo][limits]") {
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

TEST_CASE("echo limits: idle_timeout = 1s closes idle connections and only those", "[echo][limits]") {
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

TEST_CASE("echo limits: out of file descriptors, the daemon waits cheaply and serves everyone once they free up",
          "[echo][limits]") {
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
