// Loading good configs: every key, the defaults, overrides and --print-config.
#include "config/load.hh"
#include "tests/support/process.hh"

#include <catch2/catch.hpp>

using namespace shardd;
using namespace shardd::config;
using namespace std::chrono_literals;

namespace {

using config_t = shardd::config::config;
const cpu_set two_cpus({0, 1});

config_t load_ok(const std::string& text, const overrides& over = {}, const cpu_set& allowed = two_cpus) {
    auto r = load_string(text, "test.toml", over, allowed);
    for (const auto& d : r.diagnostics) {
        UNSCOPED_INFO(d.to_string());
    }
    REQUIRE(r.ok());
    return *r.cfg;
}

const std::string minimal = R"(
[[listener]]
name = "echo"
listen = "127.0.0.1:0"
mode = "echo"
)";

const std::string every_key = R"(
[runtime]
cpus = "1"
backend = "epoll"
io_memory = "8MiB"
ring_entries = 256
spin_before_park = "50us"
preempt_timer = "2ms"
stall_threshold = "0s"
shutdown_timeout = "1m30s"
recv_buffer_size = "4KiB"
recv_buffers = 2048

[log]
level = "debug"
format = "json"

[admin]
listen = "[::1]:9901"

[[listener]]
name = "e1"
listen = ["0.0.0.0:7007", "[::]:7007"]
mode = "echo"
protocol = "sockperf"
max_connections = 10
idle_timeout = "0s"
backlog = 128
nodelay = false
splice = false
max_pending = "1MiB"
max_message = "1KiB"

[[listener]]
name = "p1"
listen = ["127.0.0.1:8080"]
mode = "proxy"
upstream = "web"
half_close_timeout = "5s"
accept_proxy = true
proxy_trusted = ["10.0.0.0/8", "::1"]
proxy_timeout = "2s"
allow = ["127.0.0.0/8", "::/0"]
deny = ["127.0.0.3"]
max_connections_per_source = 8
connection_rate_per_source = 50

[[upstream]]
name = "web"
balance = "least_conn"
servers = ["127.0.0.1:18080", { address = "[::1]:18081", weight = 3, max_connections = 50 },
           { address = "127.0.0.1:18082", backup = true, proxy_protocol = "none" },
           { address = "127.0.0.1:18083", weight = 0, drain = true }]
proxy_protocol = "v2"
health_check = { interval = "500ms", timeout = "100ms", rise = 1, fall = 2, send = 'PING\r\n\x00\\', expect = "+PONG" }
connect_timeout = "250ms"
retries = 4
max_fails = 3
fail_timeout = "30s"
max_queue = 64
queue_timeout = "1s"
)";

}  // namespace

TEST_CASE("a minimal config gets the documented defaults", "[config]") {
    config_t c = load_ok(minimal);
    CHECK(c.runtime.all_cpus);
    CHECK(c.runtime.backend == io_backend::automatic);
    CHECK(c.runtime.io_memory == 4 * MiB);
    CHECK(c.runtime.ring_entries == 1024);
    CHECK(c.runtime.spin_before_park == 0ns);
    CHECK(c.runtime.preempt_timer == 500us);
    CHECK(c.runtime.stall_threshold == 50ms);
    CHECK(c.runtime.shutdown_timeout == 10s);
    CHECK(c.runtime.recv_buffer_size == 32 * KiB);
    CHECK(c.runtime.recv_buffers == 512);
    CHECK(c.log.level == log_level::info);
    CHECK(c.log.format == log_format::text);
    CHECK_FALSE(c.admin.listen.has_value());
    REQUIRE(c.listeners.size() == 1);
    const auto& l = c.listeners[0];
    CHECK(l.name == "echo");
    REQUIRE(l.listen.size() == 1);
    CHECK(l.listen[0].to_string() == "127.0.0.1:0");
    CHECK(l.mode == listener_mode::echo);
    CHECK(l.protocol == echo_protocol::raw);
    CHECK(l.max_connections == 100000);
    CHECK(l.idle_timeout == 300s);
    CHECK(l.backlog == 4096);
    CHECK(l.nodelay);
    CHECK(l.splice);
    CHECK(l.max_pending == 256 * KiB);
    CHECK(l.max_message == 64 * KiB);
    CHECK(c.upstreams.empty());
    CHECK(effective_cpus(c, two_cpus) == two_cpus);
}

