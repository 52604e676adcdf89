// The access log through the real binary: one line per connection, with
// the listener, the client, the server (proxy), the bytes each way, the
// duration and how it ended, for each way a connection can end; JSON lines
// a real parser reads; SIGUSR1 reopens the file after a rotation.
#include "tests/support/echo_peers.hh"
#include "tests/support/proxy_peers.hh"

#include <catch2/catch.hpp>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

using namespace shardd::test;

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<std::vector<std::string>> text_lines(const std::string& text) {
    std::vector<std::vector<std::string>> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::vector<std::string> f;
        for (std::string w; fields >> w;) {
            f.push_back(w);
        }
        out.push_back(f);
    }
    return out;
}

// The address the daemon logged for listener `name`.
std::string address_of(daemon_process& d, const std::string& name) {
    const std::string& log = d.stderr_text();
    const std::string marker = " (listener " + name + ",";
    const auto at = log.find(marker);
    REQUIRE(at != std::string::npos);
    const auto start = log.rfind("listening on ", at) + 13;
    return log.substr(start, at - start);
}

// Waits until `fd` ends (EOF or reset) from the daemon's side.
void wait_closed_by_daemon(int fd) {
    std::string ignored;
    CHECK(read_to_end(fd, ignored) != -1);
}

}  // namespace

TEST_CASE("access log (text): a line per connection, for every way one ends", "[access_log]") {
    loopback_socket nobody(-1);  // bound, not listening: connects are refused
    temp_file f("shardd.toml", "");
    const std::string log_path = f.path() + ".access";
    const std::string config =
        "[runtime]\n" + cpus_key() + "\nshutdown_timeout = \"2s\"\n[access_log]\npath = \"" + log_path +
        "\"\n"
        "[[listener]]\nname = \"e\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\nmax_connections = 1\n"
        "[[listener]]\nname = \"idle\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\nidle_timeout = \"100ms\"\n"
        "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"up\"\n"
        "[[listener]]\nname = \"dead\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"none\"\n"
        "[[upstream]]\nname = \"up\"\nservers = [\"" +
        std::string("127.0.0.1:") + "PORT_E" + "\"]\n[[upstream]]\nname = \"none\"\nservers = [\"" +
        addr(nobody.port()) + "\"]\nretries = 0\n";
    // The proxy's upstream is the echo listener "e" of another shardd (the
    // one under test allows e a single connection).
    auto backend = start_echo();
    std::string text = config;
    text.replace(text.find("127.0.0.1:PORT_E"), 16, backend->addresses()[0]);
    { std::ofstream(f.path()) << text; }
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    const std::string e = address_of(d, "e");

    std::string client_fin_port;
    {
        socket_fd c(connect_to(e));
        REQUIRE(echo_check(c.get(), pattern(1000, 1)) == "");
        // e is at max_connections: the next client is refused.
        socket_fd r(connect_to(e));
        wait_closed_by_daemon(r.get());
        REQUIRE(close_cleanly(c.get()));
    }
    {
        socket_fd c(connect_to(e));
        REQUIRE(send_all(c.get(), pattern(3000, 2)));
        REQUIRE(recv_exact(c.get(), 3000).size() == 3000);
        reset_connection(c);
    }
    {
        socket_fd c(connect_to(address_of(d, "idle")));
        REQUIRE(echo_check(c.get(), "x") == "");
        wait_closed_by_daemon(c.get());
    }
    {
        socket_fd c(connect_to(address_of(d, "p")));
        REQUIRE(echo_check(c.get(), pattern(5000, 3)) == "");
        REQUIRE(close_cleanly(c.get()));
    }
    {
        socket_fd c(connect_to(address_of(d, "dead")));
        wait_closed_by_daemon(c.get());
    }
    d.signal(SIGTERM);
    const auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);

    const std::string log = read_file(log_path);
    INFO(log);
    const auto lines = text_lines(log);
    // One line per connection the daemon took, refused ones included.
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(lines.size() == t.accepted + t.refused);
    std::map<std::string, std::vector<std::string>> by_end;
    for (const auto& l : lines) {
        REQUIRE(l.size() == 8);
        CHECK(l[0].size() == 24);  // 2026-11-29T10:37:38.613Z
        CHECK(l[0].back() == 'Z');
        CHECK(l[2].rfind("127.0.0.1:", 0) == 0);
        by_end[l[1] + " " + l[7]] = l;
    }
    REQUIRE(by_end.count("e client_fin"));
    CHECK(by_end["e client_fin"][4] == "1000");
    CHECK(by_end["e client_fin"][5] == "1000");
    CHECK(by_end["e client_fin"][3] == "-");
    REQUIRE(by_end.count("e refused"));
    CHECK(by_end["e refused"][4] == "0");
    REQUIRE(by_end.count("e client_rst"));
    CHECK(by_end["e client_rst"][4] == "3000");
    REQUIRE(by_end.count("idle idle_timeout"));
    CHECK(by_end["idle idle_timeout"][4] == "1");
    CHECK(std::stod(by_end["idle idle_timeout"][6]) >= 0.1);
    REQUIRE(by_end.count("p client_fin"));
    CHECK(by_end["p client_fin"][3] == backend->addresses()[0]);
    CHECK(by_end["p client_fin"][4] == "5000");
    CHECK(by_end["p client_fin"][5] == "5000");
    REQUIRE(by_end.count("dead no_server"));
    CHECK(by_end["dead no_server"][3] == "-");
}

