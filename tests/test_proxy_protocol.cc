// The PROXY protocol codec (server/proxy/proxy_protocol.hh) on its own:
// round trips through the builders, the spec's own example lines, a v2
// header written out by hand, every cut of valid headers, and the malformed
// headers a receiver must refuse, refused at the first byte that shows it.

#include "server/proxy/proxy_protocol.hh"

#include <catch2/catch.hpp>
#include <cstdint>
#include <initializer_list>
#include <netinet/in.h>
#include <string>
#include <string_view>
#include <vector>

using namespace shardd;
using namespace shardd::server::proxy_protocol;

namespace {

constexpr std::size_t max_size = 4096;  // shardd's default

const std::string v2_signature("\r\n\r\n\0\r\nQUIT\n", 12);

socket_address addr(std::string_view text) {
    auto a = socket_address::parse(text);
    REQUIRE(a);
    return *a;
}

std::string bytes(std::initializer_list<int> values) {
    std::string out;
    for (int v : values) {
        out += static_cast<char>(v);
    }
    return out;
}

// A v2 header around `block`, its length field filled in.
std::string v2(unsigned version_command, unsigned family, const std::string& block) {
    return v2_signature +
           bytes({static_cast<int>(version_command), static_cast<int>(family), static_cast<int>(block.size() >> 8),
                  static_cast<int>(block.size() & 0xff)}) +
           block;
}

// 192.168.0.1:56324 -> 192.168.0.11:443, the spec's example, as a v2 block.
std::string tcp4_block() { return bytes({192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb}); }

std::string tlv(int type, const std::string& value) {
    return bytes({type, static_cast<int>(value.size() >> 8), static_cast<int>(value.size() & 0xff)}) + value;
}

parse_result complete(std::string_view header, std::size_t limit = max_size) {
    parse_result r = parse(header, limit);
    INFO("reason: " << r.reason);
    REQUIRE(r.state == parse_state::complete);
    CHECK(r.consumed == header.size());
    return r;
}

void refused(std::string_view header, std::string_view reason, std::size_t limit = max_size) {
    INFO("header: " << std::string(header));
    const parse_result r = parse(header, limit);
    CHECK(r.state == parse_state::error);
    CHECK(r.reason == reason);
}

// Every strict prefix of a valid header is need_more; the header followed by
// client data, cut anywhere past the header, is the header alone.
void check_cuts(const std::string& header) {
    INFO("header: " << header);
    for (std::size_t n = 0; n < header.size(); ++n) {
        INFO("prefix of " << n);
        CHECK(parse(std::string_view(header).substr(0, n), max_size).state == parse_state::need_more);
    }
    const std::string stream = header + "GET / HTTP/1.1\r\n\r\n\r\n\r\n\0\r\nQUIT\n";
    for (std::size_t n = header.size(); n <= stream.size(); ++n) {
        INFO("cut at " << n);
        const parse_result r = parse(std::string_view(stream).substr(0, n), max_size);
        REQUIRE(r.state == parse_state::complete);
        CHECK(r.consumed == header.size());
    }
}

void check_round_trip(const socket_address& source, const socket_address& destination) {
    for (const std::string& header : {build_v1(&source, &destination), build_v2(&source, &destination)}) {
        INFO("header: " << header);
        const parse_result r = complete(header);
        CHECK(r.value.version == (header[0] == 'P' ? 1 : 2));
        CHECK_FALSE(r.value.local);
        REQUIRE(r.value.source);
        REQUIRE(r.value.destination);
        CHECK(*r.value.source == source);
        CHECK(*r.value.destination == destination);
        check_cuts(header);
    }
}

}  // namespace

TEST_CASE("proxy protocol: IPv4 and IPv6 round trips through both versions", "[proxy_protocol]") {
    check_round_trip(addr("192.168.0.1:56324"), addr("192.168.0.11:443"));
    check_round_trip(addr("0.0.0.0:0"), addr("255.255.255.255:65535"));
    check_round_trip(addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:80"));
    check_round_trip(addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), addr("[::]:0"));
    CHECK(build_v1(nullptr, nullptr).size() <= v1_max_size);
    const auto longest = addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
    CHECK(build_v1(&longest, &longest).size() == 104);
}

TEST_CASE("proxy protocol: an IPv4-mapped IPv6 address stays IPv6, a scope id is dropped", "[proxy_protocol]") {
    const auto mapped = addr("[::ffff:10.0.0.1]:1234");
    const auto plain = addr("[2001:db8::5]:80");
    check_round_trip(mapped, plain);
    const parse_result r = complete(build_v1(&mapped, &plain));
    CHECK(r.value.source->family() == AF_INET6);
    CHECK(r.value.source->to_string() == "[::ffff:10.0.0.1]:1234");

    const auto scoped = addr("[fe80::1%1]:80");
    const auto unscoped = addr("[fe80::1]:80");
    for (const std::string& header : {build_v1(&scoped, &scoped), build_v2(&scoped, &scoped)}) {
        const parse_result s = complete(header);
        CHECK(*s.value.source == unscoped);
    }
}

