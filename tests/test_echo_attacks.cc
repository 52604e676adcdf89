// Peers that attack a shard's shared resources, through the real shardd
// binary: partial sockperf headers, slow readers that trickle small
// segments, connections that leave half a header and close, floods of
// malformed messages, and all of it at once across two listeners. One
// shard with a small receive pool (16 x 16 KiB), so that any buffer the
// attackers could keep would starve the rest at once.
//
// Each test asserts what a well-behaved client on the same shard can count
// on (its echo back, byte-exact, within a generous bound, while the attack
// runs), that the idle sweep frees what it closes (the daemon's own
// counters, its descriptors), and that SIGTERM ends within shutdown_timeout
// plus a bound. Every wait is on a socket or on the daemon itself; every
// load loop is bounded in count and time.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <regex>
#include <sys/socket.h>
#include <thread>

using namespace shardd::test;

namespace {

// What a well-behaved client may wait, at most, while an attack runs. A
// healthy shard answers in milliseconds; this is for a loaded CI machine.
constexpr auto served_within = std::chrono::seconds(15);
// How long past shutdown_timeout SIGTERM may take: the shard's own bound
// for aborted connections (2 s) and the process's exit, generously.
constexpr auto stop_slack = std::chrono::seconds(10);
constexpr auto shutdown_timeout = std::chrono::seconds(2);

// One shard; a raw listener (address 0) and a sockperf listener (address
// 1); a pool of 16 x 16 KiB; max_pending 16 KiB, so that the pool holds
// 16 rounds of it.
std::string attack_config(const std::string& listener_extra) {
    const std::string common = "max_pending = \"16KiB\"\n" + listener_extra;
    return echo_config("[[listener]]\nname = \"raw\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n" + common +
                           "\n[[listener]]\nname = \"sp\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n"
                           "protocol = \"sockperf\"\n" +
                           common,
                       "cpus = \"" + std::to_string(first_allowed_cpu()) +
                           "\"\nrecv_buffers = 16\nrecv_buffer_size = \"16KiB\"\nshutdown_timeout = \"2s\"");
}

void nodelay(int fd) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// A new client on the raw listener: 64 KiB echoed byte-exact, then a clean
// close. "" on success, else what went wrong.
std::string raw_client(echo_daemon& d, std::uint64_t seed) {
    socket_fd c(d.connect(0));
    const std::string msg = pattern(64 * 1024, seed);
    std::string what = echo_check(c.get(), msg, served_within);
    if (what.empty() && !close_cleanly(c.get(), served_within)) {
        what = "no clean close";
    }
    return what;
}

// A new client on the sockperf listener: three messages, each answered.
std::string sockperf_client(echo_daemon& d, std::uint64_t seed) {
    socket_fd c(d.connect(1));
    nodelay(c.get());
    for (std::uint64_t i = 0; i < 3; ++i) {
        const std::string m = sockperf_message(i, flag_client | flag_reply, 200 + 100 * i, seed + i);
        const std::string back = echo_exchange(c.get(), m, served_within);
        if (back != sockperf_reply(m)) {
            return "message " + std::to_string(i) + ": " + mismatch(back, sockperf_reply(m));
        }
    }
    return close_cleanly(c.get(), served_within) ? "" : "no clean close";
}

// SIGTERM, and the daemon gone within shutdown_timeout plus the bound.
run_result stop_in_bound(echo_daemon& d) {
    const auto start = steady::now();
    auto r = d.stop(shutdown_timeout + stop_slack);
    INFO("SIGTERM answered in " << seconds_since(start) << " s");
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    return *r;
}

// Connects `n` clients to address `index` that each send `bytes` one byte
// per segment (TCP_NODELAY, one send each), and keeps them.
std::vector<socket_fd> partial_senders(echo_daemon& d, std::size_t index, std::size_t n, const std::string& bytes) {
    std::vector<socket_fd> out;
    for (std::size_t i = 0; i < n; ++i) {
        out.emplace_back(d.connect(index));
        nodelay(out.back().get());
    }
    for (char b : bytes) {
        for (auto& s : out) {
            REQUIRE(::send(s.get(), &b, 1, MSG_NOSIGNAL) == 1);
        }
    }
    return out;
}

// Waits until every one of `socks` is closed by the daemon (EOF or reset),
// reading and dropping what the daemon sent before; returns how many were.
std::size_t closed_by_daemon(const std::vector<socket_fd>& socks, std::chrono::milliseconds timeout) {
    const auto deadline = steady::now() + timeout;
    std::size_t closed = 0;
    static char buf[65536];
    for (const auto& s : socks) {
        while (true) {
            pollfd p{s.get(), POLLIN, 0};
            if (poll(&p, 1, ms_left(deadline)) <= 0) {
                break;
            }
            const ssize_t n = ::recv(s.get(), buf, sizeof(buf), MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                ++closed;
                break;
            }
        }
    }
    return closed;
}

std::size_t count_lines(const std::string& log, const std::string& what) {
    std::size_t n = 0;
    for (std::size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) {
        ++n;
    }
    return n;
}

}  // namespace

