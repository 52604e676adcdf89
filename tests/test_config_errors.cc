// Bad configs: each problem is one line naming FILE:LINE:COL, the key path,
// what was expected and what was found. Every case asserts the exact
// position and path.
#include "config/load.hh"

#include <catch2/catch.hpp>

using namespace shardd;
using namespace shardd::config;

namespace {

const cpu_set two_cpus({0, 1});

// A valid listener, for cases about other sections. 4 lines.
const std::string listener = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n";

struct bad_case {
    const char* what;
    std::string toml;
    std::string where;     // "LINE:COL: path" — exact
    std::string expected;  // a part of the message
};

std::vector<bad_case> cases() {
    return {
        {"unknown top-level table", listener + "[runtim]\ncpus = \"0\"\n", "5:2: runtim",
         "unknown key; did you mean \"runtime\"?"},
        {"unknown runtime key", "[runtime]\nio_memroy = \"4MiB\"\n" + listener, "2:1: runtime.io_memroy",
         "did you mean \"io_memory\"?"},
        {"unknown key, nothing close", "[log]\ncolour = true\n" + listener, "2:1: log.colour",
         "expected one of: level, format"},
        {"unknown listener key", listener + "timeout = \"1s\"\n", "5:1: listener[0].timeout", "unknown key"},
        {"wrong type: string for integer", "[runtime]\nring_entries = \"1024\"\n" + listener,
         "2:16: runtime.ring_entries", "expected a power of two from 8 to 32768, found \"1024\""},
        {"ring entries not a power of two", "[runtime]\nring_entries = 1000\n" + listener, "2:16: runtime.ring_entries",
         "found integer 1000"},
        {"ring entries too large", "[runtime]\nring_entries = 65536\n" + listener, "2:16: runtime.ring_entries",
         "from 8 to 32768"},
        {"bad duration unit", "[runtime]\nspin_before_park = \"50 parsecs\"\n" + listener,
         "2:20: runtime.spin_before_park", "expected a duration like \"10s\""},
        {"duration as a bare number", "[runtime]\nshutdown_timeout = 10\n" + listener, "2:20: runtime.shutdown_timeout",
         "expected a duration string like \"10s\" (units ns, us, ms, s, m, h), found integer 10"},
        {"duration out of range", "[runtime]\npreempt_timer = \"5s\"\n" + listener, "2:17: runtime.preempt_timer",
         "expected a duration from 10us to 1s, found \"5s\""},
        {"bad size unit", "[runtime]\nio_memory = \"4MB\"\n" + listener, "2:13: runtime.io_memory",
         "did you mean \"MiB\"?"},
        {"size too small", "[runtime]\nio_memory = \"1KiB\"\n" + listener, "2:13: runtime.io_memory",
         "expected a size from 64KiB to 1GiB"},
        {"negative size", "[runtime]\nio_memory = -1\n" + listener, "2:13: runtime.io_memory",
         "expected a size, found integer -1"},
        {"malformed CPU list", "[runtime]\ncpus = \"0-\"\n" + listener, "2:8: runtime.cpus",
         "expected \"all\" or a CPU list like \"0-3,6\""},
        {"CPU outside the allowed set", "[runtime]\ncpus = \"0-7\"\n" + listener, "2:8: runtime.cpus",
         "CPU 2 is not available to this process (allowed: 0-1)"},
        {"CPU list of the wrong type", "[runtime]\ncpus = 4\n" + listener, "2:8: runtime.cpus", "found integer 4"},
        {"buffer count not a power of two", "[runtime]\nrecv_buffers = 1000\n" + listener, "2:16: runtime.recv_buffers",
         "expected a power of two from 1 to 32768"},
        {"unknown backend", "[runtime]\nbackend = \"kqueue\"\n" + listener, "2:11: runtime.backend",
         "expected \"auto\", \"io_uring\" or \"epoll\", found \"kqueue\""},
        {"backend typo", "[runtime]\nbackend = \"epol\"\n" + listener, "2:11: runtime.backend",
         "did you mean \"epoll\"?"},
        {"backend of the wrong type", "[runtime]\nbackend = true\n" + listener, "2:11: runtime.backend",
         "expected \"auto\", \"io_uring\" or \"epoll\", found boolean true"},
        {"bad log level", "[log]\nlevel = \"verbose\"\n" + listener, "2:9: log.level",
         "expected \"trace\", \"debug\", \"info\", \"warn\" or \"error\", found \"verbose\""},
        {"log level typo", "[log]\nlevel = \"inof\"\n" + listener, "2:9: log.level", "did you mean \"info\"?"},
        {"bad log format", "[log]\nformat = \"xml\"\n" + listener, "2:10: log.format", "expected \"text\" or \"json\""},
        {"section of the wrong type", "runtime = 5\n" + listener, "1:11: runtime",
         "expected a table written [runtime], found integer 5"},
        {"listener as a single table", "[listener]\nname = \"l\"\n", "1:1: listener",
         "expected an array of tables written [[listener]], found a table"},
        {"no listener at all", "[log]\nlevel = \"info\"\n", "listener",
         "missing; expected at least one [[listener]] table"},
        {"listener without a name", "[[listener]]\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n",
         "1:1: listener[0].name", "missing; every [[listener]] needs a name"},
        {"listener name with a space", "[[listener]]\nname = \"my echo\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n",
         "2:8: listener[0].name", "letters, digits"},
        {"duplicate listener names", listener + listener, "6:8: listener[1].name",
         "duplicate listener name \"l\" (first defined at line 2)"},
        {"listener without listen", "[[listener]]\nname = \"l\"\nmode = \"echo\"\n", "1:1: listener[0].listen",
         "missing; expected at least one address"},
        {"empty listen array", "[[listener]]\nname = \"l\"\nlisten = []\nmode = \"echo\"\n", "3:10: listener[0].listen",
         "expected at least one address, found an empty array"},
        {"bad address", "[[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\", \"1.2.3:80\"]\nmode = \"echo\"\n",
         "3:26: listener[0].listen[1]", "expected an IPv4 address like \"127.0.0.1\""},
        {"port out of range", "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:70000\"\nmode = \"echo\"\n",
         "3:10: listener[0].listen", "expected a port from 0 to 65535 after ':', found \"127.0.0.1:70000\""},
        {"host name instead of address", "[[listener]]\nname = \"l\"\nlisten = [\"localhost:80\"]\nmode = \"echo\"\n",
         "3:11: listener[0].listen[0]", "host names are not resolved"},
        {"IPv6 without brackets", "[[listener]]\nname = \"l\"\nlisten = [\"::1:80\"]\nmode = \"echo\"\n",
         "3:11: listener[0].listen[0]", "put IPv6 addresses in brackets"},
        {"address listed twice",
         "[[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:80\", \"127.0.0.1:80\"]\nmode = \"echo\"\n",
         "3:27: listener[0].listen[1]", "address 127.0.0.1:80 is listed twice"},
        {"two listeners on one address",
         "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:80\"\nmode = \"echo\"\n"
         "[[listener]]\nname = \"b\"\nlisten = [\"127.0.0.1:80\"]\nmode = \"echo\"\n",
         "7:11: listener[1].listen[0]", "address 127.0.0.1:80 is already used by listener \"a\""},
        {"a wildcard overlapping another listener",
         "[[listener]]\nname = \"a\"\nlisten = \"0.0.0.0:80\"\nmode = \"echo\"\n"
         "[[listener]]\nname = \"b\"\nlisten = [\"[::1]:80\", \"127.0.0.1:80\"]\nmode = \"echo\"\n",
         "7:23: listener[1].listen[1]", "address 127.0.0.1:80 overlaps 0.0.0.0:80 by listener \"a\""},
        {"overlapping addresses in one listener",
         "[[listener]]\nname = \"l\"\nlisten = [\"[::]:80\", \"[::1]:80\"]\nmode = \"echo\"\n",
         "3:22: listener[0].listen[1]", "address [::1]:80 overlaps [::]:80"},
        {"a listener on the admin address",
         "[admin]\nlisten = \"127.0.0.1:9901\"\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:9901\"\nmode = "
         "\"echo\"\n",
         "5:10: listener[0].listen", "address 127.0.0.1:9901 is also admin.listen"},
        {"listener without mode", "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n", "1:1: listener[0].mode",
         "missing; expected \"echo\" or \"proxy\""},
        {"unknown mode", "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nmode = \"ecoh\"\n",
         "4:8: listener[0].mode", "did you mean \"echo\"?"},
        {"unknown protocol", listener + "protocol = \"http\"\n", "5:12: listener[0].protocol",
         "expected \"raw\" or \"sockperf\", found \"http\""},
        {"proxy without upstream", "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\n",
         "1:1: listener[0].upstream", "missing; a proxy listener needs the name of an [[upstream]]"},
        {"proxy to a missing upstream",
         "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"wbe\"\n"
         "[[upstream]]\nname = \"web\"\nservers = [\"127.0.0.1:1\"]\n",
         "5:12: listener[0].upstream", "found \"wbe\", which is not defined (did you mean \"web\"?)"},
        {"proxy with a protocol",
         "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"web\"\nprotocol = "
         "\"raw\"\n"
         "[[upstream]]\nname = \"web\"\nservers = [\"127.0.0.1:1\"]\n",
         "6:12: listener[0].protocol", "only echo listeners take a protocol"},
        {"echo with an upstream", listener + "upstream = \"web\"\n", "5:12: listener[0].upstream",
         "only proxy listeners take an upstream"},
        {"accept_proxy without proxy_trusted", listener + "accept_proxy = true\n", "5:16: listener[0].proxy_trusted",
         "missing; accept_proxy needs the addresses of the proxies allowed to send a header"},
        {"proxy_trusted empty", listener + "accept_proxy = true\nproxy_trusted = []\n",
         "6:17: listener[0].proxy_trusted", "is empty"},
        {"a CIDR with host bits", listener + "allow = [\"10.1.2.3/8\"]\n", "5:10: listener[0].allow[0]",
         "expected a network address (host bits zero), found \"10.1.2.3/8\"; did you mean \"10.0.0.0/8\"?"},
        {"a CIDR prefix too long", listener + "deny = \"::1/129\"\n", "5:8: listener[0].deny",
         "expected a prefix length from 0 to 128 after '/', found \"::1/129\""},
        {"a host name in a CIDR list", listener + "deny = [\"localhost\"]\n", "5:9: listener[0].deny[0]",
         "expected a CIDR block like \"10.0.0.0/8\""},
        {"an empty allow list", listener + "allow = []\n", "5:9: listener[0].allow", "would deny every source"},
        {"max_connections_per_source too large", listener + "max_connections_per_source = 70000\n",
         "5:30: listener[0].max_connections_per_source", "expected an integer from 0 to 65535"},
        {"unknown health_check key",
         "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"web\"\n"
         "[[upstream]]\nname = \"web\"\nservers = [\"127.0.0.1:1\"]\nhealth_check = { intervall = \"1s\" }\n",
         "9:18: upstream[0].health_check.intervall", "did you mean \"interval\"?"},
        {"health_check timeout above interval",
         "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"web\"\n"
         "[[upstream]]\nname = \"web\"\nservers = [\"127.0.0.1:1\"]\n"
         "health_check = { interval = \"1s\", timeout = \"2s\" }\n",
         "9:45: upstream[0].health_check.timeout", "expected at most health_check.interval (1s), found 2s"},
        {"health_check interval below the default timeout",
         "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"web\"\n"
         "[[upstream]]\nname = \"web\"\nservers = [\"127.0.0.1:1\"]\nhealth_check = { interval = \"500ms\" }\n",
         "9:29: upstream[0].health_check.interval",
         "expected at least the default timeout (1s), found 500ms; set health_check.timeout too"},
        {"health_check bad escape",
         "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"web\"\n"
         "[[upstream]]\nname = \"web\"\nservers = [\"127.0.0.1:1\"]\nhealth_check = { send = 'a\\x4' }\n",
         "9:25: upstream[0].health_check.send", "\\x needs two hex digits"},
        {"unknown proxy_protocol version",
         "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nmode = \"proxy\"\nupstream = \"web\"\n"
         "[[upstream]]\nname = \"web\"\nservers = [{ address = \"127.0.0.1:1\", proxy_protocol = \"v3\" }]\n",
         "8:56: upstream[0].servers[0].proxy_protocol", "expected \"none\", \"v1\" or \"v2\", found \"v3\""},
        {"max_connections zero", listener + "max_connections = 0\n", "5:19: listener[0].max_connections",
         "expected an integer from 1 to 10000000, found integer 0"},
        {"backlog too large", listener + "backlog = 100000\n", "5:11: listener[0].backlog", "from 1 to 65535"},
        {"nodelay as a string", listener + "nodelay = \"yes\"\n", "5:11: listener[0].nodelay",
         "expected true or false, found \"yes\""},
        {"splice as a number", listener + "splice = 1\n", "5:10: listener[0].splice",
         "expected true or false, found integer 1"},
        {"max_message below the sockperf header", listener + "max_message = 10\n", "5:15: listener[0].max_message",
         "expected a size from 14B to 64MiB, found integer 10"},
        {"max_pending below one receive buffer", listener + "max_pending = \"8KiB\"\n", "5:15: listener[0].max_pending",
         "expected at least runtime.recv_buffer_size (32KiB), found 8KiB"},
        {"idle_timeout as a float", listener + "idle_timeout = 1.5\n", "5:16: listener[0].idle_timeout",
         "found float 1.5"},
        // The idle sweep runs four times per timeout: "1us" would make it spin.
        {"idle_timeout too short to sweep", listener + "idle_timeout = \"1us\"\n", "5:16: listener[0].idle_timeout",
         "expected \"0s\" (off) or a duration from 10ms to 24h, found \"1us\""},
        {"idle_timeout just under the minimum", listener + "idle_timeout = \"9ms999us\"\n",
         "5:16: listener[0].idle_timeout", "expected \"0s\" (off) or a duration from 10ms to 24h"},
        {"idle_timeout too long", listener + "idle_timeout = \"25h\"\n", "5:16: listener[0].idle_timeout",
         "expected \"0s\" (off) or a duration from 10ms to 24h, found \"25h\""},
        {"upstream without servers", listener + "[[upstream]]\nname = \"u\"\n", "5:1: upstream[0].servers",
         "missing; expected at least one address"},
        {"upstream server with port 0", listener + "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:0\"]\n",
         "7:12: upstream[0].servers[0]", "expected an address to connect to (not a wildcard, port not 0)"},
        {"upstream server wildcard", listener + "[[upstream]]\nname = \"u\"\nservers = [\"0.0.0.0:80\"]\n",
         "7:12: upstream[0].servers[0]", "not a wildcard"},
        {"duplicate upstream names",
         listener + "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n[[upstream]]\nname = \"u\"\nservers = "
                    "[\"127.0.0.1:2\"]\n",
         "9:8: upstream[1].name", "duplicate upstream name \"u\" (first defined at line 6)"},
        {"unknown balance policy",
         listener + "[[upstream]]\nname = \"u\"\nbalance = \"roundrobin\"\nservers = [\"127.0.0.1:1\"]\n",
         "7:11: upstream[0].balance", "did you mean \"round_robin\"?"},
        {"connect_timeout zero",
         listener + "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\nconnect_timeout = \"0s\"\n",
         "8:19: upstream[0].connect_timeout", "expected a duration from 1ms to 1h"},
        {"server table without an address", listener + "[[upstream]]\nname = \"u\"\nservers = [{ weight = 2 }]\n",
         "7:12: upstream[0].servers[0].address", "missing; a server table needs an address"},
        {"server weight negative",
         listener + "[[upstream]]\nname = \"u\"\nservers = [{ address = \"127.0.0.1:1\", weight = -1 }]\n",
         "7:48: upstream[0].servers[0].weight", "expected an integer from 0 to 256, found integer -1"},
        {"server weight too large",
         listener +
             "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:2\", { address = \"127.0.0.1:1\", weight = 300 }]\n",
         "7:63: upstream[0].servers[1].weight", "found integer 300"},
        {"server key misspelt",
         listener + "[[upstream]]\nname = \"u\"\nservers = [{ address = \"127.0.0.1:1\", wieght = 2 }]\n",
         "7:39: upstream[0].servers[0].wieght", "did you mean \"weight\"?"},
        {"server listed twice",
         listener +
             "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:1\", { address = \"127.0.0.1:1\", weight = 2 }]\n",
         "7:27: upstream[0].servers[1]", "server 127.0.0.1:1 is listed twice; use weight"},
        {"server of the wrong type", listener + "[[upstream]]\nname = \"u\"\nservers = [80]\n",
         "7:12: upstream[0].servers[0]", "expected an address like \"10.0.0.1:80\" or a table like"},
        {"retries too many", listener + "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\nretries = 17\n",
         "8:11: upstream[0].retries", "expected an integer from 0 to 16, found integer 17"},
        {"fail_timeout zero",
         listener + "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\nfail_timeout = \"0s\"\n",
         "8:16: upstream[0].fail_timeout", "expected a duration from 1s to 1h"},
        {"queue_timeout negative",
         listener + "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\nqueue_timeout = -1\n",
         "8:17: upstream[0].queue_timeout", "expected a duration string"},
        {"half_close_timeout too short", listener + "half_close_timeout = \"1ms\"\n",
         "5:22: listener[0].half_close_timeout", "expected \"0s\" (off) or a duration from 10ms to 24h"},
        {"admin address malformed", "[admin]\nlisten = \"127.0.0.1\"\n" + listener, "2:10: admin.listen",
         "missing \":PORT\""},
        {"access log to a relative path", "[access_log]\npath = \"access.log\"\n" + listener, "2:8: access_log.path",
         "expected \"stderr\" or an absolute file path, found \"access.log\""},
        {"access log format unknown", "[access_log]\npath = \"stderr\"\nformat = \"xml\"\n" + listener,
         "3:10: access_log.format", "expected \"text\" or \"json\", found \"xml\""},
        {"access log key unknown", "[access_log]\nfile = \"/var/log/x\"\n" + listener, "2:1: access_log.file",
         "unknown key"},
        {"TOML syntax error", listener + "name = \n", "5:8", "TOML syntax error"},
        {"TOML duplicate key", "[log]\nlevel = \"info\"\nlevel = \"debug\"\n" + listener, "3:9", "TOML syntax error"},
    };
}

}  // namespace