TEST_CASE("every key is read", "[config]") {
    config_t c = load_ok(every_key);
    CHECK_FALSE(c.runtime.all_cpus);
    CHECK(c.runtime.cpus.cpus() == std::vector<unsigned>{1});
    CHECK(effective_cpus(c, two_cpus).cpus() == std::vector<unsigned>{1});
    CHECK(c.runtime.backend == io_backend::epoll);
    CHECK(c.runtime.io_memory == 8 * MiB);
    CHECK(c.runtime.ring_entries == 256);
    CHECK(c.runtime.spin_before_park == 50us);
    CHECK(c.runtime.preempt_timer == 2ms);
    CHECK(c.runtime.stall_threshold == 0s);
    CHECK(c.runtime.shutdown_timeout == 90s);
    CHECK(c.runtime.recv_buffer_size == 4 * KiB);
    CHECK(c.runtime.recv_buffers == 2048);
    CHECK(c.log.level == log_level::debug);
    CHECK(c.log.format == log_format::json);
    REQUIRE(c.admin.listen.has_value());
    CHECK(c.admin.listen->to_string() == "[::1]:9901");

    REQUIRE(c.listeners.size() == 2);
    const auto& e = c.listeners[0];
    CHECK(e.name == "e1");
    REQUIRE(e.listen.size() == 2);
    CHECK(e.listen[0].to_string() == "0.0.0.0:7007");
    CHECK(e.listen[1].to_string() == "[::]:7007");
    CHECK(e.mode == listener_mode::echo);
    CHECK(e.protocol == echo_protocol::sockperf);
    CHECK(e.max_connections == 10);
    CHECK(e.idle_timeout == 0s);
    CHECK(e.backlog == 128);
    CHECK_FALSE(e.nodelay);
    CHECK_FALSE(e.splice);
    CHECK(e.max_pending == 1 * MiB);
    CHECK(e.max_message == 1 * KiB);
    const auto& p = c.listeners[1];
    CHECK(p.mode == listener_mode::proxy);
    CHECK(p.upstream == "web");

    REQUIRE(c.upstreams.size() == 1);
    const auto* up = c.find_upstream("web");
    REQUIRE(up != nullptr);
    CHECK(up->balance == balance_policy::least_conn);
    REQUIRE(up->servers.size() == 4);
    CHECK(up->servers[0].address.to_string() == "127.0.0.1:18080");
    CHECK(up->servers[0].weight == 1);
    CHECK(up->servers[0].max_connections == 0);
    CHECK(up->servers[1].address.to_string() == "[::1]:18081");
    CHECK(up->servers[1].weight == 3);
    CHECK(up->servers[1].max_connections == 50);
    CHECK(up->connect_timeout == 250ms);
    CHECK(up->retries == 4);
    CHECK(up->max_fails == 3);
    CHECK(up->fail_timeout == 30s);
    CHECK(up->max_queue == 64);
    CHECK(up->queue_timeout == 1s);
    CHECK(p.half_close_timeout == 5s);
    CHECK(c.find_upstream("nope") == nullptr);
}

TEST_CASE("an upstream gets the documented defaults", "[config]") {
    config_t c = load_ok(minimal + "[[upstream]]\nname = \"u\"\nservers = \"127.0.0.1:1\"\n");
    const auto& up = c.upstreams[0];
    CHECK(up.balance == balance_policy::round_robin);
    REQUIRE(up.servers.size() == 1);
    CHECK(up.servers[0].weight == 1);
    CHECK(up.servers[0].max_connections == 0);
    CHECK(up.connect_timeout == 2s);
    CHECK(up.retries == 2);
    CHECK(up.max_fails == 1);
    CHECK(up.fail_timeout == 10s);
    CHECK(up.max_queue == 1024);
    CHECK(up.queue_timeout == 5s);
    CHECK(c.listeners[0].half_close_timeout == 60s);
}

