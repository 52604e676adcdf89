// The admin endpoint through the real shardd binary over loopback: every
// path, /metrics read back by a real Prometheus parser (Debian's
// python3-prometheus-client), keep-alive and pipelining, the refusals
// (400, 404, 405, 413, 431), /readyz while draining, the connection limit.

#include "tests/support/echo_daemon.hh"
#include "tests/support/echo_peers.hh"
#include "tests/support/proxy_peers.hh"

#include "reactor/cpu_set.hh"

#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <poll.h>
#include <regex>
#include <sys/socket.h>

using namespace shardd::test;

namespace {

// shardd with an echo listener and the admin endpoint, both on fresh ports.
struct admin_daemon {
    std::unique_ptr<echo_daemon> d;
    std::string admin;  // "127.0.0.1:PORT"

    explicit admin_daemon(const std::string& runtime_extra = "") {
        d = std::make_unique<echo_daemon>(
            echo_config("[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"e\"\nlisten = [\"127.0.0.1:0\"]\n"
                        "mode = \"echo\"\n",
                        cpus_key() + runtime_extra));
        std::smatch m;
        const std::string& log = d->process().stderr_text();
        static const std::regex line(R"(admin endpoint: listening on (\S+))");
        REQUIRE(std::regex_search(log, m, line));
        admin = m[1].str();
    }
};

struct http_response {
    int status = 0;
    std::string head;  // status line and fields
    std::string body;
};

// Reads one response from `fd` (its Content-Length tells where it ends);
// status 0 if the connection ended first.
http_response read_response(int fd, bool head_request = false) {
    http_response r;
    std::string in;
    char buf[65536];
    const auto deadline = steady::now() + generous;
    std::size_t need = std::string::npos;
    while (true) {
        const auto end = in.find("\r\n\r\n");
        if (end != std::string::npos && need == std::string::npos) {
            r.head = in.substr(0, end + 2);
            static const std::regex length(R"(Content-Length: (\d+))");
            std::smatch m;
            REQUIRE(std::regex_search(r.head, m, length));
            need = end + 4 + (head_request ? 0 : std::stoul(m[1].str()));
        }
        if (need != std::string::npos && in.size() >= need) {
            r.body = in.substr(r.head.size() + 2, need - r.head.size() - 2);
            r.status = std::stoi(r.head.substr(9, 3));
            // Callers send one request per read_response(); pipelined
            // answers are read whole with read_to_end().
            return r;
        }
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, ms_left(deadline)) != 1) {
            return r;
        }
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            return r;
        }
        in.append(buf, static_cast<std::size_t>(n));
    }
}

http_response request(const std::string& address, const std::string& text, bool head_request = false) {
    socket_fd c(connect_to(address));
    REQUIRE(send_all(c.get(), text));
    return read_response(c.get(), head_request);
}

http_response get(const std::string& address, const std::string& path) {
    return request(address, "GET " + path + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
}

// The samples of a /metrics body as "name{sorted labels} value" lines, read
// by prometheus_client's parser (which also rejects a malformed body).
std::string parsed_samples(const std::string& body) {
    temp_file f("metrics.txt", body);
    const std::string script = "import sys\n"
                               "from prometheus_client.parser import text_string_to_metric_families\n"
                               "for fam in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
                               "    assert fam.documentation, fam.name\n"
                               "    for s in fam.samples:\n"
                               "        labels = ','.join(k + '=' + v for k, v in sorted(s.labels.items()))\n"
                               "        print(fam.type, s.name + '{' + labels + '}', s.value)\n";
    const run_result r = run_program("/usr/bin/python3", {"-c", script, f.path()});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    return r.out;
}

// The backend shardd runs on in this test's environment: io_uring, which
// the suite needs, unless the run asks for epoll with SHARDD_BACKEND.
std::string expected_backend() {
    const char* env = std::getenv("SHARDD_BACKEND");
    return env && std::string(env) == "epoll" ? "epoll" : "io_uring";
}

double sample_value(const std::string& samples, const std::string& name_and_labels) {
    const auto at = samples.find(" " + name_and_labels + " ");
    REQUIRE(at != std::string::npos);
    const auto start = at + name_and_labels.size() + 2;
    return std::stod(samples.substr(start, samples.find('\n', start) - start));
}

}  // namespace

