// Socket activation through the real binary: sockets passed the way systemd
// passes them (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, descriptors from 3).
//
// systemd-socket-activate (from the systemd package) is the launcher where
// it can do the job: it binds, waits for the first client, and execs shardd,
// which finds that client waiting in the backlog. It cannot set SO_REUSEPORT
// (ReusePort=yes), which shards beside the first need, so the several-shard
// cases use a few lines of Python that do what systemd does for a .socket
// unit: open the sockets, put them at 3, 4, ..., set the variables, exec.
#include "reactor/cpu_set.hh"
#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"

#include <catch2/catch.hpp>
#include <csignal>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd;
using namespace shardd::test;

namespace {

const std::string socket_activate = "/usr/bin/systemd-socket-activate";

// What systemd does for a .socket unit, then exec. Arguments: one spec per
// socket ("NAME:KIND:REUSEPORT", KIND tcp or udp), "--", the command.
const std::string launcher = R"(
import os, socket, sys
sep = sys.argv.index("--")
specs, command = sys.argv[1:sep], sys.argv[sep + 1:]
socks = []
for spec in specs:
    name, kind, reuse = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    if reuse == "1":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    if kind == "tcp":
        s.listen(128)
    socks.append((name, s))
# Above any descriptor 3 + n might already be, then down into place.
high = [os.dup(s.fileno()) for _, s in socks]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
env = dict(os.environ)
env["LISTEN_PID"] = str(os.getpid())
env["LISTEN_FDS"] = str(len(socks))
env["LISTEN_FDNAMES"] = ":".join(name for name, _ in socks)
os.execve(command[0], command, env)
)";

std::string cpus_text(std::size_t n) {
    const auto allowed = allowed_cpus();
    std::string s;
    for (std::size_t i = 0; allowed && i < n && i < allowed->size(); ++i) {
        s += (s.empty() ? "" : ",") + std::to_string(allowed->cpus()[i]);
    }
    return s;
}

std::string config_for(const std::string& cpus, const std::string& listen) {
    return "[runtime]\ncpus = \"" + cpus + "\"\nshutdown_timeout = \"2s\"\n[[listener]]\nname = \"web\"\nlisten = \"" +
           listen + "\"\nmode = \"echo\"\n";
}