TEST_CASE("proxy protocol: what cannot be carried becomes UNKNOWN or LOCAL", "[proxy_protocol]") {
    const auto v4 = addr("10.0.0.1:1");
    const auto v6 = addr("[::1]:2");
    sockaddr unix_like{};
    unix_like.sa_family = AF_UNIX;
    const socket_address unix_address(&unix_like, sizeof(unix_like));
    const std::vector<std::pair<const socket_address*, const socket_address*>> pairs = {
        {nullptr, nullptr}, {&v4, nullptr}, {nullptr, &v6}, {&v4, &v6}, {&unix_address, &unix_address}};
    for (const auto& [source, destination] : pairs) {
        CHECK(build_v1(source, destination) == "PROXY UNKNOWN\r\n");
        CHECK(build_v2(source, destination) == v2_signature + bytes({0x20, 0x00, 0x00, 0x00}));
    }
    for (const std::string& header : {build_v1(nullptr, nullptr), build_v2(nullptr, nullptr)}) {
        const parse_result r = complete(header);
        CHECK(r.value.local);
        CHECK_FALSE(r.value.source);
        CHECK_FALSE(r.value.destination);
        check_cuts(header);
    }
}

TEST_CASE("proxy protocol: the spec's example lines", "[proxy_protocol]") {
    const std::string request = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
                                "GET / HTTP/1.1\r\n"
                                "Host: 192.168.0.11\r\n"
                                "\r\n";
    const parse_result r = parse(request, max_size);
    REQUIRE(r.state == parse_state::complete);
    CHECK(r.consumed == 47);
    CHECK(r.value.version == 1);
    CHECK(*r.value.source == addr("192.168.0.1:56324"));
    CHECK(*r.value.destination == addr("192.168.0.11:443"));

    // The longest lines a receiver must take, lengths as the spec counts them.
    const std::string tcp4 = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    CHECK(tcp4.size() == 56);
    complete(tcp4);
    const std::string ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    const std::string tcp6 = "PROXY TCP6 " + ffff + " " + ffff + " 65535 65535\r\n";
    CHECK(tcp6.size() == 104);
    complete(tcp6);
    const std::string unknown = "PROXY UNKNOWN\r\n";
    CHECK(unknown.size() == 15);
    CHECK(complete(unknown).value.local);
    const std::string worst = "PROXY UNKNOWN " + ffff + " " + ffff + " 65535 65535\r\n";
    CHECK(worst.size() == v1_max_size);
    CHECK(complete(worst).value.local);
    check_cuts(worst);
    check_cuts(tcp6);
}

