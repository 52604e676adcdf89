// The command line, through the real binary: exit codes, --check,
// --print-config and override precedence.
#include "config/load.hh"
#include "tests/support/echo_daemon.hh"
#include "tests/support/loopback.hh"
#include "tests/support/process.hh"

#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd::test;

namespace {

const std::string listener = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n";

// What --check prints for a valid config with runtime.backend = "auto", in
// this test's environment: the suite needs io_uring, and may run with
// SHARDD_BACKEND set to try each backend.
std::string check_ok() {
    const char* env = std::getenv("SHARDD_BACKEND");
    const std::string over = env ? env : "";
    const std::string backend =
        over == "epoll"      ? "epoll (runtime.backend = \"auto\", overridden by SHARDD_BACKEND=epoll)"
        : over == "io_uring" ? "io_uring (runtime.backend = \"auto\", overridden by SHARDD_BACKEND=io_uring; io_uring "
                               "is usable here)"
                             : "io_uring (runtime.backend = \"auto\"; io_uring is usable here)";
    return "configuration OK\nbackend: " + backend + "\n";
}

}  // namespace

TEST_CASE("--help and --version exit 0", "[cli]") {
    auto help = run_shardd({"--help"});
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.out, Catch::Contains("--check"));
    CHECK_THAT(help.out, Catch::Contains("--print-config"));
    CHECK_THAT(help.out, Catch::Contains("--cpus"));
    CHECK_THAT(help.out, Catch::Contains("--log-level"));
    auto version = run_shardd({"--version"});
    CHECK(version.exit_code == 0);
    CHECK_THAT(version.out, Catch::StartsWith("shardd "));
}

TEST_CASE("usage errors exit 64", "[cli]") {
    for (const auto& args :
         std::vector<std::vector<std::string>>{{"--no-such-flag"}, {"-c"}, {"--check", "extra-argument"}, {"--cpus"}}) {
        INFO(args[0]);
        auto r = run_shardd(args);
        CHECK(r.exit_code == 64);
        CHECK_THAT(r.err, Catch::Contains("shardd --help"));
    }
}

TEST_CASE("--check accepts the bundled example config", "[cli]") {
    auto r = run_shardd({"--check", "-c", source_path("config/shardd.example.toml")});
    CHECK(r.exit_code == 0);
    CHECK(r.out == check_ok());
    CHECK(r.err.empty());
}

TEST_CASE("--check reports bad configs with exit 78 and file:line:col", "[cli]") {
    struct bad_case {
        const char* what;
        std::string toml;
        std::string line;  // expected on stderr
    };
    for (const auto& c : {
             bad_case{"unknown key", "[runtime]\nfoo = 1\n" + listener, ":2:1: runtime.foo: unknown key"},
             bad_case{"wrong type", "[runtime]\nring_entries = \"big\"\n" + listener,
                      ":2:16: runtime.ring_entries: expected a power of two"},
             bad_case{"bad duration", "[runtime]\nshutdown_timeout = \"10 years\"\n" + listener,
                      ":2:20: runtime.shutdown_timeout: expected a duration like \"10s\""},
             bad_case{"bad address", "[[listener]]\nname = \"l\"\nlisten = \"300.1.1.1:80\"\nmode = \"echo\"\n",
                      ":3:10: listener[0].listen: expected an IPv4 address"},
             bad_case{"bad backend", "[runtime]\nbackend = \"kqueue\"\n" + listener,
                      ":2:11: runtime.backend: expected \"auto\", \"io_uring\" or \"epoll\", found \"kqueue\"\n"},
             bad_case{"syntax error", "[runtime\n" + listener, ":1:9: TOML syntax error"},
             bad_case{"idle timeout that would spin", listener + "idle_timeout = \"1us\"\n",
                      ":5:16: listener[0].idle_timeout: expected \"0s\" (off) or a duration from 10ms to 24h, found "
                      "\"1us\"\n"},
         }) {
        INFO(c.what);
        temp_file f("shardd.toml", c.toml);
        auto r = run_shardd({"--check", "-c", f.path()});
        CHECK(r.exit_code == 78);
        CHECK(r.out.empty());
        CHECK_THAT(r.err, Catch::StartsWith(f.path() + c.line));
        // One line per problem.
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    }
}