TEST_CASE("attack: 300 partial sockperf headers hold no buffer; the sweep frees them; SIGTERM in bound",
          "[echo][attack]") {
    echo_daemon d(attack_config("idle_timeout = \"1s\""));
    const int pid = d.pid();
    const std::size_t fds_before = fds_below(pid, 1 << 20, true);

    // 13 bytes of a 14-byte header each, one byte per segment: 3.9 KB in
    // all, which used to pin 300 pool buffers (the pool has 16).
    auto attackers = partial_senders(d, 1, 300, sockperf_message(1, flag_client | flag_reply, 64, 1).substr(0, 13));

    // Both listeners still serve, on the same shard.
    CHECK(raw_client(d, 2) == "");
    CHECK(sockperf_client(d, 3) == "");

    // The idle sweep closes every attacker, and gives back what it held.
    CHECK(closed_by_daemon(attackers, std::chrono::seconds(30)) == attackers.size());
    attackers.clear();
    CHECK(fds_below(pid, 1 << 20, true) == fds_before);
    CHECK(raw_client(d, 4) == "");

    const run_result r = stop_in_bound(d);
    INFO(r.err);
    const shard_stats t = sum(drained_stats(r.err));
    CHECK(t.idle_closed == 300);
    CHECK(t.closed == t.accepted);
    // 300 receives armed on 16 buffers: bytes that arrive together run the
    // pool dry (ENOBUFS) and the receives queue for buffers, first come
    // first served. That is churn, not starvation: everyone was served.
    WARN("300 half headers on 16 buffers: ENOBUFS " << t.enobufs);
}

TEST_CASE("attack: partial headers still open at SIGTERM: the drain closes them within shutdown_timeout",
          "[echo][attack]") {
    echo_daemon d(attack_config("idle_timeout = \"1h\""));
    auto attackers = partial_senders(d, 1, 100, sockperf_message(1, flag_client | flag_reply, 64, 1).substr(0, 7));
    CHECK(raw_client(d, 2) == "");
    const run_result r = stop_in_bound(d);
    INFO(r.err);
    CHECK_THAT(r.err, Catch::Contains("shutdown_timeout: closing 100 connections"));
    CHECK(closed_by_daemon(attackers, std::chrono::seconds(5)) == attackers.size());
    const shard_stats t = sum(drained_stats(r.err));
    CHECK(t.closed == t.accepted);
}