TEST_CASE("/metrics: a real Prometheus parser reads it, and the counters follow the traffic", "[admin]") {
    admin_daemon a;
    for (int i = 0; i < 5; ++i) {
        socket_fd c(a.d->connect());
        REQUIRE(echo_check(c.get(), pattern(1000, static_cast<std::uint64_t>(i))) == "");
        REQUIRE(close_cleanly(c.get()));
    }
    const http_response r = get(a.admin, "/metrics");
    REQUIRE(r.status == 200);
    CHECK_THAT(r.head, Catch::Contains("Content-Type: text/plain; version=0.0.4"));
    const std::string samples = parsed_samples(r.body);
    INFO(samples);
    // The parser drops the _total suffix from a counter family's name, not
    // from its samples.
    CHECK(sample_value(samples, "shardd_connections_accepted_total{shard=0}") == 5);
    CHECK(sample_value(samples, "shardd_listener_connections_accepted_total{listener=e,shard=0}") == 5);
    CHECK(sample_value(samples, "shardd_listener_connections_closed_total{listener=e,shard=0}") == 5);
    CHECK(sample_value(samples, "shardd_listener_connections_refused_total{listener=e,shard=0}") == 0);
    CHECK(sample_value(samples, "shardd_listener_connections_active{listener=e}") == 0);
    CHECK(sample_value(samples, "shardd_received_bytes_total{shard=0}") == 5000);
    CHECK(sample_value(samples, "shardd_sent_bytes_total{shard=0}") == 5000);
    CHECK(sample_value(samples, "shardd_shard_up{shard=0}") == 1);
    CHECK(sample_value(samples, "shardd_ready{}") == 1);
    CHECK(sample_value(samples, "shardd_open_fds{}") > 5);
    CHECK(sample_value(samples, "shardd_resident_memory_bytes{}") > 1e6);
    CHECK_THAT(samples, Catch::Contains("counter shardd_connections_closed_total{shard=0} 5.0"));
    // The backend the shards run on.
    CHECK_THAT(samples, Catch::Contains("gauge shardd_build_info{backend=" + expected_backend() + ",liburing="));
}

TEST_CASE("/metrics: the reactor's internals per shard, ring and task queue", "[admin]") {
    admin_daemon a("\nrecv_buffers = 64");
    for (int i = 0; i < 3; ++i) {
        socket_fd c(a.d->connect());
        REQUIRE(echo_check(c.get(), pattern(100000, static_cast<std::uint64_t>(i))) == "");
        REQUIRE(close_cleanly(c.get()));
    }
    // Shards publish these with their heartbeat, every 100 ms: scrape until
    // the echoes show (a bounded wait on the daemon's own numbers).
    std::string samples;
    const auto deadline = steady::now() + default_timeout;
    do {
        samples = parsed_samples(get(a.admin, "/metrics").body);
    } while (sample_value(samples, "shardd_task_queue_tasks_run_total{queue=default,shard=0}") < 10 &&
             steady::now() < deadline);
    INFO(samples);
    CHECK(sample_value(samples, "shardd_io_uring_enter_total{ring=main,shard=0}") > 0);
    CHECK(sample_value(samples, "shardd_io_uring_cqes_total{ring=main,shard=0}") >= 6);  // 3 accepts, 3 closes
    CHECK(sample_value(samples, "shardd_io_uring_enter_total{ring=poll,shard=0}") >= 0);
    CHECK(sample_value(samples, "shardd_io_uring_cqes_total{ring=latency,shard=0}") >= 0);
    CHECK(sample_value(samples, "shardd_task_queue_tasks_run_total{queue=default,shard=0}") >= 10);
    CHECK(sample_value(samples, "shardd_task_queue_slices_total{queue=default,shard=0}") > 0);
    CHECK(sample_value(samples, "shardd_task_queue_runtime_seconds_total{queue=default,shard=0}") > 0);
    CHECK(sample_value(samples, "shardd_task_queue_preemptions_total{queue=default,shard=0}") >= 0);
    // An idle shard sleeps in the kernel between beats.
    CHECK(sample_value(samples, "shardd_reactor_parks_total{shard=0}") > 0);
    CHECK(sample_value(samples, "shardd_reactor_stalls_total{shard=0}") >= 0);
    CHECK(sample_value(samples, "shardd_reactor_eventfd_wakeups_total{shard=0}") >= 0);
    CHECK(sample_value(samples, "shardd_recv_buffers{shard=0}") == 64);
    const double free_buffers = sample_value(samples, "shardd_recv_buffers_free{shard=0}");
    CHECK(free_buffers > 0);
    CHECK(free_buffers <= 64);
    CHECK_THAT(samples, Catch::Contains("counter shardd_io_uring_enter_total{ring=latency,shard=0}"));

    const http_response stats = get(a.admin, "/stats");
    REQUIRE(stats.status == 200);
    CHECK_THAT(stats.body, Catch::Contains("\"reactor\":{\"rings\":{\"main\":{\"enters\":"));
    CHECK_THAT(stats.body, Catch::Contains("\"queues\":[{\"name\":\"default\",\"runtime_seconds\":"));
}

