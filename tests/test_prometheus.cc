// The /metrics writer on its own: the format's escapes, names refused, and
// a body read back by a real parser (Debian's python3-prometheus-client).

#include "server/admin/prometheus.hh"
#include "tests/support/process.hh"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <stdexcept>

using namespace shardd::server::admin;
using namespace shardd::test;

TEST_CASE("families and samples in the text format", "[admin][metrics]") {
    exposition e;
    e.family("shardd_connections_accepted_total", "counter", "Connections accepted.");
    e.sample("shardd_connections_accepted_total", {{"shard", "0"}, {"listener", "echo"}}, std::uint64_t{42});
    e.sample("shardd_connections_accepted_total", {{"shard", "1"}, {"listener", "echo"}}, std::uint64_t{7});
    e.family("shardd_start_time_seconds", "gauge", "Start time of the process since the epoch.");
    e.sample("shardd_start_time_seconds", {}, 1700000000.5);
    CHECK(e.text() == "# HELP shardd_connections_accepted_total Connections accepted.\n"
                      "# TYPE shardd_connections_accepted_total counter\n"
                      "shardd_connections_accepted_total{shard=\"0\",listener=\"echo\"} 42\n"
                      "shardd_connections_accepted_total{shard=\"1\",listener=\"echo\"} 7\n"
                      "# HELP shardd_start_time_seconds Start time of the process since the epoch.\n"
                      "# TYPE shardd_start_time_seconds gauge\n"
                      "shardd_start_time_seconds 1700000000.5\n");
}

TEST_CASE("escapes: label values and help texts", "[admin][metrics]") {
    CHECK(escape_label_value(R"(a\b"c)"
                             "\n") == R"(a\\b\"c\n)");
    CHECK(escape_help("a\\b\"c\n") == "a\\\\b\"c\\n");
    exposition e;
    e.sample("x", {{"v", "+Inf"}}, std::numeric_limits<double>::infinity());
    e.sample("x", {}, -std::numeric_limits<double>::infinity());
    e.sample("x", {}, std::nan(""));
    CHECK(e.text() == "x{v=\"+Inf\"} +Inf\nx -Inf\nx NaN\n");
}

TEST_CASE("names the format does not allow are refused", "[admin][metrics]") {
    exposition e;
    CHECK(is_metric_name("shardd_up"));
    CHECK(is_metric_name("a:b_c9"));
    CHECK_FALSE(is_metric_name("9lives"));
    CHECK_FALSE(is_metric_name("a-b"));
    CHECK_FALSE(is_metric_name(""));
    CHECK(is_label_name("shard"));
    CHECK_FALSE(is_label_name("__name__"));
    CHECK_FALSE(is_label_name("a:b"));
    CHECK_THROWS_AS(e.family("bad-name", "counter", "x"), std::invalid_argument);
    CHECK_THROWS_AS(e.family("ok", "countr", "x"), std::invalid_argument);
    CHECK_THROWS_AS(e.sample("ok", {{"bad label", "v"}}, std::uint64_t{1}), std::invalid_argument);
}

TEST_CASE("a real Prometheus parser reads the body back", "[admin][metrics]") {
    exposition e;
    e.family("shardd_upstream_connections_total", "counter", "Connections made to a server.\nSecond line \\ here.");
    const std::string nasty = "we\"ird\\name\nwith newline";
    e.sample("shardd_upstream_connections_total", {{"upstream", nasty}, {"server", "[::1]:80"}}, std::uint64_t{3});
    e.family("shardd_buffer_ring_free", "gauge", "Free receive buffers.");
    e.sample("shardd_buffer_ring_free", {{"shard", "0"}}, std::uint64_t{1024});
    // The parser prints what it read; the test compares it with what went in.
    const std::string script =
        "import sys\n"
        "from prometheus_client.parser import text_string_to_metric_families\n"
        "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
        "    for s in f.samples:\n"
        "        print(f.name, f.type, repr(f.documentation), sorted(s.labels.items()), s.value)\n";
    temp_file body("metrics.txt", e.text());
    // Debian's python3, where Debian's package puts the module (not whatever
    // python3 comes first on PATH).
    const run_result r = run_program("/usr/bin/python3", {"-c", script, body.path()});
    INFO(r.err);
    if (r.exit_code != 0 && r.err.find("No module named 'prometheus_client'") != std::string::npos) {
        FAIL("python3-prometheus-client is not installed: .ci/install-deps installs it");
    }
    REQUIRE(r.exit_code == 0);
    CHECK(r.out == "shardd_upstream_connections counter 'Connections made to a server.\\nSecond line \\\\ here.' "
                   "[('server', '[::1]:80'), ('upstream', 'we\"ird\\\\name\\nwith newline')] 3.0\n"
                   "shardd_buffer_ring_free gauge 'Free receive buffers.' [('shard', '0')] 1024.0\n");
}