TEST_CASE("attack: slow readers trickling small segments do not starve the shard; memory stays bounded",
          "[echo][attack]") {
    // Copied (the hogs' bytes wait in their connections' spill) or spliced
    // (they wait in the connections' pipes): max_pending bounds both.
    const bool splice = GENERATE(true, false);
    INFO("splice " << splice);
    echo_daemon d(attack_config(splice ? "" : "splice = false\n"));
    CHECK(raw_client(d, 1) == "");  // warm-up: every path has run once
    const std::size_t rss_before = rss_kib(d.pid());

    // 8 clients with a 4 KiB receive buffer that never read, each sending
    // a 1 KiB segment about every millisecond: each segment used to pin a
    // 16 KiB buffer while the echo could not be sent.
    constexpr std::size_t hog_count = 8;
    std::vector<socket_fd> hogs;
    for (std::size_t i = 0; i < hog_count; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        const int small = 4096;
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        nodelay(fd);
        hogs.emplace_back(fd);
        const std::string& a = d.addresses()[0];
        const auto colon = a.rfind(':');
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(static_cast<std::uint16_t>(std::stoi(a.substr(colon + 1))));
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0);
    }
    // The trickle runs until the main thread has done its checks and every
    // hog's window has closed (the daemon stopped reading it), or 60 s.
    std::atomic<bool> checks_done{false};
    std::vector<std::size_t> sent(hog_count, 0);
    std::vector<char> stalled(hog_count, 0);
    std::thread trickle([&] {
        const std::string segment = pattern(1024, 9);
        const auto until = steady::now() + std::chrono::seconds(60);
        while (steady::now() < until &&
               !(checks_done.load() && std::all_of(stalled.begin(), stalled.end(), [](char s) { return s != 0; }))) {
            std::vector<pollfd> p;
            for (const auto& h : hogs) {
                p.push_back({h.get(), POLLOUT, 0});
            }
            // The pace: at most one segment per client per millisecond.
            poll(p.data(), p.size(), 1);
            for (std::size_t i = 0; i < hog_count; ++i) {
                const ssize_t n = ::send(hogs[i].get(), segment.data(), segment.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n > 0) {
                    sent[i] += static_cast<std::size_t>(n);
                } else if (n < 0 && errno == EAGAIN) {
                    stalled[i] = 1;
                }
            }
        }
    });
    std::size_t served = 0;
    std::string failures;
    for (int i = 0; i < 10; ++i) {
        const std::string what = raw_client(d, 100 + static_cast<std::uint64_t>(i));
        served += what.empty() ? 1 : 0;
        failures += what.empty() ? "" : "client " + std::to_string(i) + ": " + what + "\n";
    }
    checks_done = true;
    trickle.join();
    const std::size_t rss_during = rss_kib(d.pid());
    INFO(failures);
    CHECK(served == 10);
    for (std::size_t i = 0; i < hog_count; ++i) {
        INFO("hog " << i << " sent " << sent[i] << " bytes");
        CHECK(stalled[i]);
    }
    // The daemon's memory for the hogs: at most max_pending each in its
    // own memory, nothing of the pool (MAP_POPULATE'd, counted from start).
    WARN("8 trickling slow readers: daemon RSS " << rss_before << " KiB -> " << rss_during << " KiB");
    CHECK(rss_during < rss_before + 8 * 1024 + rss_slack_kib());
    for (auto& h : hogs) {
        reset_connection(h);
    }
    CHECK(raw_client(d, 200) == "");
    const run_result r = stop_in_bound(d);
    INFO(r.err);
    const shard_stats t = sum(drained_stats(r.err));
    // What stopped the daemon reading each hog: its relay paused (the echo
    // could not be sent), or, on a loaded machine, the shard's small
    // receive pool ran dry first and the hog's receive waited for a buffer.
    // Either bounds its memory (checked above); which one comes first for a
    // given hog is timing (a CI run saw 5 pauses and 57 ENOBUFS for 8 hogs).
    CHECK(t.pauses > 0);
    CHECK(t.pauses + t.enobufs >= hog_count);
    if (splice) {
        CHECK(t.spilled + t.spliced > 0);
    } else {
        CHECK(t.spilled > 0);
        CHECK(t.spliced == 0);
    }
    CHECK(t.closed == t.accepted);
}