TEST_CASE("/metrics and /stats: every upstream server's counters, health and open connections", "[admin][proxy]") {
    auto backend = start_echo();
    loopback_socket nobody(-1);  // bound, not listening: connects are refused
    const std::string good = backend->addresses()[0];
    const std::string bad = addr(nobody.port());
    std::unique_ptr<echo_daemon> d = std::make_unique<echo_daemon>(echo_config(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\n"
        "upstream = \"u\"\n[[upstream]]\nname = \"u\"\nbalance = \"round_robin\"\nservers = " +
            quoted_list({good, bad}) + "\nretries = 1\nmax_fails = 1\nfail_timeout = \"1h\"\n",
        cpus_key()));
    std::smatch m;
    const std::string log = d->process().stderr_text();
    REQUIRE(std::regex_search(log, m, std::regex(R"(admin endpoint: listening on (\S+))")));
    const std::string admin = m[1].str();
    // Four clients: one try goes to the refusing server, which is then down
    // for an hour, and its client is retried on the good one.
    for (int i = 0; i < 4; ++i) {
        socket_fd c(d->connect(0));
        REQUIRE(echo_check(c.get(), pattern(1000, static_cast<std::uint64_t>(i))) == "");
        REQUIRE(close_cleanly(c.get()));
    }
    const std::string samples = parsed_samples(get(admin, "/metrics").body);
    INFO(samples);
    const std::string g = "server=" + good + ",shard=0,upstream=u}";
    const std::string b = "server=" + bad + ",shard=0,upstream=u}";
    CHECK(sample_value(samples, "shardd_upstream_connections_total{" + g) == 4);
    CHECK(sample_value(samples, "shardd_upstream_sent_bytes_total{" + g) == 4000);
    CHECK(sample_value(samples, "shardd_upstream_received_bytes_total{" + g) == 4000);
    CHECK(sample_value(samples, "shardd_upstream_connect_refused_total{" + b) == 1);
    CHECK(sample_value(samples, "shardd_upstream_connections_total{" + b) == 0);
    CHECK(sample_value(samples, "shardd_upstream_retries_total{shard=0,upstream=u}") == 1);
    CHECK(sample_value(samples, "shardd_upstream_no_server_total{shard=0,upstream=u}") == 0);
    CHECK(sample_value(samples, "shardd_upstream_server_up{server=" + good + ",upstream=u}") == 1);
    CHECK(sample_value(samples, "shardd_upstream_server_up{server=" + bad + ",upstream=u}") == 0);
    CHECK(sample_value(samples, "shardd_upstream_server_active{server=" + good + ",upstream=u}") == 0);
    CHECK(sample_value(samples, "shardd_upstream_queue_waiting{shard=0,upstream=u}") == 0);

    const http_response stats = get(admin, "/stats");
    CHECK_THAT(stats.body, Catch::Contains("\"upstreams\":[{\"name\":\"u\",\"retries\":1,"));
    CHECK_THAT(stats.body, Catch::Contains("{\"address\":\"" + bad +
                                           "\",\"up\":false,\"active\":0,"
                                           "\"connections\":0,\"connect_refused\":1,"));
}