TEST_CASE("access log (JSON): a real parser reads every line; SIGUSR1 reopens the file after a rotation",
          "[access_log]") {
    temp_file f("shardd.toml", "");
    const std::string log_path = f.path() + ".access";
    std::ofstream(f.path()) << "[runtime]\n" + cpus_key() + "\n[access_log]\npath = \"" + log_path +
                                   "\"\nformat = \"json\"\n"
                                   "[[listener]]\nname = \"json-e\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n";
    notify_socket notify;
    daemon_process d({"-c", f.path()}, {{"NOTIFY_SOCKET", notify.path()}});
    REQUIRE(notify.wait_for("READY=1").has_value());
    const std::string e = address_of(d, "json-e");
    auto one_client = [&](std::uint64_t seed) {
        socket_fd c(connect_to(e));
        REQUIRE(echo_check(c.get(), pattern(100 + seed, seed)) == "");
        REQUIRE(close_cleanly(c.get()));
    };
    one_client(1);
    one_client(2);
    // Each shard writes its lines within a heartbeat (100 ms): wait for
    // the file to hold both (lines still buffered at a rotation go to the
    // new file).
    const auto deadline = steady::now() + generous;
    auto lines_in = [](const std::string& path) {
        const std::string text = read_file(path);
        return std::count(text.begin(), text.end(), '\n');
    };
    while (lines_in(log_path) < 2 && steady::now() < deadline) {
    }
    REQUIRE(lines_in(log_path) == 2);
    // logrotate: move the file away, then SIGUSR1; lines after the signal
    // go to a new file of the old name.
    REQUIRE(std::rename(log_path.c_str(), (log_path + ".1").c_str()) == 0);
    d.signal(SIGUSR1);
    REQUIRE(d.wait_for_output("access log " + log_path + " reopened"));
    one_client(3);
    d.signal(SIGTERM);
    const auto r = d.wait();
    REQUIRE(r.has_value());
    CHECK(r->exit_code == 0);

    const std::string script = "import json, sys\n"
                               "for path in sys.argv[1:]:\n"
                               "    for line in open(path):\n"
                               "        r = json.loads(line)\n"
                               "        print(path[-2:], r['listener'], r['bytes_from_client'], r['end'],\n"
                               "              r['server'], r['time'][-1], r['duration_s'] >= 0)\n";
    const run_result p = run_program("/usr/bin/python3", {"-c", script, log_path + ".1", log_path});
    INFO(p.err << read_file(log_path + ".1") << read_file(log_path));
    REQUIRE(p.exit_code == 0);
    CHECK(p.out == ".1 json-e 101 client_fin None Z True\n"
                   ".1 json-e 102 client_fin None Z True\n"
                   "ss json-e 103 client_fin None Z True\n");
}
