// The per-source table (server/source_table.hh) on its own: the count and
// rate limits per address, slots reclaimed only when idle and refilled, the
// table_full answer, and threads admitting and releasing the same few
// sources without ever counting one past its limit. Times are passed in, so
// nothing sleeps.

#include "server/source_table.hh"

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

using namespace shardd;
using namespace shardd::server;

namespace {

socket_address addr(const std::string& text) {
    auto a = socket_address::parse(text);
    REQUIRE(a);
    return *a;
}

// A distinct IPv4 source per n.
socket_address nth(int n) {
    return addr("10." + std::to_string(n / 65536 % 256) + "." + std::to_string(n / 256 % 256) + "." +
                std::to_string(n % 256) + ":1000");
}

}  // namespace

TEST_CASE("the count limit is per source address, whatever the port") {
    source_table t(1024);
    auto a = t.admit(addr("192.0.2.1:1000"), 2, 0, 0);
    auto b = t.admit(addr("192.0.2.1:2000"), 2, 0, 0);
    REQUIRE(a.result == admission::admitted);
    REQUIRE(b.result == admission::admitted);
    CHECK(a.ticket);
    CHECK(b.ticket);
    CHECK(t.admit(addr("192.0.2.1:3000"), 2, 0, 0).result == admission::over_connections);
    CHECK(t.connections(addr("192.0.2.1:9")) == 2);

    SECTION("two sources are counted apart") {
        auto c = t.admit(addr("192.0.2.2:1000"), 2, 0, 0);
        CHECK(c.result == admission::admitted);
        CHECK(t.connections(addr("192.0.2.2:1")) == 1);
        CHECK(t.connections(addr("192.0.2.1:1")) == 2);
    }
    SECTION("a released ticket lets the next one in") {
        a.ticket.reset();
        CHECK(!a.ticket);
        a.ticket.reset();  // twice: still one release
        CHECK(t.connections(addr("192.0.2.1:1")) == 1);
        auto c = t.admit(addr("192.0.2.1:3000"), 2, 0, 0);
        CHECK(c.result == admission::admitted);
        CHECK(t.admit(addr("192.0.2.1:4000"), 2, 0, 0).result == admission::over_connections);
    }
    SECTION("a moved ticket releases once, when its last owner goes") {
        {
            source_ticket moved = std::move(a.ticket);
            CHECK(!a.ticket);
            CHECK(t.connections(addr("192.0.2.1:1")) == 2);
            source_ticket assigned;
            assigned = std::move(moved);
            CHECK(t.connections(addr("192.0.2.1:1")) == 2);
        }
        CHECK(t.connections(addr("192.0.2.1:1")) == 1);
    }
    SECTION("a ticket assigned over another releases that one") {
        a.ticket = std::move(b.ticket);
        CHECK(t.connections(addr("192.0.2.1:1")) == 1);
    }
}

TEST_CASE("IPv4 and IPv6 sources are keys of their own; IPv4-mapped IPv6 is IPv4") {
    source_table t(1024);
    auto v4 = t.admit(addr("192.0.2.1:1"), 1, 0, 0);
    auto v6 = t.admit(addr("[2001:db8::1]:1"), 1, 0, 0);
    auto v6b = t.admit(addr("[2001:db8::2]:1"), 1, 0, 0);
    CHECK(v4.result == admission::admitted);
    CHECK(v6.result == admission::admitted);
    CHECK(v6b.result == admission::admitted);
    CHECK(t.admit(addr("[2001:db8::1]:2"), 1, 0, 0).result == admission::over_connections);
    CHECK(t.admit(addr("[::ffff:192.0.2.1]:2"), 1, 0, 0).result == admission::over_connections);
    CHECK(t.connections(addr("[::ffff:192.0.2.1]:3")) == 1);
    CHECK(t.connections(addr("[2001:db8::3]:1")) == 0);
}

TEST_CASE("no count limit still counts, up to the 16-bit field") {
    source_table t(16);
    std::vector<source_ticket> held;
    for (std::uint32_t i = 0; i < source_table::max_connections_limit; ++i) {
        auto a = t.admit(addr("192.0.2.1:1"), 0, 0, 0);
        REQUIRE(a.result == admission::admitted);
        held.push_back(std::move(a.ticket));
    }
    CHECK(t.connections(addr("192.0.2.1:1")) == 65535);
    CHECK(t.admit(addr("192.0.2.1:1"), 0, 0, 0).result == admission::over_connections);
    CHECK(t.admit(addr("192.0.2.1:1"), 100000, 0, 0).result == admission::over_connections);
    held.clear();
    CHECK(t.connections(addr("192.0.2.1:1")) == 0);
}

TEST_CASE("an address neither IPv4 nor IPv6 is admitted uncounted") {
    source_table t(16);
    auto a = t.admit(socket_address(), 1, 1, 0);
    CHECK(a.result == admission::admitted);
    CHECK(!a.ticket);
    CHECK(t.admit(socket_address(), 1, 1, 0).result == admission::admitted);
}