TEST_CASE("--check says which backend would run here, and why", "[cli]") {
    struct backend_case {
        const char* backend;
        const char* env;  // SHARDD_BACKEND, or nullptr for none
        std::string line;
    };
    for (const auto& c : {
             backend_case{"auto", nullptr, "backend: io_uring (runtime.backend = \"auto\"; io_uring is usable here)"},
             backend_case{"io_uring", nullptr,
                          "backend: io_uring (runtime.backend = \"io_uring\"; io_uring is usable here)"},
             backend_case{"epoll", nullptr, "backend: epoll (runtime.backend = \"epoll\")"},
             backend_case{"auto", "epoll",
                          "backend: epoll (runtime.backend = \"auto\", overridden by SHARDD_BACKEND=epoll)"},
             // The variable overrides "auto" only.
             backend_case{"io_uring", "epoll",
                          "backend: io_uring (runtime.backend = \"io_uring\"; io_uring is usable here)"},
         }) {
        INFO(c.backend << " with SHARDD_BACKEND=" << (c.env ? c.env : "(unset)"));
        temp_file f("shardd.toml", "[runtime]\nbackend = \"" + std::string(c.backend) + "\"\n" + listener);
        const std::string env = c.env ? "SHARDD_BACKEND=" + std::string(c.env) : "-uSHARDD_BACKEND";
        auto r = run_program("/usr/bin/env", {env, shardd_binary(), "--check", "-c", f.path()});
        CHECK(r.exit_code == 0);
        CHECK(r.out == "configuration OK\n" + c.line + "\n");
        CHECK(r.err.empty());
    }
}

TEST_CASE("--check where io_uring is refused: auto would run on epoll, io_uring would not start", "[cli]") {
    const char* wrapper = std::getenv("SHARDD_SECCOMP_EXEC");
    REQUIRE(wrapper != nullptr);
    struct refusal {
        const char* filter;
        const char* backend;
        std::string line;
    };
    for (const auto& c : {
             refusal{"io_uring_setup", "auto",
                     "backend: epoll (runtime.backend = \"auto\"; io_uring is not usable here: a seccomp filter "
                     "denies io_uring_setup (Docker's and containerd's default profiles do)"},
             refusal{"io_uring_setup:ENOSYS", "io_uring",
                     "backend: none, shardd would not start here (runtime.backend = \"io_uring\", and io_uring is "
                     "not usable here: this kernel or sandbox has no io_uring"},
             refusal{"io_uring_setup:ENOSYS", "epoll", "backend: epoll (runtime.backend = \"epoll\")\n"},
         }) {
        INFO(c.filter << ", runtime.backend = " << c.backend);
        temp_file f("shardd.toml", "[runtime]\nbackend = \"" + std::string(c.backend) + "\"\n" + listener);
        auto r = run_program(
            wrapper, {c.filter, "/usr/bin/env", "-uSHARDD_BACKEND", shardd_binary(), "--check", "-c", f.path()});
        // The file is valid: where the check runs need not be where the
        // daemon will.
        CHECK(r.exit_code == 0);
        CHECK_THAT(r.out, Catch::StartsWith("configuration OK\n" + c.line));
        CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 2);
    }
}

TEST_CASE("a bad config stops the daemon before it starts", "[cli]") {
    temp_file f("shardd.toml", "[log]\nlevel = \"loud\"\n" + listener);
    auto r = run_shardd({"-c", f.path()});
    CHECK(r.exit_code == 78);
    CHECK_THAT(r.err, Catch::StartsWith(f.path() + ":2:9: log.level: expected"));
    CHECK_THAT(r.err, !Catch::Contains("ready"));
}

TEST_CASE("a missing config file exits 78 and names the file", "[cli]") {
    auto r = run_shardd({"--check", "-c", "/nonexistent/shardd.toml"});
    CHECK(r.exit_code == 78);
    CHECK(r.err == "/nonexistent/shardd.toml: cannot open: No such file or directory\n");
}

