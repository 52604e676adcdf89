// The proxy controls through the real shardd binary, over loopback: active
// health checks (fall, rise, send/expect, one checking shard), backup
// servers, draining by reload, PROXY protocol headers sent to a server that
// parses them on its own, and accepted from well- and ill-behaved peers.
// Servers are real processes (shardd's echo listener, stopped with SIGSTOP
// to stop answering) or sockets this test owns; every wait is on a socket,
// on the daemon's log, or on a process.

#include "reactor/socket_address.hh"
#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"
#include "tests/support/loopback.hh"
#include "tests/support/proxy_peers.hh"

#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd::test;

namespace {

std::string admin_of(echo_daemon& d) {
    std::smatch m;
    const std::string log = d.process().stderr_text();
    REQUIRE(std::regex_search(log, m, std::regex(R"(admin endpoint: listening on (\S+))")));
    return m[1].str();
}

// The value of one sample line of /metrics ("name{labels} value"), or -1.
double metric(const std::string& admin, const std::string& series) {
    const std::string body = http_get(admin, "/metrics");
    const std::size_t at = body.find("\n" + series + " ");
    if (at == std::string::npos) {
        return -1;
    }
    return std::stod(body.substr(at + series.size() + 2));
}

// Whether the daemon serves `fd`: a few bytes echo back (true), or it
// closes the connection first (false).
bool served(int fd, const std::string& msg = "ping") { return echo_exchange(fd, msg, generous) == msg; }

// A shardd proxy listener "p" to upstream "u", on the shards `runtime` says
// (all allowed CPUs by default), with its admin endpoint.
std::string proxy_config(const std::string& servers, const std::string& upstream_extra,
                         const std::string& listener_extra = "", const std::string& runtime = "") {
    return echo_config("[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"p\"\nlisten = [\"127.0.0.1:0\"]\n"
                       "mode = \"proxy\"\nupstream = \"u\"\n" +
                           listener_extra + "\n[[upstream]]\nname = \"u\"\nservers = " + servers + "\n" +
                           upstream_extra,
                       runtime);
}

// A shardd echo server that can be made to stop answering: SIGSTOP leaves
// its sockets to the kernel, which still completes connects, and nothing
// replies.
struct echo_server {
    std::unique_ptr<echo_daemon> d = start_echo();
    std::string address = d->addresses()[0];
    void stop_answering() { d->process().signal(SIGSTOP); }
    void answer_again() { d->process().signal(SIGCONT); }
};

// A blocking TCP socket from `source` ("127.0.0.2", "::1") to `address`.
int connect_from(const std::string& source, const std::string& address) {
    auto to = shardd::socket_address::parse(address);
    REQUIRE(to.has_value());
    const int fd = socket(to->family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_storage from{};
    socklen_t len = 0;
    if (to->family() == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&from);
        sin->sin_family = AF_INET;
        REQUIRE(inet_pton(AF_INET, source.c_str(), &sin->sin_addr) == 1);
        len = sizeof(sockaddr_in);
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&from);
        sin6->sin6_family = AF_INET6;
        REQUIRE(inet_pton(AF_INET6, source.c_str(), &sin6->sin6_addr) == 1);
        len = sizeof(sockaddr_in6);
    }
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&from), len) == 0);
    REQUIRE(connect(fd, to->get(), to->length()) == 0);
    return fd;
}

// `n` clients through `proxy`, one after another, each served.
void serve_clients(echo_daemon& proxy, int n) {
    for (int i = 0; i < n; ++i) {
        socket_fd c(proxy.connect());
        REQUIRE(served(c.get()));
    }
}

// Connections made to `server` through the proxy, over all shards.
double connections_to(const std::string& admin, const std::string& server) {
    const std::string body = http_get(admin, "/stats");
    const std::size_t at = body.find("{\"address\":\"" + server + "\"");
    REQUIRE(at != std::string::npos);
    const std::size_t c = body.find("\"connections\":", at);
    return std::stod(body.substr(c + 14));
}

// Quick enough for a test, slow enough that a loaded CI machine (ASan, two
// cores) does not fail three checks of a healthy server in a row.
const std::string fast_checks = "health_check = { interval = \"300ms\", timeout = \"300ms\", rise = 2, fall = 3, "
                                "send = 'PING\\r\\n', expect = 'PING' }\n";

}  // namespace