TEST_CASE("the rate is a token bucket holding one second's worth") {
    source_table t(1024);
    const auto src = addr("198.51.100.7:1");
    std::int64_t now = 5000;
    // The burst: `rate` at once.
    for (int i = 0; i < 10; ++i) {
        REQUIRE(t.admit(src, 0, 10, now).result == admission::admitted);
    }
    CHECK(t.admit(src, 0, 10, now).result == admission::over_rate);
    CHECK(t.admit(src, 0, 10, now + 99).result == admission::over_rate);
    // One token per 100 ms at 10 a second, thousandths carried over.
    CHECK(t.admit(src, 0, 10, now + 100).result == admission::admitted);
    CHECK(t.admit(src, 0, 10, now + 100).result == admission::over_rate);
    CHECK(t.admit(src, 0, 10, now + 150).result == admission::over_rate);
    CHECK(t.admit(src, 0, 10, now + 200).result == admission::admitted);
    CHECK(t.admit(src, 0, 10, now + 250).result == admission::over_rate);
    CHECK(t.admit(src, 0, 10, now + 299).result == admission::over_rate);
    CHECK(t.admit(src, 0, 10, now + 300).result == admission::admitted);
    // Refusals spent nothing; the tickets above were dropped at once, so
    // the count limit played no part.
    CHECK(t.connections(src) == 0);
    // Another source has its own bucket.
    CHECK(t.admit(addr("198.51.100.8:1"), 0, 10, now + 300).result == admission::admitted);
    // A full second refills the whole burst, no more.
    now += 300 + 5000;
    for (int i = 0; i < 10; ++i) {
        REQUIRE(t.admit(src, 0, 10, now).result == admission::admitted);
    }
    CHECK(t.admit(src, 0, 10, now).result == admission::over_rate);
}

TEST_CASE("a connection refused for its count spends no token; one refused for its rate gives back its count") {
    source_table t(1024);
    const auto src = addr("198.51.100.7:1");
    auto held = t.admit(src, 1, 2, 0);
    REQUIRE(held.result == admission::admitted);
    CHECK(t.admit(src, 1, 2, 0).result == admission::over_connections);
    CHECK(t.admit(src, 1, 2, 0).result == admission::over_connections);
    held.ticket.reset();
    // One token left of two.
    auto second = t.admit(src, 1, 2, 0);
    CHECK(second.result == admission::admitted);
    second.ticket.reset();
    CHECK(t.admit(src, 1, 2, 0).result == admission::over_rate);
    CHECK(t.connections(src) == 0);
}

TEST_CASE("another shard's slightly later clock is not mistaken for a full bucket") {
    source_table t(1024);
    const auto src = addr("198.51.100.7:1");
    CHECK(t.admit(src, 0, 1, 1000).result == admission::admitted);
    // A shard that read its clock a millisecond earlier, but admits after.
    CHECK(t.admit(src, 0, 1, 999).result == admission::over_rate);
    CHECK(t.admit(src, 0, 1, 1999).result == admission::over_rate);
    CHECK(t.admit(src, 0, 1, 2000).result == admission::admitted);
}

TEST_CASE("the bucket's 32-bit milliseconds wrap") {
    source_table t(1024);
    const auto src = addr("198.51.100.7:1");
    const std::int64_t wrap = std::int64_t{1} << 32;
    CHECK(t.admit(src, 0, 1, wrap - 500).result == admission::admitted);
    CHECK(t.admit(src, 0, 1, wrap - 1).result == admission::over_rate);
    CHECK(t.admit(src, 0, 1, wrap + 499).result == admission::over_rate);
    CHECK(t.admit(src, 0, 1, wrap + 500).result == admission::admitted);
    CHECK(t.admit(src, 0, 1, wrap + 501).result == admission::over_rate);
}

