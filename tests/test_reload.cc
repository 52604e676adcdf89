// Live reload (SIGHUP) through the real binary: listeners added, removed and
// changed, upstream servers swapped, while shardd-bench drives the proxy
// listener; restart-only keys refused while the rest applies; a reload that
// cannot bind changes nothing. Every wait is on the daemon (its notify
// datagrams, its log) or on a socket.
#include "reactor/cpu_set.hh"
#include "tests/support/echo_peers.hh"
#include "tests/support/proxy_peers.hh"

#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <netinet/in.h>
#include <regex>
#include <sys/socket.h>

using namespace shardd;
using namespace shardd::test;

namespace {

// Replaces the file at once (rename), as an editor or a config manager
// does: the daemon never reads half a file.
void write_config(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".new";
    std::ofstream(tmp) << text;
    REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0);
}

// The address the daemon logged last for listener `name`, or "".
std::string address_of(const std::string& log, const std::string& name) {
    const std::regex line("listening on (\\S+) \\(listener " + name + ",");
    std::string found;
    for (std::sregex_iterator it(log.begin(), log.end(), line), end; it != end; ++it) {
        found = (*it)[1].str();
    }
    return found;
}

// SIGHUP, then RELOADING=1 and READY=1 from the daemon.
void reload(daemon_process& d, notify_socket& notify) {
    d.signal(SIGHUP);
    REQUIRE(notify.wait_for("RELOADING=1").has_value());
    REQUIRE(notify.wait_for("READY=1").has_value());
}

// Whether a connect to `address` is refused (nobody listens there).
bool refused(const std::string& address) {
    const auto colon = address.rfind(':');
    socket_fd s(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1))));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 && errno == ECONNREFUSED;
}

std::uint64_t json_number(const std::string& json, const std::string& key) {
    std::smatch m;
    REQUIRE(std::regex_search(json, m, std::regex("\"" + key + "\":([0-9]+)")));
    return std::stoull(m[1].str());
}

}  // namespace

TEST_CASE("reload: 20 SIGHUPs under shardd-bench load: listeners come and go, upstream servers change, nothing "
          "is lost",
          "[reload]") {
    auto a = start_echo();
    auto b = start_echo();
    const std::string server_a = a->addresses()[0];
    const std::string server_b = b->addresses()[0];
    // Round i: the upstream's servers cycle [a], [a, b], [b]; listener
    // "extra" exists in odd rounds; front's idle_timeout and max_pending
    // change with i (new connections take them).
    auto config_for = [&](int i) {
        const std::vector<std::vector<std::string>> servers = {{server_a}, {server_a, server_b}, {server_b}};
        std::string text = "[runtime]\n" + cpus_key() +
                           "\nshutdown_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                           "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\n"
                           "upstream = \"web\"\nidle_timeout = \"" +
                           std::to_string(60 + i) + "s\"\nmax_pending = \"" + std::to_string(128 + 16 * (i % 4)) +
                           "KiB\"\n";
        if (i % 2 == 1) {
            text += "[[listener]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n";
        }
        text +=
            "[[upstream]]\nname = \"web\"\nservers = " + quoted_list(servers[static_cast<std::size_t>(i % 3)]) + "\n";
        return text;
    };

    temp_file f("shardd.toml", config_for(0));
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    const std::string front = address_of(d.stderr_text(), "front");
    REQUIRE(!front.empty());

    std::smatch m;
    const std::string log = d.stderr_text();
    REQUIRE(std::regex_search(log, m, std::regex(R"(admin endpoint: listening on (\S+))")));
    const std::string admin = m[1].str();

    // The load: 16 connections, every byte verified, for longer than the
    // reloads take. The daemon's own count says when all are in.
    // The client on another CPU than the daemons (all on the first), when
    // there is one: a loaded CI machine runs other tests beside this one.
    const auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    const unsigned client_cpu = allowed->cpus()[allowed->size() > 1 ? 1 : 0];
    // Open loop at 10,000 messages a second: steady traffic through every
    // reload without taking the machine from the tests that run beside it.
    daemon_process bench({front, "-c", "16", "-s", "1KiB", "--rate", "10000", "--duration", "6s", "--warmup", "0s",
                          "--cpus", std::to_string(client_cpu), "--json"},
                         {}, shardd_bench_binary());
    const auto deadline = steady::now() + generous;
    while (stats_sum(admin, "active") < 16 && steady::now() < deadline) {
    }
    REQUIRE(stats_sum(admin, "active") >= 16);

    std::string failures;
    socket_fd held;  // a connection to "extra", open across its removal
    const std::string held_data = pattern(256 * 1024, 9);
    std::string extra;
    for (int i = 1; i <= 20; ++i) {
        write_config(f.path(), config_for(i));
        reload(d, notify);
        // A new client through the proxy, to whichever servers are current.
        {
            socket_fd c(connect_to(front));
            const std::string what = echo_check(c.get(), pattern(64 * 1024, static_cast<std::uint64_t>(i)));
            failures += what.empty() ? "" : "round " + std::to_string(i) + ", front: " + what + "\n";
        }
        if (i % 2 == 1) {
            // "extra" is back, on a new port: it serves, and one client
            // stays, with its echo unread, while the next round removes it.
            REQUIRE(d.wait_for_output("(listener extra,"));
            extra = address_of(d.stderr_text(), "extra");
            REQUIRE(!extra.empty());
            held = socket_fd(connect_to(extra));
            REQUIRE(send_all(held.get(), held_data));
        } else {
            // "extra" is gone: nothing listens there, and the held client
            // still gets its whole echo, and more.
            CHECK(refused(extra));
            CHECK(recv_exact(held.get(), held_data.size()) == held_data);
            CHECK(echo_check(held.get(), pattern(64 * 1024, 100 + static_cast<std::uint64_t>(i))) == "");
            CHECK(close_cleanly(held.get()));
            held = socket_fd();
        }
    }
    INFO(failures);
    CHECK(failures.empty());

    const auto r = bench.wait(std::chrono::seconds(60));
    REQUIRE(r.has_value());
    INFO(r->out << r->err);
    CHECK(r->exit_code == 0);
    CHECK(json_number(r->out, "connect_errors") == 0);
    CHECK(json_number(r->out, "verification_errors") == 0);
    CHECK(json_number(r->out, "resets") == 0);
    CHECK(json_number(r->out, "early_closes") == 0);
    CHECK(json_number(r->out, "unanswered") == 0);
    CHECK(json_number(r->out, "messages") > 0);
    CHECK_THAT(r->out, Catch::Contains("\"ok\":true"));

    d.signal(SIGTERM);
    const auto end = d.wait();
    REQUIRE(end.has_value());
    CHECK(end->exit_code == 0);
    CHECK_THAT(end->err, Catch::Contains("reload: applied: listener front changed, listener extra added, upstream "
                                         "web changed"));
    CHECK_THAT(end->err, Catch::Contains("reload: applied: listener front changed, listener extra removed, upstream "
                                         "web changed"));
    CHECK_THAT(end->err, Catch::Contains("listener extra: retired"));
    CHECK_THAT(end->err, !Catch::Contains("reload failed"));
    // Rounds with [b] alone sent their new clients to b.
    const auto b_end = b->stop();
    REQUIRE(b_end.has_value());
    CHECK(sum(drained_stats(b_end->err)).accepted > 0);
}