TEST_CASE("attack: the shortest idle_timeout costs an idle shard almost nothing, and SIGTERM always ends",
          "[echo][attack]") {
    // 10 ms is the smallest idle_timeout the config takes: a sweep every
    // 2.5 ms while the listener has connections, none while it has none.
    for (int round = 0; round < 10; ++round) {
        INFO("round " << round);
        echo_daemon d(attack_config("idle_timeout = \"10ms\""));
        socket_fd idle;
        if (round == 0) {
            // Measured once, with and without a connection to sweep: by the
            // daemon's own CPU time over a second or so of wall time.
            const auto measure = [&d] {
                const std::uint64_t ticks = cpu_ticks(d.pid());
                const auto start = steady::now();
                pollfd none{-1, 0, 0};
                poll(&none, 1, 1000);  // letting time pass is the measurement
                const double elapsed = seconds_since(start);
                return static_cast<double>(cpu_ticks(d.pid()) - ticks) / static_cast<double>(sysconf(_SC_CLK_TCK)) /
                       elapsed;
            };
            const double idle_share = measure();
            socket_fd kept(d.connect(0));
            REQUIRE(echo_check(kept.get(), "x") == "");
            const double one_connection_share = measure();
            WARN("idle_timeout 10ms: CPU share with no connection " << idle_share << ", with one "
                                                                    << one_connection_share);
            CHECK(idle_share < 0.25);
            CHECK(one_connection_share < 0.25);
            // The sweep closed it (10 ms idle).
            CHECK(wait_for_close(kept.get(), served_within) == peer_end::eof);
        } else if (round % 2 == 1) {
            idle = socket_fd(d.connect(0));  // open, and swept or drained
        }
        const run_result r = stop_in_bound(d);
        INFO(r.err);
        CHECK(drained_stats(r.err).size() == 1);
    }
}

TEST_CASE("attack: 2600 connections leave half a header and close; every listener keeps serving", "[echo][attack]") {
    echo_daemon d(attack_config("idle_timeout = \"1h\""));
    const std::string part = sockperf_message(1, flag_client | flag_reply, 64, 1).substr(0, 7);
    const auto start = steady::now();
    std::size_t done = 0;
    while (done < 2600 && steady::now() < start + std::chrono::seconds(120)) {
        std::vector<socket_fd> batch;
        for (int i = 0; i < 100; ++i) {
            batch.emplace_back(d.connect(1));
            REQUIRE(send_all(batch.back().get(), part));
        }
        done += batch.size();
    }
    REQUIRE(done == 2600);
    CHECK(raw_client(d, 1) == "");
    CHECK(sockperf_client(d, 2) == "");
    // Every one of them was closed by the daemon before the drain: none
    // is left for shutdown_timeout to close.
    const run_result r = stop_in_bound(d);
    INFO(r.err.substr(0, 4000));
    CHECK_THAT(r.err, !Catch::Contains("shutdown_timeout: closing"));
    const shard_stats t = sum(drained_stats(r.err));
    CHECK(t.accepted == 2600 + 2);
    CHECK(t.closed == t.accepted);
}

TEST_CASE("attack: a valid message followed by a malformed one in one write: the reply comes, then the close",
          "[echo][attack]") {
    echo_daemon d(attack_config(""));
    socket_fd c(d.connect(1));
    const std::string good = sockperf_message(7, flag_client | flag_reply, 100, 7);
    const std::string bad = sockperf_message(8, flag_client | flag_reply, 5, 0);  // length 5 < 14
    REQUIRE(send_all(c.get(), good + bad));
    const std::string want = sockperf_reply(good);
    std::string back;
    const bool eof = recv_until_eof(c.get(), back, served_within);
    CHECK(mismatch(back, want) == "");
    CHECK(eof);
    const run_result r = stop_in_bound(d);
    CHECK_THAT(r.err, Catch::Contains("sockperf message length 5 outside 14..65536"));
    CHECK(sum(drained_stats(r.err)).protocol_errors == 1);
}

TEST_CASE("attack: a flood of malformed messages is logged at a bounded rate and counted", "[echo][attack]") {
    echo_daemon d(attack_config(""));
    const std::string bad = sockperf_message(1, flag_client | flag_reply, 3, 0);
    const auto start = steady::now();
    std::size_t sent = 0;
    std::string failures;
    while (sent < 400 && steady::now() < start + std::chrono::seconds(120)) {
        std::vector<socket_fd> batch;
        for (int i = 0; i < 50; ++i) {
            batch.emplace_back(d.connect(1));
            (void)send_all(batch.back().get(), bad);  // the daemon may close first
        }
        CHECK(closed_by_daemon(batch, served_within) == batch.size());
        sent += batch.size();
        // Served meanwhile.
        const std::string what = raw_client(d, sent);
        failures += what.empty() ? "" : what + "\n";
    }
    const double elapsed = seconds_since(start);
    INFO(failures);
    CHECK(failures.empty());
    const run_result r = stop_in_bound(d);
    const std::size_t logged = count_lines(r.err, "closing connection from");
    const shard_stats t = sum(drained_stats(r.err));
    WARN(sent << " malformed connections in " << elapsed << " s: " << logged << " lines logged, " << t.log_suppressed
              << " suppressed");
    CHECK(t.protocol_errors == sent);
    CHECK(logged + t.log_suppressed == sent);
    // At most 10 a second (peer_log's burst), per shard; one shard here.
    CHECK(logged <= 10 * (static_cast<std::size_t>(elapsed) + 2));
    CHECK(t.log_suppressed > 0);
}