TEST_CASE("a full window answers table_full; an idle slot is reclaimed") {
    // 16 slots: the window is the whole table.
    source_table t(16);
    CHECK(t.slots() == 16);
    std::vector<admission> held;
    for (int i = 0; i < 16; ++i) {
        held.push_back(t.admit(nth(i), 4, 0, 0));
        REQUIRE(held.back().result == admission::admitted);
    }
    CHECK(t.admit(nth(16), 4, 0, 0).result == admission::table_full);
    // A source already in the table still gets in.
    CHECK(t.admit(nth(3), 4, 0, 0).result == admission::admitted);

    SECTION("without a rate limit, a slot is free as soon as its count is 0") {
        held[5].ticket.reset();
        auto a = t.admit(nth(16), 4, 0, 0);
        CHECK(a.result == admission::admitted);
        CHECK(t.connections(nth(16)) == 1);
        CHECK(t.connections(nth(5)) == 0);
        CHECK(t.admit(nth(17), 4, 0, 0).result == admission::table_full);
    }
    SECTION("with a rate limit, only once its bucket is full again") {
        source_table r(16);
        std::vector<admission> h;
        for (int i = 0; i < 16; ++i) {
            h.push_back(r.admit(nth(i), 4, 2, 1000));
            REQUIRE(h.back().result == admission::admitted);
        }
        h[5].ticket.reset();
        // Source 5 spent one token of two at 1000 ms: full again at 1500.
        CHECK(r.admit(nth(16), 4, 2, 1000).result == admission::table_full);
        CHECK(r.admit(nth(16), 4, 2, 1499).result == admission::table_full);
        // Source 5 itself is still known, and its bucket with it.
        auto again = r.admit(nth(5), 4, 2, 1000);
        CHECK(again.result == admission::admitted);
        CHECK(r.admit(nth(5), 4, 2, 1000).result == admission::over_rate);
        again.ticket.reset();
        CHECK(r.admit(nth(16), 4, 2, 1999).result == admission::table_full);
        auto in = r.admit(nth(16), 4, 2, 2000);
        CHECK(in.result == admission::admitted);
        CHECK(r.connections(nth(5)) == 0);
        // Source 5 is new again: a full bucket.
        in.ticket.reset();
        h[6].ticket.reset();
        CHECK(r.admit(nth(5), 4, 2, 3000).result == admission::admitted);
        CHECK(r.admit(nth(5), 4, 2, 3000).result == admission::admitted);
        CHECK(r.admit(nth(5), 4, 2, 3000).result == admission::over_rate);
    }
}

TEST_CASE("slots must be a power of two") {
    CHECK_THROWS_AS(source_table(0), std::invalid_argument);
    CHECK_THROWS_AS(source_table(48), std::invalid_argument);
    CHECK(source_table(1).slots() == 1);
    CHECK(source_table().slots() == default_source_slots);
}

namespace {

// Threads admit and release the same few sources; each admitted connection
// is counted in `open` after admit() and uncounted before its release, so
// `open` never exceeds the limit if the table never does.
void stress(std::size_t slots, int sources, std::uint32_t limit) {
    constexpr int threads = 4;
    constexpr int iterations = 40000;
    source_table t(slots);
    std::vector<socket_address> src;
    for (int i = 0; i < sources; ++i) {
        src.push_back(i % 2 ? nth(i) : addr("[2001:db8::" + std::to_string(i) + "]:7"));
    }
    std::vector<std::atomic<int>> open(sources);
    std::atomic<int> over_limit{0};
    std::atomic<int> admitted{0};
    std::atomic<int> uncounted{0};
    std::vector<std::thread> pool;
    for (int th = 0; th < threads; ++th) {
        pool.emplace_back([&, th] {
            std::vector<std::pair<int, source_ticket>> held;
            std::uint32_t x = 12345u + static_cast<std::uint32_t>(th) * 7919u;
            for (int n = 0; n < iterations; ++n) {
                x = x * 1664525u + 1013904223u;
                const int s = static_cast<int>((x >> 8) % static_cast<std::uint32_t>(sources));
                // Hold up to 3 at once, released in varying order.
                if (held.size() >= 3 || ((x >> 20) & 1)) {
                    if (!held.empty()) {
                        const std::size_t k = (x >> 24) % held.size();
                        open[held[k].first].fetch_sub(1);
                        held[k].second.reset();
                        held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
                    }
                    continue;
                }
                auto a = t.admit(src[s], limit, 0, 0);
                if (a.result == admission::table_full) {
                    uncounted.fetch_add(1);
                    continue;
                }
                if (a.result != admission::admitted) {
                    continue;
                }
                admitted.fetch_add(1);
                if (open[s].fetch_add(1) + 1 > static_cast<int>(limit)) {
                    over_limit.fetch_add(1);
                }
                held.emplace_back(s, std::move(a.ticket));
            }
            for (auto& [s, ticket] : held) {
                open[s].fetch_sub(1);
                ticket.reset();
            }
        });
    }
    for (auto& th : pool) {
        th.join();
    }
    CHECK(over_limit.load() == 0);
    CHECK(admitted.load() > 0);
    if (sources <= 8) {
        // 8 sources with at most 12 connections held cannot fill 16 slots
        // with connections; only idle ones, which are reclaimed.
        CHECK(uncounted.load() == 0);
    }
    for (int i = 0; i < sources; ++i) {
        CHECK(t.connections(src[i]) == 0);
    }
}

}  // namespace

TEST_CASE("threads admitting and releasing the same sources never count one past its limit") {
    SECTION("few sources, a large table") { stress(1024, 3, 2); }
    SECTION("sources reclaiming each other's slots in a 16-slot table") { stress(16, 8, 2); }
    SECTION("more sources than slots: table_full and reclaims under contention") { stress(16, 40, 1); }
}