TEST_CASE("every balance policy and log level is accepted", "[config]") {
    for (const char* policy : {"round_robin", "least_conn", "random_two", "source_hash"}) {
        config_t c = load_ok(minimal + "[[upstream]]\nname = \"u\"\nbalance = \"" + policy +
                             "\"\nservers = [\"127.0.0.1:1\"]\n");
        CHECK(to_string(c.upstreams[0].balance) == policy);
    }
    for (const char* level : {"trace", "debug", "info", "warn", "error"}) {
        config_t c = load_ok("[log]\nlevel = \"" + std::string(level) + "\"\n" + minimal);
        CHECK(to_string(c.log.level) == level);
    }
}

TEST_CASE("every backend is accepted and prints as written", "[config]") {
    for (const char* backend : {"auto", "io_uring", "epoll"}) {
        config_t c = load_ok("[runtime]\nbackend = \"" + std::string(backend) + "\"\n" + minimal);
        CHECK(to_string(c.runtime.backend) == backend);
        CHECK_THAT(to_toml(c), Catch::Contains("\nbackend = \"" + std::string(backend) + "\"\n"));
    }
}

TEST_CASE("sizes may be plain integers of bytes", "[config]") {
    config_t c = load_ok("[runtime]\nio_memory = 1048576\n" + minimal);
    CHECK(c.runtime.io_memory == 1 * MiB);
}

TEST_CASE("command-line overrides win over the file", "[config]") {
    overrides over;
    over.cpus = "0";
    over.log_level = "warn";
    config_t c = load_ok(every_key, over);
    CHECK(c.runtime.cpus.cpus() == std::vector<unsigned>{0});
    CHECK(c.log.level == log_level::warn);
    over.cpus = "all";
    c = load_ok(every_key, over);
    CHECK(c.runtime.all_cpus);
    CHECK(effective_cpus(c, two_cpus) == two_cpus);
}

TEST_CASE("--cpus replaces a file value outside the allowed set", "[config]") {
    overrides over;
    over.cpus = "0";
    config_t c = load_ok("[runtime]\ncpus = \"5\"\n" + minimal, over);
    CHECK(c.runtime.cpus.cpus() == std::vector<unsigned>{0});
}

TEST_CASE("the proxy controls' keys", "[config]") {
    config_t c = load_ok(every_key);
    const auto& p = c.listeners[1];
    CHECK(p.accept_proxy);
    REQUIRE(p.proxy_trusted.size() == 2);
    CHECK(p.proxy_trusted[1].to_string() == "::1/128");
    CHECK(p.proxy_timeout == 2s);
    CHECK(p.max_connections_per_source == 8);
    CHECK(p.connection_rate_per_source == 50);
    const auto& up = c.upstreams[0];
    CHECK(up.proxy_protocol == proxy_protocol_version::v2);
    CHECK(up.health_check.enabled);
    CHECK(up.health_check.interval == 500ms);
    CHECK(up.health_check.fall == 2);
    CHECK(up.health_check.send == std::string("PING\r\n\0\\", 8));
    CHECK(up.health_check.expect == "+PONG");
    REQUIRE(up.servers.size() == 4);
    CHECK(up.servers[2].backup);
    CHECK(up.servers[2].proxy_protocol == proxy_protocol_version::none);
    CHECK(up.servers[3].drain);
    CHECK(up.servers[3].weight == 0);
    CHECK_FALSE(up.servers[0].proxy_protocol.has_value());
    // The defaults: no checks, no headers, no limits.
    config_t m = load_ok(minimal);
    CHECK_FALSE(m.listeners[0].accept_proxy);
    CHECK(m.listeners[0].allow.empty());
    CHECK(m.listeners[0].max_connections_per_source == 0);
}