TEST_CASE("the admin thread is named and keeps off the shard's CPU when it can", "[admin]") {
    admin_daemon a;  // one shard, on the first allowed CPU
    const auto allowed = shardd::allowed_cpus();
    REQUIRE(allowed.has_value());
    std::string affinity;
    for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(a.d->pid()) + "/task")) {
        std::ifstream comm(t.path() / "comm");
        std::string name;
        std::getline(comm, name);
        if (name == "shardd/admin") {
            std::ifstream status(t.path() / "status");
            for (std::string line; std::getline(status, line);) {
                if (line.rfind("Cpus_allowed_list:", 0) == 0) {
                    affinity = line.substr(line.find_first_not_of(" \t", 18));
                }
            }
        }
    }
    REQUIRE(!affinity.empty());
    const std::string shard_cpu = std::to_string(allowed->cpus()[0]);
    if (allowed->size() > 1) {
        CHECK(shardd::cpu_set(std::vector<unsigned>(allowed->cpus().begin() + 1, allowed->cpus().end())).to_string() ==
              affinity);
    } else {
        CHECK(affinity == shard_cpu);
    }
}

TEST_CASE("/healthz, /readyz, /stats, /config and /", "[admin]") {
    admin_daemon a;
    http_response r = get(a.admin, "/healthz");
    CHECK(r.status == 200);
    CHECK(r.body == "ok\n");
    r = get(a.admin, "/readyz");
    CHECK(r.status == 200);
    CHECK(r.body == "ready\n");
    r = get(a.admin, "/stats");
    CHECK(r.status == 200);
    CHECK_THAT(r.head, Catch::Contains("Content-Type: application/json"));
    CHECK_THAT(r.body, Catch::StartsWith("{\"version\":") && Catch::Contains("\"shards\":[{\"shard\":0,\"up\":true"));
    CHECK_THAT(r.body, Catch::Contains(",\"backend\":\"" + expected_backend() + "\","));
    CHECK_THAT(r.body, Catch::Contains("\"listeners\":[{\"name\":\"e\",\"active\":0,\"accepted\":0,"));
    {
        // Valid JSON, by a real parser.
        temp_file body("stats.json", r.body);
        const run_result p =
            run_program("/usr/bin/python3", {"-c", "import json,sys; json.load(open(sys.argv[1]))", body.path()});
        CHECK(p.exit_code == 0);
    }
    r = get(a.admin, "/config");
    CHECK(r.status == 200);
    CHECK_THAT(r.body, Catch::Contains("[admin]") && Catch::Contains("name = \"e\""));
    r = get(a.admin, "/?x=1");
    CHECK(r.status == 200);
    CHECK_THAT(r.body, Catch::Contains("/metrics"));
}

