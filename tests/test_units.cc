// Sizes, durations and CPU lists: the value syntaxes of the config.
#include "config/units.hh"

#include <catch2/catch.hpp>

using namespace shardd;
using namespace shardd::config;
using namespace std::chrono_literals;

TEST_CASE("sizes take binary units and plain bytes", "[units]") {
    CHECK(*parse_size("0") == 0);
    CHECK(*parse_size("512") == 512);
    CHECK(*parse_size("512B") == 512);
    CHECK(*parse_size("64KiB") == 64 * 1024);
    CHECK(*parse_size("64 KiB") == 64 * 1024);
    CHECK(*parse_size(" 4MiB ") == 4u << 20);
    CHECK(*parse_size("2GiB") == 2ull << 30);
    CHECK(*parse_size("1TiB") == 1ull << 40);
}

TEST_CASE("sizes refuse ambiguous and malformed units", "[units]") {
    for (const char* bad : {"", "MiB", "4 parsecs", "-1", "1.5MiB", "4mib", "0x10", "4MiB4"}) {
        INFO(bad);
        CHECK_FALSE(parse_size(bad).has_value());
    }
    auto kb = parse_size("4KB");
    REQUIRE_FALSE(kb.has_value());
    CHECK_THAT(kb.error(), Catch::Contains("did you mean \"KiB\""));
    auto mb = parse_size("4M");
    REQUIRE_FALSE(mb.has_value());
    CHECK_THAT(mb.error(), Catch::Contains("did you mean \"MiB\""));
}

TEST_CASE("sizes that overflow 64 bits are refused", "[units]") {
    CHECK_FALSE(parse_size("99999999999999999999").has_value());
    auto big = parse_size("17000000000TiB");
    REQUIRE_FALSE(big.has_value());
    CHECK_THAT(big.error(), Catch::Contains("too large"));
}

TEST_CASE("sizes print with the largest exact unit", "[units]") {
    CHECK(format_size(0) == "0B");
    CHECK(format_size(1000) == "1000B");
    CHECK(format_size(1024) == "1KiB");
    CHECK(format_size(1536) == "1536B");
    CHECK(format_size(4u << 20) == "4MiB");
    CHECK(format_size(3ull << 30) == "3GiB");
    for (std::uint64_t v : {1ull, 64ull, 4096ull, 65536ull, 16ull << 20, 5ull << 40}) {
        CHECK(*parse_size(format_size(v)) == v);
    }
}

TEST_CASE("durations take ns, us, ms, s, m, h and compounds", "[units]") {
    CHECK(*parse_duration("0s") == 0ns);
    CHECK(*parse_duration("250ns") == 250ns);
    CHECK(*parse_duration("50us") == 50us);
    CHECK(*parse_duration("20ms") == 20ms);
    CHECK(*parse_duration("10s") == 10s);
    CHECK(*parse_duration("5m") == 5min);
    CHECK(*parse_duration("2h") == 2h);
    CHECK(*parse_duration("1m30s") == 90s);
    CHECK(*parse_duration("1h 2m 3s") == 3723s);
    CHECK(*parse_duration("1s500ms") == 1500ms);
}

TEST_CASE("durations refuse bare numbers and unknown units", "[units]") {
    for (const char* bad : {"", "10", "10 seconds", "s", "1.5s", "-1s", "10sec", "1d", "5 m s"}) {
        INFO(bad);
        auto r = parse_duration(bad);
        REQUIRE_FALSE(r.has_value());
        CHECK_THAT(r.error(), Catch::Contains("expected a duration"));
    }
    CHECK_THAT(parse_duration("999999999999h").error(), Catch::Contains("too long"));
}

TEST_CASE("durations print exactly and read back", "[units]") {
    CHECK(format_duration(0ns) == "0s");
    CHECK(format_duration(50us) == "50us");
    CHECK(format_duration(1500us) == "1500us");
    CHECK(format_duration(20ms) == "20ms");
    CHECK(format_duration(90s) == "1m30s");
    CHECK(format_duration(3723s) == "1h2m3s");
    CHECK(format_duration(300s) == "5m");
    for (auto d : {duration(1), duration(1500us), duration(2s), duration(86400s), duration(1s + 1ns)}) {
        CHECK(*parse_duration(format_duration(d)) == d);
    }
}

TEST_CASE("CPU lists use the kernel's list format", "[units]") {
    CHECK(parse_cpu_list("0")->cpus() == std::vector<unsigned>{0});
    CHECK(parse_cpu_list("0-3")->cpus() == std::vector<unsigned>{0, 1, 2, 3});
    CHECK(parse_cpu_list("0-3,6")->cpus() == std::vector<unsigned>{0, 1, 2, 3, 6});
    CHECK(parse_cpu_list(" 6, 0 - 1 ")->cpus() == std::vector<unsigned>{0, 1, 6});
    CHECK(parse_cpu_list("1,1,0-1")->cpus() == std::vector<unsigned>{0, 1});
    CHECK(parse_cpu_list("0-3,6")->to_string() == "0-3,6");
}

TEST_CASE("malformed CPU lists are refused", "[units]") {
    for (const char* bad : {"", ",", "0,", ",0", "a", "0-", "-1", "0--1", "1-2-3", "0;1", "all"}) {
        INFO(bad);
        CHECK_FALSE(parse_cpu_list(bad).has_value());
    }
    CHECK_THAT(parse_cpu_list("3-1").error(), Catch::Contains("backwards"));
    CHECK_THAT(parse_cpu_list("0-70000").error(), Catch::Contains("largest CPU number"));
}