TEST_CASE("active checks: a server that stops answering is down after `fall` checks, for every shard, and back "
          "after `rise`; one shard checks it",
          "[proxy][health]") {
    echo_server a;
    echo_server b;
    echo_daemon proxy(proxy_config(quoted_list({a.address, b.address}), fast_checks));
    const std::string admin = admin_of(proxy);
    a.stop_answering();
    REQUIRE(proxy.process().wait_for_output("server " + a.address + " is down: 3 failed checks", generous));
    // Every new client goes to b: one sent to the stopped a would get no
    // echo (its connect succeeds; nothing answers), and no retry saves it.
    // The clients land on every shard (SO_REUSEPORT), and each shard's pick
    // reads the one shared verdict.
    const double before = connections_to(admin, b.address);
    serve_clients(proxy, 20);
    CHECK(connections_to(admin, b.address) == before + 20);
    a.answer_again();
    REQUIRE(proxy.process().wait_for_output("server " + a.address + " is up after 2 passing checks", generous));
    const double a_before = connections_to(admin, a.address);
    serve_clients(proxy, 10);
    CHECK(connections_to(admin, a.address) > a_before);
    // One shard ran a's checks: its counter is the only one that moved.
    const std::string body = http_get(admin, "/metrics");
    const std::regex checks("shardd_upstream_checks_total\\{shard=\"(\\d+)\",upstream=\"u\",server=\"" +
                            std::regex_replace(a.address, std::regex("\\."), "\\.") + "\"\\} (\\d+)");
    int shards_checking = 0;
    int shards = 0;
    for (std::sregex_iterator it(body.begin(), body.end(), checks), end; it != end; ++it) {
        ++shards;
        shards_checking += std::stoi((*it)[2].str()) > 0 ? 1 : 0;
    }
    CHECK(shards == static_cast<int>(cpus_allowed()));
    CHECK(shards_checking == 1);
    auto r = proxy.stop();
    REQUIRE(r);
    const std::string a_down = "server " + a.address + " is down: ";
    std::size_t downs = 0;
    for (std::size_t at = r->err.find(a_down); at != std::string::npos; at = r->err.find(a_down, at + 1)) {
        ++downs;
    }
    CHECK(downs == 1);
}

TEST_CASE("health checks come and go with a reload; a server they marked down is up once they are gone",
          "[proxy][health][reload]") {
    echo_server a;
    echo_server b;
    const std::string servers = quoted_list({a.address, b.address});
    echo_daemon proxy(proxy_config(servers, "", "", cpus_key()));
    const std::string admin = admin_of(proxy);
    a.stop_answering();
    proxy.reload(proxy_config(servers, fast_checks, "", cpus_key()));
    REQUIRE(proxy.process().wait_for_output("server " + a.address + " is down: 3 failed checks", generous));
    CHECK(metric(admin, "shardd_upstream_server_up{upstream=\"u\",server=\"" + a.address + "\"}") == 0);
    proxy.reload(proxy_config(servers, "", "", cpus_key()));
    CHECK(metric(admin, "shardd_upstream_server_up{upstream=\"u\",server=\"" + a.address + "\"}") == 1);
    a.answer_again();
    // Round robin over both again: of two clients, one is a's.
    serve_clients(proxy, 2);
    CHECK(connections_to(admin, a.address) == 1);
}

TEST_CASE("active checks: send/expect, a wrong reply is a failure", "[proxy][health]") {
    echo_server echo;
    // Two upstreams on the one echo server: one expects what the echo
    // sends back, the other something else.
    echo_daemon proxy(echo_config(
        "[admin]\nlisten = \"127.0.0.1:0\"\n"
        "[[listener]]\nname = \"good\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"proxy\"\nupstream = \"good\"\n"
        "[[listener]]\nname = \"bad\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"proxy\"\nupstream = \"bad\"\n"
        "[[upstream]]\nname = \"good\"\nservers = [\"" +
            echo.address +
            "\"]\nhealth_check = { interval = \"1s\", timeout = \"1s\", fall = 2, send = '\\x00PING\\r\\n', "
            "expect = '\\x00PING' }\n"
            "[[upstream]]\nname = \"bad\"\nservers = [\"" +
            echo.address +
            "\"]\nhealth_check = { interval = \"1s\", timeout = \"1s\", fall = 2, send = 'PING\\r\\n', expect = "
            "'PONG' }\n",
        cpus_key()));
    const std::string admin = admin_of(proxy);
    REQUIRE(proxy.process().wait_for_output(
        "upstream bad: server " + echo.address +
            " is down: 2 failed checks (last: the reply does not start with the expected bytes)",
        generous));
    // The good upstream's checks ran alongside, and passed.
    const std::string good = "{shard=\"0\",upstream=\"good\",server=\"" + echo.address + "\"}";
    CHECK(metric(admin, "shardd_upstream_checks_total" + good) >= 1);
    CHECK(metric(admin, "shardd_upstream_check_failures_total" + good) == 0);
    CHECK(metric(admin, "shardd_upstream_server_up{upstream=\"good\",server=\"" + echo.address + "\"}") == 1);
    CHECK(metric(admin, "shardd_upstream_server_up{upstream=\"bad\",server=\"" + echo.address + "\"}") == 0);
    // Through the bad upstream nobody is served; through the good one, all.
    socket_fd g(proxy.connect(0));
    CHECK(served(g.get()));
    socket_fd b(proxy.connect(1));
    CHECK_FALSE(served(b.get()));
    CHECK(proxy.process().stderr_text().find("upstream good: server") == std::string::npos);
}