TEST_CASE("--check binds nothing", "[cli]") {
    // Hold a port without SO_REUSEPORT; a config that listens on it passes
    // --check only if --check does not try to bind it.
    loopback_socket held(1);
    const std::string port = std::to_string(held.port());
    temp_file f("shardd.toml", "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:" + port + "\"\nmode = \"echo\"\n");
    auto r = run_shardd({"--check", "-c", f.path()});
    CHECK(r.exit_code == 0);
    CHECK(r.out == check_ok());
}

TEST_CASE("--print-config prints the effective config; the command line wins", "[cli]") {
    temp_file f("shardd.toml", "[runtime]\ncpus = \"0-1\"\n[log]\nlevel = \"debug\"\n" + listener);
    auto r = run_shardd({"--print-config", "-c", f.path()});
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::StartsWith("[runtime]\ncpus = \"0-1\"\n"));
    CHECK_THAT(r.out, Catch::Contains("level = \"debug\""));
    CHECK_THAT(r.out, Catch::Contains("listen = [\"127.0.0.1:0\"]"));

    r = run_shardd({"--print-config", "-c", f.path(), "--cpus", "0", "--log-level", "error"});
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::StartsWith("[runtime]\ncpus = \"0\"\n"));
    CHECK_THAT(r.out, Catch::Contains("level = \"error\""));

    // The printed config is itself a valid config.
    temp_file again("again.toml", r.out);
    auto check = run_shardd({"--check", "--print-config", "-c", again.path()});
    CHECK(check.exit_code == 0);
    CHECK(check.out == r.out);
    CHECK(check.err == check_ok());
}

TEST_CASE("bad command-line values exit 64 and name the option", "[cli]") {
    temp_file f("shardd.toml", listener);
    auto r = run_shardd({"--check", "-c", f.path(), "--cpus", "0-"});
    CHECK(r.exit_code == 64);
    CHECK_THAT(r.err, Catch::StartsWith("command line: --cpus: expected"));
    r = run_shardd({"--check", "-c", f.path(), "--cpus", "4000"});
    CHECK(r.exit_code == 64);
    CHECK_THAT(r.err, Catch::StartsWith("command line: --cpus: CPU 4000 is not available"));
    r = run_shardd({"--check", "-c", f.path(), "--log-level", "chatty"});
    CHECK(r.exit_code == 64);
    CHECK_THAT(r.err, Catch::StartsWith("command line: --log-level: expected"));
}

TEST_CASE("--cpus overrides a file value outside the allowed set", "[cli]") {
    temp_file f("shardd.toml", "[runtime]\ncpus = \"4000\"\n" + listener);
    auto r = run_shardd({"--check", "-c", f.path()});
    CHECK(r.exit_code == 78);
    CHECK_THAT(r.err, Catch::Contains(":2:8: runtime.cpus: CPU 4000 is not available"));
    r = run_shardd({"--check", "-c", f.path(), "--cpus", "0"});
    CHECK(r.exit_code == 0);
}

TEST_CASE("a directory given as the config is reported as one", "[cli]") {
    temp_file f("shardd.toml", listener);
    const std::string dir = std::filesystem::path(f.path()).parent_path().string();
    auto r = run_shardd({"--check", "-c", dir});
    CHECK(r.exit_code == 78);
    CHECK(r.out.empty());
    CHECK(r.err == dir + ": cannot open: Is a directory\n");
}

namespace {

// A valid config of exactly `size` bytes: the listener, then a comment.
std::string config_of_size(std::size_t size) {
    std::string text = listener + "#";
    text += std::string(size - text.size() - 1, 'x');
    return text + "\n";
}

const std::string too_large = ": larger than 1MiB; not a shardd configuration\n";

}  // namespace

TEST_CASE("a config file is read up to 1 MiB and no further", "[cli]") {
    REQUIRE(shardd::config::max_config_file_size == 1024 * 1024);
    temp_file at_cap("shardd.toml", config_of_size(shardd::config::max_config_file_size));
    auto r = run_shardd({"--check", "-c", at_cap.path()});
    CHECK(r.exit_code == 0);
    CHECK(r.out == check_ok());
    CHECK(r.err.empty());

    temp_file over_cap("shardd.toml", config_of_size(shardd::config::max_config_file_size + 1));
    r = run_shardd({"--check", "-c", over_cap.path()});
    CHECK(r.exit_code == 78);
    CHECK(r.out.empty());
    CHECK(r.err == over_cap.path() + too_large);
}