TEST_CASE("reload: restart-only keys are refused and named, the rest applies; a port in use changes nothing",
          "[reload]") {
    const auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    const std::string cpu = std::to_string(allowed->cpus()[0]);
    const std::string one = "[[listener]]\nname = \"one\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n";
    temp_file f("shardd.toml", "[runtime]\ncpus = \"" + cpu + "\"\n" + one);
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    const std::string first = address_of(d.stderr_text(), "one");

    // backend, recv_buffers and io_memory need a restart; the new listener
    // does not.
    write_config(f.path(), "[runtime]\ncpus = \"" + cpu +
                               "\"\nbackend = \"epoll\"\nrecv_buffers = 256\nio_memory = \"8MiB\"\n" + one +
                               "[[listener]]\nname = \"two\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n");
    reload(d, notify);
    CHECK(d.wait_for_output("reload: runtime.backend, runtime.io_memory, runtime.recv_buffers need a restart: keeping "
                            "the running values; applying the rest"));
    const std::string second = address_of(d.stderr_text(), "two");
    REQUIRE(!second.empty());
    for (const auto& addr : {first, second}) {
        socket_fd c(connect_to(addr));
        CHECK(echo_check(c.get(), pattern(10000, 1)) == "");
    }

    // A third listener on a port that is taken: the reload fails as a
    // whole, and "two" is not removed although the file drops it.
    loopback_socket taken(16);
    const std::string taken_address = addr(taken.port());
    write_config(f.path(), "[runtime]\ncpus = \"" + cpu + "\"\n" + one + "[[listener]]\nname = \"three\"\nlisten = \"" +
                               taken_address + "\"\nmode = \"echo\"\n");
    reload(d, notify);
    CHECK(d.wait_for_output("reload failed: listener three: cannot listen on " + taken_address));
    {
        socket_fd c(connect_to(second));
        CHECK(echo_check(c.get(), pattern(10000, 2)) == "");
    }
    d.signal(SIGTERM);
    const auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    CHECK_THAT(r->err, !Catch::Contains("listener two: retired"));
}