TEST_CASE("backup servers take over while every primary is down, and hand back", "[proxy][health]") {
    echo_server primary;
    echo_server backup;
    echo_daemon proxy(proxy_config(
        "[\"" + primary.address + "\", { address = \"" + backup.address + "\", backup = true }]", fast_checks));
    const std::string admin = admin_of(proxy);
    serve_clients(proxy, 5);
    CHECK(connections_to(admin, primary.address) == 5);
    CHECK(connections_to(admin, backup.address) == 0);
    primary.stop_answering();
    REQUIRE(proxy.process().wait_for_output("server " + primary.address + " is down", generous));
    serve_clients(proxy, 5);
    CHECK(connections_to(admin, backup.address) == 5);
    primary.answer_again();
    REQUIRE(proxy.process().wait_for_output("server " + primary.address + " is up", generous));
    serve_clients(proxy, 5);
    CHECK(connections_to(admin, primary.address) == 10);
    CHECK(connections_to(admin, backup.address) == 5);
}

TEST_CASE("a retry goes to a backup once every primary refused, marked down or not", "[proxy][health]") {
    loopback_socket refusing(-1);  // bound, not listening
    echo_server backup;
    // max_fails = 0: passive health never marks the primary down.
    echo_daemon proxy(
        proxy_config("[\"" + addr(refusing.port()) + "\", { address = \"" + backup.address + "\", backup = true }]",
                     "retries = 1\nmax_fails = 0\n"));
    serve_clients(proxy, 3);
    const std::string admin = admin_of(proxy);
    CHECK(connections_to(admin, backup.address) == 3);
    CHECK(stats_sum(admin, "no_server") == 0);
}

TEST_CASE("clients queued for a full pool are woken when a server comes up", "[proxy][health][queue]") {
    echo_server a;
    echo_server b;
    echo_daemon proxy(proxy_config("[{ address = \"" + a.address + "\", max_connections = 1 }, \"" + b.address + "\"]",
                                   fast_checks + "queue_timeout = \"1h\"\n", "", cpus_key()));
    b.stop_answering();
    REQUIRE(proxy.process().wait_for_output("server " + b.address + " is down", generous));
    socket_fd holder(proxy.connect());  // a's one slot
    REQUIRE(served(holder.get()));
    socket_fd queued(proxy.connect());  // a full, b down: it waits
    REQUIRE(send_all(queued.get(), "queued"));
    b.answer_again();
    // Served by b once it is up, long before queue_timeout or a close.
    CHECK(recv_exact(queued.get(), 6, generous) == "queued");
    CHECK(connections_to(admin_of(proxy), b.address) == 1);
}