TEST_CASE("proxy protocol: build_v2 byte for byte", "[proxy_protocol]") {
    const auto source = addr("192.168.0.1:56324");
    const auto destination = addr("192.168.0.11:443");
    const std::string expected = bytes({
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,  // signature
        0x21,                                                                    // version 2, PROXY
        0x11,                                                                    // TCP over IPv4
        0x00, 0x0c,                                                              // 12 bytes follow
        0xc0, 0xa8, 0x00, 0x01,                                                  // 192.168.0.1
        0xc0, 0xa8, 0x00, 0x0b,                                                  // 192.168.0.11
        0xdc, 0x04,                                                              // 56324
        0x01, 0xbb,                                                              // 443
    });
    CHECK(build_v2(&source, &destination) == expected);
    CHECK(build_v1(&source, &destination) == "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
}

TEST_CASE("proxy protocol: not a PROXY header is refused at its first byte", "[proxy_protocol]") {
    refused("G", "not a PROXY protocol header");
    refused("GET / HTTP/1.1\r\n", "not a PROXY protocol header");
    refused("\x16\x03\x01", "not a PROXY protocol header");  // a TLS ClientHello
    refused("PROXZ", "not a PROXY protocol header");
    refused("PROXY\r\n", "not a PROXY protocol header");
    refused(v2_signature.substr(0, 10) + "X", "not a PROXY protocol header");
    refused("\r\n\r\n\r\n", "not a PROXY protocol header");
    CHECK(parse("", max_size).state == parse_state::need_more);
    CHECK(parse("PROX", max_size).state == parse_state::need_more);
    CHECK(parse(std::string_view(v2_signature).substr(0, 5), max_size).state == parse_state::need_more);
}

TEST_CASE("proxy protocol: v1 tokens are strict", "[proxy_protocol]") {
    refused("PROXY  TCP4", "v1: bad protocol (expected TCP4, TCP6 or UNKNOWN)");
    refused("PROXY tcp4 ", "v1: bad protocol (expected TCP4, TCP6 or UNKNOWN)");
    refused("PROXY TCP5", "v1: bad protocol (expected TCP4, TCP6 or UNKNOWN)");
    refused("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", "v1: bad protocol (expected TCP4, TCP6 or UNKNOWN)");
    refused("PROXY TCP4\r\n", "v1: bad protocol (expected TCP4, TCP6 or UNKNOWN)");

    // Exactly one space everywhere.
    refused("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1: bad port");

    // Addresses: the family the protocol names, no leading zeros, 0..255.
    refused("PROXY TCP4 ::1 ::1 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 2001:db8::1 ", "v1: bad address");
    refused("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 255.255.255.2555", "v1: bad address");
    refused("PROXY TCP6 ::g", "v1: bad address");
    refused("PROXY TCP6 fe80::1%1 ::1 1 2\r\n", "v1: bad address");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8\r\n", "v1: bad address");

    // Ports: decimal, no leading zeros, at most 65535.
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1 655350", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 0x1 2\r\n", "v1: bad port");
    const parse_result zero = complete("PROXY TCP4 1.2.3.4 5.6.7.8 0 0\r\n");
    CHECK(zero.value.source->port() == 0);
    CHECK(complete("PROXY TCP4 1.2.3.4 5.6.7.8 65535 1\r\n").value.source->port() == 65535);
    // Upper case hex is IPv6 too.
    CHECK(*complete("PROXY TCP6 2001:DB8::A ::1 1 2\r\n").value.source == addr("[2001:db8::a]:1"));

    // The line ends with CRLF and nothing else.
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1: bad port");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "v1: CR not followed by LF");
    refused("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "v1: CR not followed by LF");
    refused("PROXY UNKNOWN\n", "v1: LF without CR");
    refused("PROXY UNKNOWN a\rb\r\n", "v1: CR not followed by LF");
    // UNKNOWN: the receiver ignores the rest of the line, whatever it is.
    CHECK(complete("PROXY UNKNOWN garbage \x01\xff\r\n").value.local);
}

TEST_CASE("proxy protocol: v1 errors are decided at the offending byte", "[proxy_protocol]") {
    // The line, and the index of its first offending byte.
    const std::vector<std::pair<std::string, std::size_t>> bad = {
        {"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", 11},     // the second space
        {"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", 28},     // the digit after a leading zero
        {"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", 31},  // the digit that passes 65535
        {"PROXY TCP4 1:2 ", 12},                         // ':' in IPv4
        {"PROXY TCP5", 9},
        {"PROXY UNKNOWN\rX", 14},
    };
    for (const auto& [line, at] : bad) {
        INFO(line);
        for (std::size_t n = 0; n <= line.size(); ++n) {
            const parse_result r = parse(std::string_view(line).substr(0, n), max_size);
            CHECK(r.state == (n <= at ? parse_state::need_more : parse_state::error));
        }
    }
}

TEST_CASE("proxy protocol: v1 is bounded by 107 bytes, and both by max_size", "[proxy_protocol]") {
    const std::string no_crlf = "PROXY UNKNOWN " + std::string(200, 'x');
    CHECK(parse(no_crlf.substr(0, 106), max_size).state == parse_state::need_more);
    refused(no_crlf.substr(0, 107), "v1: no CRLF in the first 107 bytes");
    refused(no_crlf, "v1: no CRLF in the first 107 bytes");
    // A 108-byte line, though its CRLF is there.
    refused("PROXY UNKNOWN " + std::string(92, 'x') + "\r\n", "v1: no CRLF in the first 107 bytes");
    complete("PROXY UNKNOWN " + std::string(91, 'x') + "\r\n");

    // A smaller max_size bounds v1 too.
    const std::string line = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    complete(line, line.size());
    CHECK(parse(line.substr(0, line.size() - 2), line.size() - 1).state == parse_state::need_more);
    refused(line, "header longer than max_size", line.size() - 1);

    // v2: a length field announcing more than max_size is refused as soon
    // as it is read, before any of the block.
    const std::string big = v2(0x21, 0x11, tcp4_block() + tlv(0x04, std::string(200, '\0')));
    complete(big, big.size());
    refused(big.substr(0, 16), "header longer than max_size", big.size() - 1);
    CHECK(parse(big.substr(0, 15), big.size() - 1).state == parse_state::need_more);
    const std::string huge = v2_signature + bytes({0x21, 0x11, 0xff, 0xff});
    refused(huge, "header longer than max_size");
    CHECK(complete(huge + std::string(65535, '\0'), 65535 + 16).value.local == false);
    refused(v2_signature, "header longer than max_size", 12);
}

TEST_CASE("proxy protocol: truncated headers wait for more", "[proxy_protocol]") {
    const std::string header = v2(0x21, 0x21, std::string(36, '\x01'));
    CHECK(parse(header.substr(0, 40), max_size).state == parse_state::need_more);
    CHECK(parse(header.substr(0, 16), max_size).state == parse_state::need_more);
    CHECK(parse("PROXY TCP6 ::1 ::1 1 2\r", max_size).state == parse_state::need_more);
    CHECK(parse("PROXY TCP6 ::1 ::1 1 ", max_size).state == parse_state::need_more);
}

TEST_CASE("proxy protocol: v2 version, command and family", "[proxy_protocol]") {
    refused(v2_signature + bytes({0x11}), "v2: bad version");
    refused(v2_signature + bytes({0x31}), "v2: bad version");
    refused(v2_signature + bytes({0x01}), "v2: bad version");
    refused(v2_signature + bytes({0x22}), "v2: bad command");
    refused(v2_signature + bytes({0x2f}), "v2: bad command");
    for (int family : {0x12, 0x22, 0x32, 0x01, 0x10, 0x13, 0x41, 0xff}) {
        INFO("family " << family);
        refused(v2_signature + bytes({0x21, family}), "v2: bad family");
    }
    refused(v2_signature + bytes({0x21, 0x11, 0x00, 0x0b}), "v2: address block too short for the family");
    refused(v2_signature + bytes({0x21, 0x21, 0x00, 0x23}), "v2: address block too short for the family");
    refused(v2_signature + bytes({0x21, 0x31, 0x00, 0xd7}), "v2: address block too short for the family");

    // LOCAL ignores the family and skips the block, whatever is in it.
    for (int family : {0x00, 0x11, 0x12, 0x55}) {
        INFO("family " << family);
        const std::string local = v2(0x20, family, "anything at all");
        const parse_result r = complete(local);
        CHECK(r.value.version == 2);
        CHECK(r.value.local);
        CHECK_FALSE(r.value.source);
        check_cuts(local);
    }
    // PROXY over AF_UNSPEC or AF_UNIX: valid, but no address shardd can use.
    const parse_result unspec = complete(v2(0x21, 0x00, "ignored"));
    CHECK(unspec.value.local);
    const parse_result unix_stream = complete(v2(0x21, 0x31, std::string(216, '/') + tlv(0x02, "a")));
    CHECK(unix_stream.value.local);
    CHECK_FALSE(unix_stream.value.source);
}

TEST_CASE("proxy protocol: v2 TLVs are skipped but bounds-checked", "[proxy_protocol]") {
    const std::string authority = v2(0x21, 0x11, tcp4_block() + tlv(0x02, "example.com"));
    const parse_result r = complete(authority);
    CHECK(*r.value.source == addr("192.168.0.1:56324"));
    CHECK(*r.value.destination == addr("192.168.0.11:443"));
    check_cuts(authority);

    const std::string v6 = v2(0x21, 0x21,
                              std::string(16, '\x20') + std::string(16, '\x30') + bytes({0, 1, 0, 2}) + tlv(0x04, "") +
                                  tlv(0x05, std::string(128, 'u')) + tlv(0xe0, "z"));
    const parse_result s = complete(v6);
    CHECK(s.value.source->to_string() == "[2020:2020:2020:2020:2020:2020:2020:2020]:1");
    CHECK(s.value.destination->port() == 2);
    check_cuts(v6);

    // A TLV longer than what is left of the block.
    std::string overrun = v2(0x21, 0x11, tcp4_block() + tlv(0x02, "example.com"));
    overrun[v2_fixed_size + 12 + 2] = 12;
    refused(overrun, "v2: TLVs do not fit the address block");
    // ... refused once its length is read, before the block is all in.
    refused(overrun.substr(0, v2_fixed_size + 12 + 3), "v2: TLVs do not fit the address block");
    CHECK(parse(overrun.substr(0, v2_fixed_size + 12 + 2), max_size).state == parse_state::need_more);
    // One or two bytes left over after the last TLV: not a TLV.
    refused(v2(0x21, 0x11, tcp4_block() + tlv(0x04, "") + bytes({0x04})), "v2: TLVs do not fit the address block");
    refused(v2(0x21, 0x11, tcp4_block() + bytes({0x04, 0x00})), "v2: TLVs do not fit the address block");
    refused(v2(0x21, 0x11, tcp4_block() + tlv(0x20, "ssl") + bytes({0x04, 0x00})),
            "v2: TLVs do not fit the address block");
    // A block a little longer than the addresses, with no TLV in it.
    refused(v2(0x21, 0x21, std::string(37, '\0')), "v2: TLVs do not fit the address block");
}
