// sockperf framing (server/sockperf_framing.hh), fed a stream cut at random
// places: the replies are exactly the messages that ask for one, flag 0x1
// cleared, in order; and the parser keeps no received buffer: after each
// chunk's replies are sent, every chunk can go back to the pool at once,
// even one that ends inside a header.

#include "server/sockperf_framing.hh"

#include <catch2/catch.hpp>
#include <cstring>
#include <endian.h>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace shardd::server;

namespace {

std::string message(std::uint64_t seq, std::uint16_t flags, std::uint32_t len, std::mt19937_64& rng) {
    std::string m(len, '\0');
    const std::uint64_t s = htobe64(seq);
    const std::uint16_t f = htobe16(flags);
    const std::uint32_t l = htobe32(len);
    std::memcpy(m.data(), &s, 8);
    std::memcpy(m.data() + 8, &f, 2);
    std::memcpy(m.data() + 10, &l, 4);
    for (std::size_t i = sockperf_header_size; i < len; ++i) {
        m[i] = static_cast<char>(rng());
    }
    return m;
}

}  // namespace

TEST_CASE("sockperf framing: random messages, random cuts, replies exact and in order", "[sockperf]") {
    std::size_t cut_headers = 0;
    for (std::uint64_t seed = 1; seed <= 200; ++seed) {
        std::mt19937_64 rng(seed);
        std::string stream;
        std::string expected;
        const int messages = 1 + static_cast<int>(rng() % 40);
        for (int i = 0; i < messages; ++i) {
            // Flags: client always; reply requested 2/3 of the time;
            // warm-up 1/5 of the time (warm-up is never answered).
            std::uint16_t flags = 0x1;
            flags |= (rng() % 3 != 0) ? 0x2 : 0;
            flags |= (rng() % 5 == 0) ? 0x4 : 0;
            const auto len = static_cast<std::uint32_t>(sockperf_header_size + rng() % (rng() % 4 == 0 ? 3000 : 60));
            std::string m = message(static_cast<std::uint64_t>(i), flags, len, rng);
            stream += m;
            if ((flags & 0x2) && !(flags & 0x4)) {
                m[9] = static_cast<char>(m[9] & ~0x1);
                expected += m;
            }
        }
        sockperf_framing framing(64 * 1024);
        // Chunks live in their own buffers, as receive buffers do. After
        // each feed the output is "sent", then every chunk so far is
        // "released": poisoned, so a later range into it shows.
        std::vector<std::unique_ptr<std::string>> chunks;
        std::string replies;
        header_copies copies;
        for (std::size_t pos = 0; pos < stream.size();) {
            const std::size_t n = std::min<std::size_t>(stream.size() - pos, 1 + rng() % (rng() % 3 == 0 ? 1 : 200));
            chunks.push_back(std::make_unique<std::string>(stream.substr(pos, n)));
            pos += n;
            std::vector<iovec> out;
            auto& c = *chunks.back();
            const std::string err = framing.feed(reinterpret_cast<std::byte*>(c.data()), c.size(), out, copies);
            REQUIRE(err.empty());
            for (const auto& v : out) {
                replies.append(static_cast<const char*>(v.iov_base), v.iov_len);
            }
            copies.clear();
            cut_headers += framing.partial_header() > 0 ? 1 : 0;
            std::memset(c.data(), 0xEE, c.size());
        }
        INFO("seed " << seed);
        REQUIRE(replies.size() == expected.size());
        CHECK(replies == expected);
        CHECK(framing.partial_header() == 0);
    }
    // Chunks of 1 byte a third of the time: many headers were cut.
    CHECK(cut_headers > 100);
}

TEST_CASE("sockperf framing: a length below the header or above max_message is an error", "[sockperf]") {
    std::mt19937_64 rng(1);
    for (std::uint32_t bad : {0u, 13u, 1025u}) {
        sockperf_framing framing(1024);
        std::string m = message(1, 0x3, 100, rng);
        const std::uint32_t l = htobe32(bad);
        std::memcpy(m.data() + 10, &l, 4);
        std::vector<iovec> out;
        header_copies copies;
        const std::string err = framing.feed(reinterpret_cast<std::byte*>(m.data()), m.size(), out, copies);
        INFO(bad);
        CHECK_THAT(err, Catch::Contains("sockperf message length " + std::to_string(bad)));
        CHECK(out.empty());
    }
    // Exactly 14 (header only) and exactly max_message are fine.
    for (std::uint32_t ok : {14u, 1024u}) {
        sockperf_framing framing(1024);
        std::string m = message(1, 0x3, ok, rng);
        std::vector<iovec> out;
        header_copies copies;
        CHECK(framing.feed(reinterpret_cast<std::byte*>(m.data()), m.size(), out, copies).empty());
        REQUIRE(out.size() == 1);
        CHECK(out[0].iov_len == ok);
    }
}