TEST_CASE("every bad config is reported at its line, column and key", "[config][errors]") {
    const auto all = cases();
    REQUIRE(all.size() >= 25);
    for (const auto& c : all) {
        INFO(c.what << "\n--- config ---\n" << c.toml);
        auto r = load_string(c.toml, "bad.toml", {}, two_cpus);
        CHECK_FALSE(r.ok());
        auto err = std::find_if(r.diagnostics.begin(), r.diagnostics.end(),
                                [](const diagnostic& d) { return d.level == severity::error; });
        REQUIRE(err != r.diagnostics.end());
        const std::string first = err->to_string();
        INFO("got: " << first);
        // "LINE:COL: path", or just "path" for problems that have no place.
        const bool positioned = std::isdigit(static_cast<unsigned char>(c.where[0]));
        CHECK_THAT(first, Catch::StartsWith(positioned ? "bad.toml:" + c.where : "bad.toml: " + c.where + ": "));
        CHECK_THAT(first, Catch::Contains(c.expected));
        // One problem, one line.
        CHECK(first.find('\n') == std::string::npos);
    }
}

TEST_CASE("every problem is reported, in file order", "[config][errors]") {
    const std::string text = "[runtime]\n"
                             "ring_entries = 3\n"
                             "io_memory = \"lots\"\n"
                             "[log]\n"
                             "level = \"loud\"\n"
                             "[[listener]]\n"
                             "name = \"x\"\n"
                             "listen = \"nowhere\"\n"
                             "mode = \"echo\"\n"
                             "bogus = 1\n";
    auto r = load_string(text, "many.toml", {}, two_cpus);
    REQUIRE_FALSE(r.ok());
    std::vector<std::string> lines;
    for (const auto& d : r.diagnostics) {
        lines.push_back(d.file + ":" + std::to_string(d.line) + ":" + std::to_string(d.column) + ": " + d.path);
    }
    CHECK(lines == std::vector<std::string>{
                       "many.toml:2:16: runtime.ring_entries",
                       "many.toml:3:13: runtime.io_memory",
                       "many.toml:5:9: log.level",
                       "many.toml:8:10: listener[0].listen",
                       "many.toml:10:1: listener[0].bogus",
                   });
}