TEST_CASE("attack: everything at once, across both listeners", "[echo][attack]") {
    // Half headers on the sockperf listener, trickling and flooding slow
    // readers on the raw one, garbage and resets and connect-and-close churn
    // on both; meanwhile well-behaved clients on both are served, then the
    // sweep (2 s) closes what is left idle, and SIGTERM ends in bound.
    echo_daemon d(attack_config("idle_timeout = \"2s\""));
    const std::size_t rss_before = rss_kib(d.pid());
    std::string failures;
    auto check_served = [&](const char* phase, std::uint64_t seed) {
        const std::string a = raw_client(d, seed);
        const std::string b = sockperf_client(d, seed + 1);
        failures += a.empty() ? "" : std::string(phase) + ", raw: " + a + "\n";
        failures += b.empty() ? "" : std::string(phase) + ", sockperf: " + b + "\n";
    };

    auto holders = partial_senders(d, 1, 100, sockperf_message(1, flag_client | flag_reply, 64, 1).substr(0, 13));
    check_served("after 100 half headers", 10);

    std::vector<socket_fd> readers;
    for (int i = 0; i < 6; ++i) {
        readers.emplace_back(d.connect(0));
        const int small = 4096;
        ::setsockopt(readers.back().get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    }
    std::vector<std::size_t> flooded;
    // A stall of 500 ms: well inside the 2 s idle_timeout, whose sweep may
    // close a stalled reader 1.5 s after the daemon's last receive.
    REQUIRE(flood_until_stalled(readers, pattern(16 << 20, 2), flooded, std::chrono::milliseconds(500),
                                steady::now() + std::chrono::seconds(60)));
    check_served("after 6 slow readers stalled", 20);

    for (int i = 0; i < 50; ++i) {
        // A valid sockperf message, then garbage, in one write.
        socket_fd g(d.connect(1));
        (void)send_all(g.get(), sockperf_message(1, flag_client | flag_reply, 40, 3) +
                                    sockperf_message(2, flag_client | flag_reply, 5, 0));
        // A raw client that resets mid-stream, its echo unread.
        socket_fd r(d.connect(0));
        (void)send_all(r.get(), pattern(100 * 1024, 4));
        reset_connection(r);
        // Connect and close at once, on both.
        socket_fd c0(d.connect(0));
        socket_fd c1(d.connect(1));
    }
    check_served("after garbage, resets and churn", 30);

    // The sweep closes the half headers (idle), and the slow readers too:
    // they hold the daemon's echo in a closed window and send nothing more.
    CHECK(closed_by_daemon(holders, std::chrono::seconds(30)) == holders.size());
    CHECK(closed_by_daemon(readers, std::chrono::seconds(30)) == readers.size());
    check_served("after the sweep", 40);
    const std::size_t rss_after = rss_kib(d.pid());
    INFO(failures);
    CHECK(failures.empty());
    WARN("everything at once: daemon RSS " << rss_before << " KiB -> " << rss_after << " KiB");
    CHECK(rss_after < rss_before + 16 * 1024 + rss_slack_kib());

    const run_result r = stop_in_bound(d);
    INFO(r.err.substr(0, 4000));
    const shard_stats t = sum(drained_stats(r.err));
    CHECK(t.closed == t.accepted);
    CHECK(t.idle_closed >= holders.size() + readers.size());
    CHECK(t.protocol_errors >= 1);
    CHECK_THAT(r.err, !Catch::Contains("shutdown_timeout: closing"));
}