TEST_CASE("keep-alive and pipelining: several answers on one connection", "[admin]") {
    admin_daemon a;
    socket_fd c(connect_to(a.admin));
    REQUIRE(send_all(c.get(), "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"));
    CHECK(read_response(c.get()).status == 200);
    REQUIRE(send_all(c.get(), "HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n"));
    const http_response head = read_response(c.get(), true);
    CHECK(head.status == 200);
    CHECK(head.body.empty());
    // Two requests in one segment, then one more: three answers, in order;
    // the last asks to close, and the endpoint does.
    REQUIRE(send_all(c.get(), "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                              "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    std::string all;
    CHECK(read_to_end(c.get(), all) == 0);
    const auto first = all.find("HTTP/1.1 200 OK");
    const auto second = all.find("HTTP/1.1 404 Not Found");
    const auto third = all.find("HTTP/1.1 200 OK", first + 1);
    CHECK(first == 0);
    CHECK(second != std::string::npos);
    CHECK(third != std::string::npos);
    CHECK(second < third);
    CHECK_THAT(all, Catch::EndsWith("ready\n"));
}

TEST_CASE("refusals: 400, 404, 405, 413, 431; the connection closes after a parse error", "[admin]") {
    admin_daemon a;
    CHECK(get(a.admin, "/nope").status == 404);
    http_response r = request(a.admin, "POST /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    CHECK(r.status == 405);
    CHECK_THAT(r.head, Catch::Contains("Allow: GET, HEAD"));
    CHECK(request(a.admin, "GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello").status == 413);
    CHECK(request(a.admin, "GET /metrics HTTP/1.1\r\n\r\n").status == 400);  // no Host
    CHECK(request(a.admin, "GARBAGE\r\n\r\n").status == 400);
    CHECK(request(a.admin, "GET / HTTP/1.1\r\nHost: t\r\nX: " + std::string(9000, 'x') + "\r\n\r\n").status == 431);
    // After the refusal, the endpoint closes.
    socket_fd c(connect_to(a.admin));
    REQUIRE(send_all(c.get(), "BAD REQUEST LINE HERE\r\n\r\n"));
    std::string all;
    CHECK(read_to_end(c.get(), all) == 0);
    CHECK_THAT(all, Catch::StartsWith("HTTP/1.1 400 Bad Request"));
    // And it still serves.
    CHECK(get(a.admin, "/healthz").status == 200);
}

TEST_CASE("/readyz says draining after SIGTERM while connections finish", "[admin][drain]") {
    admin_daemon a("shutdown_timeout = \"20s\"\n");
    socket_fd open(a.d->connect());
    REQUIRE(echo_check(open.get(), "x") == "");
    a.d->process().signal(SIGTERM);
    // The drain waits for `open`; meanwhile the endpoint answers 503.
    http_response r;
    const auto deadline = steady::now() + generous;
    do {
        r = get(a.admin, "/readyz");
    } while (r.status == 200 && steady::now() < deadline);
    CHECK(r.status == 503);
    CHECK(r.body == "draining\n");
    CHECK(get(a.admin, "/healthz").status == 200);
    REQUIRE(close_cleanly(open.get()));
    const auto done = a.d->process().wait(generous);
    REQUIRE(done);
    CHECK(done->exit_code == 0);
}

TEST_CASE("more admin connections than the limit: the one over it gets 503", "[admin]") {
    admin_daemon a;
    std::vector<socket_fd> idle;
    for (int i = 0; i < 64; ++i) {
        idle.emplace_back(connect_to(a.admin));
    }
    // The endpoint accepts in order: by the time it reaches this one, the
    // 64 before it are its connections.
    socket_fd over(connect_to(a.admin));
    std::string all;
    CHECK(read_to_end(over.get(), all) == 0);
    CHECK_THAT(all, Catch::StartsWith("HTTP/1.1 503"));
    // One of the 64 leaves; a new client is served again.
    idle.pop_back();
    http_response r;
    const auto deadline = steady::now() + generous;
    do {
        r = get(a.admin, "/healthz");
    } while (r.status != 200 && steady::now() < deadline);
    CHECK(r.status == 200);
}

TEST_CASE("an admin address already in use stops the start with a reason", "[admin]") {
    loopback_socket taken(16);
    temp_file cfg("shardd.toml", echo_config("[admin]\nlisten = \"" + addr(taken.port()) +
                                                 "\"\n\n[[listener]]\nname = \"e\"\nlisten = [\"127.0.0.1:0\"]\n"
                                                 "mode = \"echo\"\n",
                                             cpus_key()));
    const run_result r = run_shardd({"-c", cfg.path()});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("admin endpoint: cannot listen on " + addr(taken.port())));
}