TEST_CASE("bad command-line overrides are command-line errors", "[config][errors]") {
    overrides over;
    over.cpus = "0-";
    over.log_level = "chatty";
    auto r = load_string(listener, "ok.toml", over, two_cpus);
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.diagnostics.size() == 2);
    for (const auto& d : r.diagnostics) {
        CHECK(d.from == origin::command_line);
    }
    CHECK_THAT(r.diagnostics[0].to_string(), Catch::StartsWith("command line: --cpus: expected \"all\" or a CPU list"));
    CHECK_THAT(r.diagnostics[1].to_string(),
               Catch::StartsWith("command line: --log-level: expected \"trace\", \"debug\", \"info\", \"warn\" or "
                                 "\"error\", found \"chatty\""));
    over = {};
    over.cpus = "3";
    r = load_string(listener, "ok.toml", over, two_cpus);
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].to_string() ==
          "command line: --cpus: CPU 3 is not available to this process (allowed: 0-1)");
}

TEST_CASE("a malformed file value is still an error when --cpus overrides it", "[config][errors]") {
    overrides over;
    over.cpus = "0";
    auto r = load_string("[runtime]\ncpus = \"zero\"\n" + listener, "f.toml", over, two_cpus);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.diagnostics[0].to_string(), Catch::StartsWith("f.toml:2:8: runtime.cpus: expected"));
}