// A port the kernel has just handed out and taken back: free, barring a
// race with another bind(0), which the callers retry.
int free_port() {
    socket_fd s(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    socklen_t len = sizeof(a);
    REQUIRE(getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
    return ntohs(a.sin_port);
}

// "listening on 127.0.0.1:PORT (listener web, ..." -> "127.0.0.1:PORT".
std::string listening_address(const std::string& log) {
    const std::string marker = "listening on ";
    const auto at = log.find(marker);
    REQUIRE(at != std::string::npos);
    const auto start = at + marker.size();
    return log.substr(start, log.find(' ', start) - start);
}

}  // namespace

TEST_CASE("socket activation: systemd-socket-activate's socket, matched by name or by address, and the client "
          "that woke it is served",
          "[socket_activation]") {
    if (access(socket_activate.c_str(), X_OK) != 0) {
        WARN("systemd-socket-activate is not installed: skipped");
        return;
    }
    for (const bool by_name : {true, false}) {
        INFO((by_name ? "by FileDescriptorName=" : "by address"));
        for (int attempt = 0;; ++attempt) {
            const std::string addr = "127.0.0.1:" + std::to_string(free_port());
            // By name: the config's own address is elsewhere (port 0); by
            // address: the name is another.
            temp_file f("shardd.toml", config_for(cpus_text(1), by_name ? "127.0.0.1:0" : addr));
            notify_socket notify;
            daemon_process d({"-l", addr, by_name ? "--fdname=web" : "--fdname=other", "-E",
                              "NOTIFY_SOCKET=" + notify.path(), shardd_binary(), "-c", f.path()},
                             {}, socket_activate);
            const bool listening = d.wait_for_output("Listening on " + addr + " as 3.");
            if (!listening && d.stderr_text().find("Address already in use") != std::string::npos && attempt < 5) {
                continue;  // free_port() lost a race: another port
            }
            REQUIRE(listening);
            // The first client wakes it: shardd starts with this connection
            // already in the backlog, and serves it.
            socket_fd c(connect_to(addr));
            const std::string msg = pattern(256 * 1024, 7);
            REQUIRE(send_all(c.get(), msg));
            const auto ready = notify.wait_for("READY=1");
            REQUIRE(ready.has_value());
            CHECK_THAT(*ready, Catch::Contains("MAINPID=" + std::to_string(d.pid())));
            CHECK(recv_exact(c.get(), msg.size()) == msg);
            CHECK(close_cleanly(c.get()));
            CHECK(listening_address(d.stderr_text()) == addr);
            CHECK_THAT(d.stderr_text(),
                       Catch::Contains("from systemd: fd 3 '" + std::string(by_name ? "web" : "other") + "' " + addr));
            d.signal(SIGTERM);
            const auto r = d.wait();
            REQUIRE(r.has_value());
            CHECK(r->exit_code == 0);
            break;
        }
    }
}

TEST_CASE("socket activation: shards beside systemd's SO_REUSEPORT socket share the load; a stray socket is "
          "closed with a warning",
          "[socket_activation]") {
    if (cpus_text(2).find(',') == std::string::npos) {
        WARN("fewer than two CPUs allowed: skipped");
        return;
    }
    temp_file f("shardd.toml", config_for(cpus_text(2), "127.0.0.1:0"));
    notify_socket notify;
    daemon_process d({"-c", launcher, "web:tcp:1", "stray:tcp:1", "--", shardd_binary(), "-c", f.path()},
                     {{"NOTIFY_SOCKET", notify.path()}}, "/usr/bin/python3");
    REQUIRE(notify.wait_for("READY=1").has_value());
    const std::string log = d.stderr_text();
    CHECK_THAT(log, Catch::Contains("socket activation: 2 sockets from systemd"));
    CHECK_THAT(log, Catch::Contains("(listener web, echo/raw, 2 shards, from systemd: fd 3 'web' 127.0.0.1:"));
    CHECK_THAT(log, Catch::Contains("the socket systemd passed as fd 4 'stray' 127.0.0.1:"));
    const std::string addr = listening_address(log);
    // 32 connections over two sockets in one SO_REUSEPORT group: each
    // shard gets some (all on one: odds 2^-31).
    for (int i = 0; i < 32; ++i) {
        socket_fd c(connect_to(addr));
        CHECK(echo_check(c.get(), pattern(4096, static_cast<std::uint64_t>(i))) == "");
        CHECK(close_cleanly(c.get()));
    }
    d.signal(SIGTERM);
    const auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
    const auto shards = drained_stats(r->err);
    REQUIRE(shards.size() == 2);
    CHECK(shards[0].accepted > 0);
    CHECK(shards[1].accepted > 0);
    CHECK(shards[0].accepted + shards[1].accepted == 32);
}

TEST_CASE("socket activation: sockets shardd cannot use stop the start with a reason", "[socket_activation]") {
    struct bad_case {
        std::string spec, cpus, expected;
    };
    std::vector<bad_case> cases = {
        {"web:udp:1", cpus_text(1), "socket activation: fd 3 'web' is not a listening stream socket"},
    };
    if (cpus_text(2).find(',') != std::string::npos) {
        cases.push_back({"web:tcp:0", cpus_text(2),
                         "has no SO_REUSEPORT, so shards 1..1 cannot listen beside it: "
                         "set ReusePort=yes in the .socket unit"});
    }
    for (const auto& c : cases) {
        INFO(c.spec);
        temp_file f("shardd.toml", config_for(c.cpus, "127.0.0.1:0"));
        const run_result r =
            run_program("/usr/bin/python3", {"-c", launcher, c.spec, "--", shardd_binary(), "-c", f.path()});
        CHECK(r.exit_code == 1);
        CHECK_THAT(r.err, Catch::Contains(c.expected));
        CHECK_THAT(r.err, !Catch::Contains("ready:"));
    }
}
