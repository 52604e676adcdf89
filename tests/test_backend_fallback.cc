// Where io_uring is denied: shardd under a seccomp filter that makes
// io_uring_setup fail (EPERM, as Docker's default profile; ENOSYS, as
// gVisor). With runtime.backend = "auto" it says why once and serves on
// epoll: raw echo, the sockperf protocol and the proxy, byte-exact, then
// drains on SIGTERM. With "io_uring" it refuses to start, saying why.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"
#include "tests/support/proxy_peers.hh"

#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <regex>
#include <sys/socket.h>

using namespace shardd::test;

namespace {

int count_of(const std::string& text, const std::string& needle) {
    int n = 0;
    for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
        ++n;
    }
    return n;
}

}  // namespace

TEST_CASE("backend auto: io_uring_setup refused by seccomp, shardd serves on epoll and drains", "[backend]") {
    const std::string filter = GENERATE(std::string("io_uring_setup"), std::string("io_uring_setup:ENOSYS"));
    INFO("filter " << filter);
    // The choice under test is the daemon's own: not the suite's override.
    ::unsetenv("SHARDD_BACKEND");
    // The proxy's server is an ordinary shardd (whatever backend the suite
    // runs on); the daemon under test proxies to it.
    auto upstream = start_echo();
    const std::string config = echo_config(
        "[[listener]]\nname = \"raw\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n"
        "[[listener]]\nname = \"sp\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\nprotocol = \"sockperf\"\n"
        "[[listener]]\nname = \"p\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"proxy\"\nupstream = \"u\"\n"
        "[[upstream]]\nname = \"u\"\nservers = " +
            quoted_list(upstream->addresses()) + "\n",
        "backend = \"auto\"\nshutdown_timeout = \"1m\"");
    echo_daemon d(config, "", seccomp_exec_wrapper(filter));
    REQUIRE(d.addresses().size() == 3);

    // Raw echo: a megabyte, byte-exact, on two connections at once.
    socket_fd a(d.connect(0));
    socket_fd b(d.connect(0));
    CHECK(echo_check(a.get(), pattern(1 << 20, 1)).empty());
    CHECK(echo_check(b.get(), pattern(64 << 10, 2)).empty());

    // The sockperf protocol: a message that asks for a reply gets it.
    {
        socket_fd s(d.connect(1));
        const std::string ping = sockperf_message(7, flag_client | flag_reply, 64, test_seed());
        CHECK(echo_exchange(s.get(), ping) == sockperf_reply(ping));
        const std::string big = sockperf_message(8, flag_client | flag_reply, 60000, test_seed() + 1);
        CHECK(mismatch(echo_exchange(s.get(), big), sockperf_reply(big)).empty());
    }

    // The proxy: byte-exact through to the upstream and back.
    {
        socket_fd p(d.connect(2));
        CHECK(echo_check(p.get(), pattern(1 << 20, 3)).empty());
    }

    // SIGTERM drains: `a` stays served until it closes, then shardd exits 0.
    d.process().signal(SIGTERM);
    REQUIRE(d.process().wait_for_output("draining"));
    CHECK(echo_check(a.get(), pattern(256 << 10, 4)).empty());
    REQUIRE(::shutdown(a.get(), SHUT_WR) == 0);
    std::string rest;
    CHECK(recv_until_eof(a.get(), rest));
    b.reset();
    auto r = d.process().wait(std::chrono::minutes(1));
    REQUIRE(r.has_value());
    INFO(r->err);
    CHECK(r->exit_code == 0);
    // One warning per process, naming the cause, and each shard on epoll.
    CHECK(count_of(r->err, "io_uring is not usable here") == 1);
    CHECK_THAT(r->err, Catch::Contains(filter == "io_uring_setup" ? "a seccomp filter denies io_uring_setup"
                                                                  : "this kernel or sandbox has no io_uring"));
    CHECK(count_of(r->err, "backend epoll") >= 1);
    CHECK(count_of(r->err, "backend io_uring") == 0);
    CHECK(std::regex_search(r->err, std::regex(R"(\[shard \d+\] drained: )")));
    CHECK_THAT(r->err, !Catch::Contains("shutdown_timeout: closing"));
}

TEST_CASE("backend io_uring: io_uring refused (seccomp EPERM) or absent (ENOSYS) is exit 1, with the reason",
          "[backend]") {
    const char* wrapper = std::getenv("SHARDD_SECCOMP_EXEC");
    REQUIRE(wrapper != nullptr);
    temp_file cfg("shardd.toml", "[runtime]\nbackend = \"io_uring\"\n[[listener]]\nname = \"e\"\nlisten = "
                                 "\"127.0.0.1:0\"\nmode = \"echo\"\n");
    struct refusal {
        const char* filter;
        const char* reason;
    };
    for (const refusal& r :
         {refusal{"io_uring_setup", "a seccomp filter denies io_uring_setup (Docker's and containerd's default "
                                    "profiles do)"},
          refusal{"io_uring_setup:ENOSYS", "this kernel or sandbox has no io_uring"}}) {
        INFO(r.filter);
        const run_result res = run_program(wrapper, {r.filter, shardd_binary(), "-c", cfg.path()});
        INFO(res.err);
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.err, Catch::Contains("cannot create the main io_uring ring") && Catch::Contains(r.reason));
        CHECK_THAT(res.err, !Catch::Contains("epoll"));
    }
}