namespace {

// The control bytes in `line`, as "\\xNN" each; "" when there are none.
std::string control_bytes(const std::string& line) {
    std::string out;
    for (unsigned char c : line) {
        if (c < 0x20 || c == 0x7f) {
            const char hex[] = "0123456789abcdef";
            out += std::string("\\x") + hex[c >> 4] + hex[c & 0xf];
        }
    }
    return out;
}

}  // namespace

TEST_CASE("control characters from the file come out of diagnostics escaped", "[config][errors]") {
    struct escape_case {
        const char* what;
        std::string toml;
        std::string expected;  // a part of the one diagnostic, escaped
    };
    for (const auto& c : {
             // A terminal would turn the rest of the line red.
             escape_case{"an ESC sequence in a string value", listener + "protocol = \"\\u001b[31m\"\n",
                         "5:12: listener[0].protocol: expected \"raw\" or \"sockperf\", found \"\\x1b[31m\""},
             // An xterm title-setting sequence, ended by BEL.
             escape_case{"an OSC sequence in a name",
                         "[[listener]]\nname = \"\\u001b]0;owned\\u0007\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n",
                         "2:8: listener[0].name: expected a name of 1 to 64 letters, digits, '_', '-' or '.', found "
                         "\"\\x1b]0;owned\\x07\""},
             escape_case{"a 0x01 byte in a quoted key", listener + "\"a\\u0001b\" = 1\n",
                         "5:1: listener[0].a\\x01b: unknown key"},
             escape_case{"tab, newline, carriage return and DEL", listener + "protocol = \"a\\tb\\nc\\rd\\u007f\"\n",
                         "found \"a\\tb\\nc\\rd\\x7f\""},
             // CSI as one C1 character, which 8-bit terminals obey like ESC [.
             escape_case{"a C1 control in a value", listener + "protocol = \"\\u009b31m\"\n", "found \"\\u009b31m\""},
         }) {
        INFO(c.what << "\n--- config ---\n" << c.toml);
        auto r = load_string(c.toml, "bad.toml", {}, two_cpus);
        REQUIRE_FALSE(r.ok());
        REQUIRE(r.diagnostics.size() == 1);
        const std::string line = r.diagnostics[0].to_string();
        INFO("got: " << line);
        CHECK_THAT(line, Catch::StartsWith("bad.toml:"));
        CHECK_THAT(line, Catch::Contains(c.expected));
        CHECK(control_bytes(line) == "");
    }
}

TEST_CASE("a raw control byte in the file is not echoed either", "[config][errors]") {
    // TOML forbids it outside strings and toml++ says so; the byte it
    // quotes back comes out escaped.
    auto r = load_string(listener + "a\x01"
                                    "b = 1\n",
                         "bad.toml", {}, two_cpus);
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    const std::string line = r.diagnostics[0].to_string();
    INFO("got: " << line);
    CHECK_THAT(line, Catch::StartsWith("bad.toml:5:2: TOML syntax error"));
    CHECK(control_bytes(line) == "");
}

TEST_CASE("diagnostics keep UTF-8 text and escape bytes that are not UTF-8", "[config][errors]") {
    // The file name comes from the command line, where any bytes may be.
    auto r = load_string(listener + "protocol = \"\u00e9cho\"\n", "bad\xff\xc3.toml", {}, two_cpus);
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].to_string() ==
          "bad\\xff\\xc3.toml:5:12: listener[0].protocol: expected \"raw\" or \"sockperf\", found \"\u00e9cho\"");
}