TEST_CASE("CIDR blocks match their own addresses only", "[config]") {
    auto addr = [](const char* s) { return *socket_address::parse(s); };
    const cidr v4 = *cidr::parse("10.0.0.0/8");
    CHECK(v4.contains(addr("10.255.1.2:80")));
    CHECK_FALSE(v4.contains(addr("11.0.0.1:80")));
    CHECK(v4.contains(addr("[::ffff:10.1.2.3]:80")));  // IPv4-mapped
    CHECK_FALSE(v4.contains(addr("[::1]:80")));
    const cidr v6 = *cidr::parse("2001:db8::/33");
    CHECK(v6.contains(addr("[2001:db8:7fff::1]:1")));
    CHECK_FALSE(v6.contains(addr("[2001:db8:8000::1]:1")));
    CHECK_FALSE(v6.contains(addr("32.1.13.184:1")));
    CHECK(cidr::parse("0.0.0.0/0")->contains(addr("1.2.3.4:5")));
    CHECK(cidr::parse("::/0")->contains(addr("[::1]:5")));
    CHECK(cidr::parse("127.0.0.2")->contains(addr("127.0.0.2:9")));
    CHECK_FALSE(cidr::parse("127.0.0.2")->contains(addr("127.0.0.3:9")));
    CHECK_FALSE(cidr::parse("10.0.0.0/08").has_value());
}

TEST_CASE("the printed config loads back to the same config", "[config]") {
    for (const std::string& text : {minimal, every_key}) {
        config_t c = load_ok(text);
        const std::string printed = to_toml(c);
        config_t again = load_ok(printed);
        CHECK(to_toml(again) == printed);
    }
}

TEST_CASE("an unused upstream is a warning, not an error", "[config]") {
    auto r =
        load_string(minimal + "[[upstream]]\nname = \"spare\"\nservers = [\"127.0.0.1:1\"]\n", "w.toml", {}, two_cpus);
    REQUIRE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].level == severity::warning);
    CHECK(r.diagnostics[0].to_string() ==
          "w.toml:7:8: warning: upstream[0].name: upstream \"spare\" is not used by any listener");
}

TEST_CASE("an upstream with every server drained is a warning", "[config]") {
    auto r = load_string("[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"u\"\n"
                         "[[upstream]]\nname = \"u\"\nservers = [{ address = \"127.0.0.1:1\", drain = true }, "
                         "{ address = \"127.0.0.1:2\", weight = 0 }]\n",
                         "w.toml", {}, two_cpus);
    REQUIRE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].to_string() ==
          "w.toml:8:11: warning: upstream[0].servers: every server is drained or of weight 0: clients of upstream "
          "\"u\" will be closed (no_server)");
}

TEST_CASE("IPv4 and IPv6 wildcards on one port do not overlap", "[config]") {
    config_t c = load_ok("[[listener]]\nname = \"l\"\nlisten = [\"0.0.0.0:7\", \"[::]:7\"]\nmode = \"echo\"\n");
    CHECK(c.listeners[0].listen.size() == 2);
}

TEST_CASE("max_message outside a sockperf listener is a warning", "[config]") {
    auto r = load_string(minimal + "max_message = \"1KiB\"\n", "w.toml", {}, two_cpus);
    REQUIRE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].to_string() ==
          "w.toml:6:15: warning: listener[0].max_message: has no effect: only sockperf listeners parse messages");
}

TEST_CASE("half_close_timeout outside a proxy listener is a warning", "[config]") {
    auto r = load_string(minimal + "half_close_timeout = \"1s\"\n", "w.toml", {}, two_cpus);
    REQUIRE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].to_string() == "w.toml:6:22: warning: listener[0].half_close_timeout: has no effect: only "
                                          "proxy listeners relay a half-closed connection");
}