TEST_CASE("an endless config (/dev/zero, a pipe that never ends) is refused at once", "[cli]") {
    // Reading up to the cap takes milliseconds; the unbounded read this
    // replaces took 2.5 s per 1.7 GB and never ended. A third of the usual
    // timeout is ample margin for a loaded machine, and far from "never".
    constexpr auto prompt = default_timeout / 3;
    daemon_process zero({"--check", "-c", "/dev/zero"});
    auto r = zero.wait(prompt);
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 78);
    CHECK(r->err == "/dev/zero" + too_large);

    // `yes` writes until shardd closes the pipe (then SIGPIPE ends it).
    daemon_process pipe({"-c", "yes | exec \"$0\" --check -c /dev/stdin", shardd_binary()}, {}, "/bin/sh");
    r = pipe.wait(prompt);
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 78);
    CHECK(r->err == "/dev/stdin" + too_large);
}

TEST_CASE("a config through a pipe or a symlink is read like a file", "[cli]") {
    temp_file f("shardd.toml", listener);
    auto r =
        run_program("/bin/sh", {"-c", "cat \"$1\" | exec \"$0\" --check -c /dev/stdin", shardd_binary(), f.path()});
    CHECK(r.exit_code == 0);
    CHECK(r.out == check_ok());
    CHECK(r.err.empty());

    const std::string link = std::filesystem::path(f.path()).parent_path() / "link.toml";
    std::filesystem::create_symlink(f.path(), link);
    r = run_shardd({"--check", "-c", link});
    CHECK(r.exit_code == 0);
    CHECK(r.out == check_ok());
}

namespace {

// True when `text` has a control byte other than the newlines that end lines.
bool has_raw_control(const std::string& text) {
    return std::any_of(text.begin(), text.end(), [](char c) {
        const auto b = static_cast<unsigned char>(c);
        return (b < 0x20 && b != '\n') || b == 0x7f;
    });
}

}  // namespace

TEST_CASE("--check prints control characters from the config escaped", "[cli]") {
    // \u001b in a TOML string is a raw ESC once parsed; printed as is it
    // would turn the operator's terminal red.
    temp_file f("shardd.toml", listener + "protocol = \"\\u001b[31mred\"\n\"a\\u0001b\" = 1\n");
    auto r = run_shardd({"--check", "-c", f.path()});
    CHECK(r.exit_code == 78);
    INFO(r.err);
    CHECK_THAT(r.err, Catch::Contains(":5:12: listener[0].protocol: expected \"raw\" or \"sockperf\", found "
                                      "\"\\x1b[31mred\"\n"));
    CHECK_THAT(r.err, Catch::Contains(":6:1: listener[0].a\\x01b: unknown key"));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 2);
    CHECK_FALSE(has_raw_control(r.err));
}

namespace {

// 8 x 1KiB buffers against a max_pending of 64KiB: the pool holds an eighth
// of one connection's round.
const std::string small_pool =
    "[runtime]\nrecv_buffers = 8\nrecv_buffer_size = \"1KiB\"\n" + listener + "max_pending = \"64KiB\"\n";
const std::string small_pool_warning =
    ":8:15: warning: listener[0].max_pending: 64KiB per connection and round; the receive pool runtime.recv_buffers "
    "x recv_buffer_size is 8 x 1KiB = 8KiB per shard, less than 4 rounds: connections will wait for buffers under "
    "load\n";

}  // namespace

TEST_CASE("--check warns when the receive pool is short of 4 rounds, and still passes", "[cli]") {
    temp_file f("shardd.toml", small_pool);
    auto r = run_shardd({"--check", "-c", f.path()});
    CHECK(r.exit_code == 0);
    CHECK(r.out == check_ok());
    CHECK(r.err == f.path() + small_pool_warning);
}

TEST_CASE("the receive pool warning is in the start-up log too", "[cli]") {
    echo_daemon d(small_pool);
    // Printed before logging starts, so before READY=1, which the
    // constructor waited for.
    CHECK_THAT(d.process().stderr_text(), Catch::Contains(small_pool_warning));
    auto r = d.stop();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);
}