TEST_CASE("a server drained by reload finishes its connections and gets no new ones", "[proxy][drain]") {
    const std::string how = GENERATE(std::string("drain = true"), std::string("weight = 0"));
    INFO(how);
    echo_server a;
    echo_server b;
    auto config = [&](const std::string& a_options) {
        return proxy_config("[{ address = \"" + a.address + "\"" + a_options + " }, \"" + b.address + "\"]", "", "",
                            cpus_key());
    };
    echo_daemon proxy(config(""));
    const std::string admin = admin_of(proxy);
    // Round robin from a on the one shard: the first client is a's.
    socket_fd open_to_a(proxy.connect());
    REQUIRE(served(open_to_a.get()));
    REQUIRE(connections_to(admin, a.address) == 1);
    proxy.reload(config(", " + how));
    REQUIRE(proxy.process().wait_for_output("reload: applied", generous));
    // The changed upstream is a new generation: its counters start at 0.
    serve_clients(proxy, 6);
    CHECK(connections_to(admin, a.address) == 0);
    CHECK(connections_to(admin, b.address) == 6);
    // a still has its one open connection (the count carries over).
    CHECK(metric(admin, "shardd_upstream_server_active{upstream=\"u\",server=\"" + a.address + "\"}") == 1);
    // a's connection goes on as before, and closes cleanly.
    CHECK(echo_check(open_to_a.get(), pattern(300'000, 5)) == "");
    CHECK(close_cleanly(open_to_a.get()));
    CHECK_THAT(http_get(admin, "/stats"), Catch::Contains("\"backup\":false,\"draining\":true"));
}

namespace {

// What a PROXY header said, as this test reads it, independently of
// shardd's parser: v1 by splitting the line, v2 by its fixed layout.
struct seen_header {
    std::string family;  // "TCP4", "TCP6", "UNKNOWN", "LOCAL"
    std::string source, destination;
    std::uint16_t source_port = 0, destination_port = 0;
};

// Reads one header from `fd` (blocking, with a deadline), and nothing more.
seen_header read_header(int fd) {
    seen_header h;
    const std::string first = recv_exact(fd, 1);
    REQUIRE(first.size() == 1);
    if (first[0] == 'P') {
        std::string line = first;
        while (line.size() < 107 && line.substr(line.size() > 1 ? line.size() - 2 : 0) != "\r\n") {
            const std::string c = recv_exact(fd, 1);
            REQUIRE(c.size() == 1);
            line += c;
        }
        INFO(line);
        std::vector<std::string> parts;
        std::size_t start = 0;
        const std::string body = line.substr(0, line.size() - 2);
        for (std::size_t sp = body.find(' ');; sp = body.find(' ', start)) {
            parts.push_back(body.substr(start, sp - start));
            if (sp == std::string::npos) {
                break;
            }
            start = sp + 1;
        }
        REQUIRE(parts[0] == "PROXY");
        h.family = parts[1];
        if (h.family != "UNKNOWN") {
            REQUIRE(parts.size() == 6);
            h.source = parts[2];
            h.destination = parts[3];
            h.source_port = static_cast<std::uint16_t>(std::stoi(parts[4]));
            h.destination_port = static_cast<std::uint16_t>(std::stoi(parts[5]));
        }
        return h;
    }
    const std::string fixed = first + recv_exact(fd, 15);
    REQUIRE(fixed.size() == 16);
    REQUIRE(fixed.substr(0, 12) == std::string("\r\n\r\n\0\r\nQUIT\n", 12));
    const auto ver_cmd = static_cast<unsigned char>(fixed[12]);
    const auto fam = static_cast<unsigned char>(fixed[13]);
    const std::size_t len = (static_cast<unsigned char>(fixed[14]) << 8) | static_cast<unsigned char>(fixed[15]);
    const std::string block = recv_exact(fd, len);
    REQUIRE(block.size() == len);
    REQUIRE((ver_cmd >> 4) == 2);
    if ((ver_cmd & 0xf) == 0) {
        h.family = "LOCAL";
        return h;
    }
    REQUIRE((ver_cmd & 0xf) == 1);
    char text[INET6_ADDRSTRLEN];
    auto port_at = [&](std::size_t i) {
        return static_cast<std::uint16_t>((static_cast<unsigned char>(block[i]) << 8) |
                                          static_cast<unsigned char>(block[i + 1]));
    };
    if (fam == 0x11) {
        REQUIRE(len >= 12);
        h.family = "TCP4";
        h.source = inet_ntop(AF_INET, block.data(), text, sizeof(text));
        h.destination = inet_ntop(AF_INET, block.data() + 4, text, sizeof(text));
        h.source_port = port_at(8);
        h.destination_port = port_at(10);
    } else {
        REQUIRE(fam == 0x21);
        REQUIRE(len >= 36);
        h.family = "TCP6";
        h.source = inet_ntop(AF_INET6, block.data(), text, sizeof(text));
        h.destination = inet_ntop(AF_INET6, block.data() + 16, text, sizeof(text));
        h.source_port = port_at(32);
        h.destination_port = port_at(34);
    }
    return h;
}

std::uint16_t local_port(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                         : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

std::uint16_t port_of(const std::string& address) {
    return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

}  // namespace

TEST_CASE("PROXY headers sent to a server: v1 and v2, IPv4 and IPv6, the client's addresses; a server may opt out",
          "[proxy][proxy-protocol]") {
    const std::string version = GENERATE(std::string("v1"), std::string("v2"));
    const bool v6 = GENERATE(false, true);
    INFO(version << (v6 ? " over IPv6" : " over IPv4"));
    loopback_socket server(16);
    loopback_socket plain(16);  // proxy_protocol = "none" for this one
    const std::string listen = v6 ? "[::1]:0" : "127.0.0.1:0";
    echo_daemon proxy(echo_config("[[listener]]\nname = \"p\"\nlisten = [\"" + listen +
                                      "\"]\nmode = \"proxy\"\nupstream = \"u\"\n"
                                      "[[upstream]]\nname = \"u\"\nproxy_protocol = \"" +
                                      version + "\"\nservers = [\"" + addr(server.port()) + "\", { address = \"" +
                                      addr(plain.port()) + "\", proxy_protocol = \"none\" }]\n",
                                  cpus_key()));
    // Round robin: the first client goes to `server`, the second to `plain`.
    socket_fd client(proxy.connect());
    REQUIRE(send_all(client.get(), "hello"));
    socket_fd upstream(accept_one(server));
    REQUIRE(upstream.get() >= 0);
    const seen_header h = read_header(upstream.get());
    CHECK(h.family == (v6 ? "TCP6" : "TCP4"));
    CHECK(h.source == (v6 ? "::1" : "127.0.0.1"));
    CHECK(h.source_port == local_port(client.get()));
    CHECK(h.destination_port == port_of(proxy.addresses()[0]));
    // Then the client's bytes, untouched, both ways.
    CHECK(recv_exact(upstream.get(), 5) == "hello");
    REQUIRE(send_all(upstream.get(), "world"));
    CHECK(recv_exact(client.get(), 5) == "world");

    socket_fd second(proxy.connect());
    REQUIRE(send_all(second.get(), "plain"));
    socket_fd raw(accept_one(plain));
    REQUIRE(raw.get() >= 0);
    CHECK(recv_exact(raw.get(), 5) == "plain");
}

TEST_CASE("the client a PROXY header names goes on in the header shardd sends", "[proxy][proxy-protocol]") {
    loopback_socket server(16);
    echo_daemon proxy(echo_config("[[listener]]\nname = \"p\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"proxy\"\n"
                                  "upstream = \"u\"\naccept_proxy = true\nproxy_trusted = [\"127.0.0.0/8\"]\n"
                                  "[[upstream]]\nname = \"u\"\nproxy_protocol = \"v2\"\nservers = [\"" +
                                      addr(server.port()) + "\"]\n",
                                  cpus_key()));
    socket_fd client(proxy.connect());
    REQUIRE(send_all(client.get(), "PROXY TCP6 2001:db8::5 2001:db8::80 40000 443\r\nhello"));
    socket_fd upstream(accept_one(server));
    REQUIRE(upstream.get() >= 0);
    const seen_header h = read_header(upstream.get());
    CHECK(h.family == "TCP6");
    CHECK(h.source == "2001:db8::5");
    CHECK(h.source_port == 40000);
    CHECK(h.destination == "2001:db8::80");
    CHECK(h.destination_port == 443);
    CHECK(recv_exact(upstream.get(), 5) == "hello");
}

TEST_CASE("source_hash picks by the client a PROXY header names, not by the proxy in front",
          "[proxy][proxy-protocol]") {
    echo_server a;
    echo_server b;
    echo_daemon proxy(proxy_config(quoted_list({a.address, b.address}), "balance = \"source_hash\"\n",
                                   "accept_proxy = true\nproxy_trusted = [\"127.0.0.1\"]\n"));
    const std::string admin = admin_of(proxy);
    auto client_from = [&](int host) {
        socket_fd c(proxy.connect());
        const std::string header =
            "PROXY TCP4 192.0.2." + std::to_string(host) + " 198.51.100.1 " + std::to_string(4000 + host) + " 80\r\n";
        REQUIRE(send_all(c.get(), header));
        REQUIRE(served(c.get()));
    };
    // One client machine, five connections (each from another port of the
    // proxy in front): one server.
    for (int i = 0; i < 5; ++i) {
        client_from(7);
    }
    const double on_a = connections_to(admin, a.address);
    CHECK(
        ((on_a == 5 && connections_to(admin, b.address) == 0) || (on_a == 0 && connections_to(admin, b.address) == 5)));
    // Twenty client machines, all through the one proxy: both servers.
    for (int host = 20; host < 40; ++host) {
        client_from(host);
    }
    CHECK(connections_to(admin, a.address) > on_a);
    CHECK(connections_to(admin, b.address) > 5 - on_a);
}

namespace {

std::string v2_header(unsigned char ver_cmd, unsigned char family, const std::string& block) {
    std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
    h += static_cast<char>(ver_cmd);
    h += static_cast<char>(family);
    h += static_cast<char>(block.size() >> 8);
    h += static_cast<char>(block.size() & 0xff);
    return h + block;
}

std::string v2_ipv4(const char* src, const char* dst, std::uint16_t sport, std::uint16_t dport) {
    std::string block(12, '\0');
    inet_pton(AF_INET, src, block.data());
    inet_pton(AF_INET, dst, block.data() + 4);
    block[8] = static_cast<char>(sport >> 8);
    block[9] = static_cast<char>(sport & 0xff);
    block[10] = static_cast<char>(dport >> 8);
    block[11] = static_cast<char>(dport & 0xff);
    return v2_header(0x21, 0x11, block);
}

// An echo listener that takes PROXY headers from 127.0.0.1, with its
// access log on stderr and an admin endpoint.
// `timeout`: proxy_timeout (short only where a test waits for it).
std::string accept_proxy_config(const std::string& timeout = "5s") {
    return echo_config("[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\npath = \"stderr\"\n"
                       "[[listener]]\nname = \"e\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n"
                       "accept_proxy = true\nproxy_trusted = [\"127.0.0.1/32\"]\nproxy_timeout = \"" +
                           timeout + "\"\n",
                       cpus_key());
}

}  // namespace

TEST_CASE("PROXY headers accepted: v1, v2 (with a TLV), UNKNOWN and LOCAL; the header's client is the one logged",
          "[proxy][proxy-protocol]") {
    echo_daemon d(accept_proxy_config());
    struct good {
        std::string header;
        std::string logged;  // the client the access log names
    };
    std::string tlv = v2_ipv4("192.0.2.9", "198.51.100.1", 6000, 80);
    // A PP2_TYPE_AUTHORITY TLV: the length field grows by its 3 + 11 bytes.
    tlv[15] = static_cast<char>(12 + 14);
    tlv += std::string("\x02\x00\x0b", 3) + "example.com";
    const std::vector<good> cases = {
        {"PROXY TCP4 192.0.2.1 198.51.100.1 5001 80\r\n", "192.0.2.1:5001"},
        {"PROXY TCP6 2001:db8::7 2001:db8::1 5002 80\r\n", "[2001:db8::7]:5002"},
        {v2_ipv4("192.0.2.3", "198.51.100.1", 5003, 80), "192.0.2.3:5003"},
        {tlv, "192.0.2.9:6000"},
        {"PROXY UNKNOWN\r\n", ""},
        {v2_header(0x20, 0x00, ""), ""},
    };
    for (const auto& c : cases) {
        INFO(c.logged);
        socket_fd s(d.connect());
        // UNKNOWN and LOCAL: the connection's own address stands.
        const std::string logged = c.logged.empty() ? "127.0.0.1:" + std::to_string(local_port(s.get())) : c.logged;
        // The header and the first bytes in one segment: what follows the
        // header is the client's, and echoes.
        REQUIRE(send_all(s.get(), c.header + "payload"));
        CHECK(recv_exact(s.get(), 7) == "payload");
        CHECK(served(s.get()));
        CHECK(close_cleanly(s.get()));
        CHECK(d.process().wait_for_output("Z e " + logged + " ", generous));
    }
}

TEST_CASE("PROXY headers refused: untrusted peer, missing, truncated, too long, wrong signature, bad family, slow "
          "trickle; nothing is relayed or leaked, and a good client is still served",
          "[proxy][proxy-protocol][abuse]") {
    echo_daemon d(accept_proxy_config("1s"));
    const std::string admin = admin_of(d);
    // These two first: their log lines come before the peer log's limit
    // (10 lines a second per shard) can leave them out.
    // An untrusted peer, with a perfect header: only 127.0.0.1 is trusted.
    {
        INFO("untrusted peer");
        socket_fd s(connect_from("127.0.0.2", d.addresses()[0]));
        (void)send_all(s.get(), "PROXY TCP4 192.0.2.1 198.51.100.1 5001 80\r\nhello");
        const peer_end e = wait_for_close(s.get(), generous);
        CHECK((e == peer_end::eof || e == peer_end::reset));
    }
    // A slow trickle: a byte every 100 ms of a valid header's first 20,
    // closed at proxy_timeout (1 s) with the header never whole.
    {
        INFO("slow trickle");
        socket_fd s(d.connect());
        const std::string header = "PROXY TCP4 192.0.2.1 198.51.100.1 5001 80\r\n";
        peer_end e = peer_end::timeout;
        for (std::size_t i = 0; i < 20 && e == peer_end::timeout; ++i) {
            if (send(s.get(), header.data() + i, 1, MSG_NOSIGNAL) != 1) {
                e = peer_end::reset;
                break;
            }
            e = wait_for_close(s.get(), std::chrono::milliseconds(100));
        }
        if (e == peer_end::timeout) {
            e = wait_for_close(s.get(), generous);  // a slow machine: the deadline still comes
        }
        CHECK((e == peer_end::eof || e == peer_end::reset));
    }
    struct bad {
        const char* what;
        std::string bytes;
        bool half_close;  // then shut the write side: the header never completes
    };
    const std::vector<bad> cases = {
        {"no header at all", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false},
        {"truncated v1", "PROXY TCP4 192.0.2.1 198.51.10", true},
        {"truncated v2", v2_ipv4("192.0.2.1", "198.51.100.1", 1, 2).substr(0, 20), true},
        {"v1 longer than 107 bytes", "PROXY TCP4 " + std::string(200, '1'), false},
        {"v2 longer than 4 KiB", v2_header(0x21, 0x11, std::string(5000, '\0')), false},
        {"wrong v2 signature", std::string("\r\n\r\n\0\r\nQUIZ\n\x21\x11\x00\x0c", 16) + std::string(12, '\0'), false},
        {"v2 UDP family", v2_header(0x21, 0x12, std::string(12, '\0')), false},
        {"v1 with a bad address", "PROXY TCP4 192.0.2.300 198.51.100.1 1 2\r\n", false},
    };
    for (const auto& c : cases) {
        INFO(c.what);
        socket_fd s(d.connect());
        (void)send_all(s.get(), c.bytes);
        if (c.half_close) {
            shutdown(s.get(), SHUT_WR);
        }
        const peer_end e = wait_for_close(s.get(), generous);
        CHECK((e == peer_end::eof || e == peer_end::reset));
    }
    // A good client is served all along.
    socket_fd good(d.connect());
    REQUIRE(send_all(good.get(), "PROXY TCP4 192.0.2.1 198.51.100.1 5001 80\r\n"));
    CHECK(served(good.get()));
    CHECK(close_cleanly(good.get()));
    CHECK(stats_sum(admin, "proxy_rejected") == 10);
    auto r = d.stop();
    REQUIRE(r);
    const shard_stats t = sum(drained_stats(r->err));
    CHECK(t.accepted == t.closed);
    CHECK(t.bytes_in == 4);  // the good client's "ping", nothing of the others
    CHECK(r->err.find("not in proxy_trusted") != std::string::npos);
    CHECK(r->err.find("not whole within proxy_timeout") != std::string::npos);
}

TEST_CASE("source ACLs, IPv4 and IPv6: deny wins, allow denies the rest, and a reload changes them live",
          "[proxy][acl]") {
    auto config = [](const std::string& acl) {
        return echo_config("[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"e\"\n"
                           "listen = [\"127.0.0.1:0\", \"[::1]:0\"]\nmode = \"echo\"\n" +
                               acl,
                           cpus_key());
    };
    echo_daemon d(config("allow = [\"127.0.0.0/30\", \"::1/128\"]\ndeny = [\"127.0.0.3\"]\n"));
    const std::string admin = admin_of(d);
    const std::string v4 = d.addresses()[0];
    const std::string v6 = d.addresses()[1];
    struct probe {
        const char* source;
        const std::string& to;
        bool served;
    };
    auto check = [&](const std::vector<probe>& probes) {
        for (const auto& p : probes) {
            INFO(p.source);
            socket_fd s(connect_from(p.source, p.to));
            CHECK(served(s.get()) == p.served);
        }
    };
    check({{"127.0.0.1", v4, true},
           {"127.0.0.2", v4, true},
           {"127.0.0.3", v4, false},  // denied, though allowed
           {"127.0.0.4", v4, false},  // not allowed
           {"::1", v6, true}});
    CHECK(stats_sum(admin, "denied") == 2);
    d.reload(config("deny = [\"::1\", \"127.0.0.2/32\"]\n"));
    REQUIRE(d.process().wait_for_output("reload: applied", generous));
    check({{"127.0.0.2", v4, false}, {"127.0.0.4", v4, true}, {"::1", v6, false}});
    CHECK(stats_sum(admin, "denied") == 4);
    // Limits come with a reload too. Connections admitted before the
    // listener had a limit are not counted, and go on.
    socket_fd held(connect_from("127.0.0.4", v4));
    REQUIRE(served(held.get()));
    d.reload(config("max_connections_per_source = 1\n"));
    CHECK(served(held.get(), "still"));
    socket_fd first(connect_from("127.0.0.5", v4));
    CHECK(served(first.get()));
    socket_fd second(connect_from("127.0.0.5", v4));
    CHECK_FALSE(served(second.get()));
    CHECK(stats_sum(admin, "source_limited") == 1);
}

TEST_CASE("per-source limits hold across shards: connections, then rate", "[proxy][limits]") {
    echo_daemon d(echo_config("[admin]\nlisten = \"127.0.0.1:0\"\n"
                              "[[listener]]\nname = \"count\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n"
                              "max_connections_per_source = 4\n"
                              "[[listener]]\nname = \"rate\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n"
                              "connection_rate_per_source = 2\n"));
    const std::string admin = admin_of(d);
    // Four from 127.0.0.2, held open: the kernel spreads them over the
    // shards (SO_REUSEPORT), and the fifth is refused whichever shard gets
    // it. Another source is not affected.
    std::vector<socket_fd> held;
    for (int i = 0; i < 4; ++i) {
        held.emplace_back(connect_from("127.0.0.2", d.addresses()[0]));
        REQUIRE(served(held.back().get()));
    }
    for (int i = 0; i < 6; ++i) {
        socket_fd over(connect_from("127.0.0.2", d.addresses()[0]));
        CHECK_FALSE(served(over.get()));
    }
    socket_fd other(connect_from("127.0.0.3", d.addresses()[0]));
    CHECK(served(other.get()));
    CHECK(stats_sum(admin, "source_limited") == 6);
    // One closes; its slot comes back once the daemon has closed its side.
    REQUIRE(close_cleanly(held.back().get()));
    held.pop_back();
    bool admitted = false;
    for (int i = 0; i < 100 && !admitted; ++i) {
        socket_fd again(connect_from("127.0.0.2", d.addresses()[0]));
        admitted = served(again.get());
        if (admitted) {
            held.push_back(std::move(again));
        }
    }
    CHECK(admitted);
    // Rate: 2 a second, a burst of 2. Of 12 connects in a row, at most
    // 2 + 2 per second elapsed are admitted, and at least one is refused
    // unless the machine took 5 s over them.
    const auto start = steady::now();
    int served_count = 0;
    for (int i = 0; i < 12; ++i) {
        socket_fd s(connect_from("127.0.0.4", d.addresses()[1]));
        served_count += served(s.get()) ? 1 : 0;
    }
    const double elapsed = seconds_since(start);
    INFO(served_count << " served in " << elapsed << " s");
    CHECK(served_count >= 2);
    CHECK(served_count <= 2 + static_cast<int>(2 * elapsed) + 1);
    if (elapsed < 5) {
        CHECK(served_count < 12);
    }
}

namespace {

// HAProxy 2.6 in mode tcp on `listener`, a socket this test bound: HAProxy
// takes it over as fd@N, so its port is known before it starts and clients
// may connect at once (the backlog holds them). `bind_options` and
// `server_options` go on its frontend's bind and its one server's line.
class haproxy {
public:
    haproxy(const loopback_socket& listener, const std::string& bind_options, const std::string& server,
            const std::string& server_options)
        : _conf("haproxy.cfg", "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
                               "  timeout server 30s\nfrontend f\n  bind fd@" +
                                   std::to_string(listener.fd()) + " " + bind_options +
                                   "\n  default_backend b\nbackend b\n  server s " + server + " " + server_options +
                                   "\n") {
        REQUIRE(fcntl(listener.fd(), F_SETFD, 0) == 0);  // inherited across exec
        _process = std::make_unique<daemon_process>(std::vector<std::string>{"-db", "-f", _conf.path()},
                                                    std::map<std::string, std::string>{}, find_program("haproxy"));
        REQUIRE(fcntl(listener.fd(), F_SETFD, FD_CLOEXEC) == 0);
    }
    ~haproxy() {
        _process->signal(SIGTERM);
        (void)_process->wait(generous);
    }
    daemon_process& process() { return *_process; }

private:
    temp_file _conf;
    std::unique_ptr<daemon_process> _process;
};

}  // namespace

TEST_CASE("HAProxy in front sends v1 and v2; shardd accepts both and logs HAProxy's client",
          "[proxy][proxy-protocol]") {
    const std::string send = GENERATE(std::string("send-proxy"), std::string("send-proxy-v2"));
    INFO(send);
    echo_daemon d(accept_proxy_config());
    loopback_socket front(64);
    haproxy h(front, "", d.addresses()[0], send);
    socket_fd c(connect_to(addr(front.port())));
    const std::string data = pattern(100'000, 3);
    CHECK(echo_check(c.get(), data) == "");
    const std::uint16_t port = local_port(c.get());
    CHECK(close_cleanly(c.get()));
    // shardd's access log names the client HAProxy saw, not HAProxy.
    INFO(d.process().stderr_text() << "\nhaproxy: " << h.process().stderr_text());
    CHECK(d.process().wait_for_output("Z e 127.0.0.1:" + std::to_string(port) + " ", generous));
}

TEST_CASE("shardd sends v1 and v2 to an HAProxy accept-proxy frontend, which passes the client on",
          "[proxy][proxy-protocol]") {
    const std::string version = GENERATE(std::string("v1"), std::string("v2"));
    INFO(version);
    loopback_socket server(16);
    loopback_socket front(64);
    // HAProxy takes shardd's header and sends its own (v2) to our server:
    // the client address survives two hops.
    haproxy h(front, "accept-proxy", addr(server.port()), "send-proxy-v2");
    echo_daemon proxy(echo_config("[[listener]]\nname = \"p\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"proxy\"\n"
                                  "upstream = \"u\"\n[[upstream]]\nname = \"u\"\nproxy_protocol = \"" +
                                      version + "\"\nservers = [\"" + addr(front.port()) + "\"]\n",
                                  cpus_key()));
    socket_fd client(proxy.connect());
    REQUIRE(send_all(client.get(), "hello"));
    socket_fd upstream(accept_one(server));
    REQUIRE(upstream.get() >= 0);
    INFO("haproxy: " << h.process().stderr_text());
    const seen_header hdr = read_header(upstream.get());
    CHECK(hdr.family == "TCP4");
    CHECK(hdr.source == "127.0.0.1");
    CHECK(hdr.source_port == local_port(client.get()));
    CHECK(hdr.destination_port == port_of(proxy.addresses()[0]));
    CHECK(recv_exact(upstream.get(), 5) == "hello");
    REQUIRE(send_all(upstream.get(), "world"));
    CHECK(recv_exact(client.get(), 5) == "world");
}