TEST_CASE("the bundled example config is valid", "[config]") {
    auto r = load_file(test::source_path("config/shardd.example.toml"), {}, two_cpus);
    for (const auto& d : r.diagnostics) {
        UNSCOPED_INFO(d.to_string());
    }
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    CHECK(r.cfg->listeners.size() == 3);
}

TEST_CASE("a missing file is reported with its name", "[config]") {
    auto r = load_file("/nonexistent/shardd.toml", {}, two_cpus);
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].to_string() == "/nonexistent/shardd.toml: cannot open: No such file or directory");
}

TEST_CASE("idle_timeout takes 0s (off) and anything from 10ms", "[config]") {
    CHECK(load_ok(minimal + "idle_timeout = \"0s\"\n").listeners[0].idle_timeout == 0s);
    CHECK(load_ok(minimal + "idle_timeout = \"10ms\"\n").listeners[0].idle_timeout == 10ms);
    CHECK(load_ok(minimal + "idle_timeout = \"24h\"\n").listeners[0].idle_timeout == 24h);
}

TEST_CASE("a receive pool under 4 rounds of max_pending is a warning at the key that made it small", "[config]") {
    const std::string tail = " per connection and round; the receive pool runtime.recv_buffers x recv_buffer_size is ";
    const std::string end = " per shard, less than 4 rounds: connections will wait for buffers under load";
    struct pool_case {
        const char* what;
        std::string toml;
        std::string line;  // the one diagnostic
    };
    for (const auto& c : {
             // On the listener's max_pending when it sets one.
             pool_case{"max_pending set", minimal + "max_pending = \"8MiB\"\n",
                       "w.toml:6:15: warning: listener[0].max_pending: 8MiB" + tail + "512 x 32KiB = 16MiB" + end},
             // Else on the runtime key that shrank the pool.
             pool_case{"few buffers", "[runtime]\nrecv_buffers = 8\n" + minimal,
                       "w.toml:2:16: warning: listener[0].max_pending: 256KiB (the default)" + tail +
                           "8 x 32KiB = 256KiB" + end},
             pool_case{"small buffers", "[runtime]\nrecv_buffer_size = \"64B\"\n" + minimal,
                       "w.toml:2:20: warning: listener[0].max_pending: 256KiB (the default)" + tail +
                           "512 x 64B = 32KiB" + end},
             // More buffers than the default, but tiny ones: the size is what shrank it.
             pool_case{"many small buffers", "[runtime]\nrecv_buffers = 4096\nrecv_buffer_size = \"64B\"\n" + minimal,
                       "w.toml:3:20: warning: listener[0].max_pending: 256KiB (the default)" + tail +
                           "4096 x 64B = 256KiB" + end},
         }) {
        INFO(c.what);
        auto r = load_string(c.toml, "w.toml", {}, two_cpus);
        REQUIRE(r.ok());
        REQUIRE(r.diagnostics.size() == 1);
        CHECK(r.diagnostics[0].level == severity::warning);
        CHECK(r.diagnostics[0].to_string() == c.line);
    }
}

TEST_CASE("the pool warning names each listener short of 4 rounds, and no other", "[config]") {
    // 32 x 32KiB = 1MiB: exactly 4 rounds of 256KiB is enough, 257KiB is not.
    const std::string text = "[runtime]\nrecv_buffers = 32\n"
                             "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n"
                             "[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n"
                             "max_pending = \"257KiB\"\n";
    auto r = load_string(text, "w.toml", {}, two_cpus);
    REQUIRE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK_THAT(r.diagnostics[0].to_string(),
               Catch::StartsWith("w.toml:11:15: warning: listener[1].max_pending: 257KiB per connection and round; "
                                 "the receive pool runtime.recv_buffers x recv_buffer_size is 32 x 32KiB = 1MiB"));
}

TEST_CASE("the defaults draw no warning", "[config]") {
    auto r = load_string(minimal, "w.toml", {}, two_cpus);
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
}
