// socket_address: the listen/upstream address syntax and its printing.
#include "reactor/socket_address.hh"

#include <catch2/catch.hpp>

using namespace shardd;

TEST_CASE("IPv4 addresses parse and print", "[address]") {
    auto a = socket_address::parse("127.0.0.1:7007");
    REQUIRE(a.has_value());
    CHECK(a->family() == AF_INET);
    CHECK(a->port() == 7007);
    CHECK(a->to_string() == "127.0.0.1:7007");
    CHECK_FALSE(a->is_wildcard());
    CHECK(socket_address::parse("0.0.0.0:0")->is_wildcard());
    CHECK(socket_address::parse("0.0.0.0:65535")->port() == 65535);
}

TEST_CASE("IPv6 addresses go in brackets", "[address]") {
    auto a = socket_address::parse("[::1]:80");
    REQUIRE(a.has_value());
    CHECK(a->family() == AF_INET6);
    CHECK(a->port() == 80);
    CHECK(a->to_string() == "[::1]:80");
    CHECK(socket_address::parse("[::]:7007")->is_wildcard());
    CHECK(socket_address::parse("[2001:DB8::1]:443")->to_string() == "[2001:db8::1]:443");
    CHECK(socket_address::parse("[fe80::1%lo]:80")->to_string() == "[fe80::1%lo]:80");
}

TEST_CASE("bad addresses say what was expected", "[address]") {
    struct bad_case {
        const char* text;
        const char* says;
    };
    for (auto [text, says] : {
             bad_case{"", "missing \":PORT\""},
             bad_case{"127.0.0.1", "missing \":PORT\""},
             bad_case{"127.0.0.1:", "port from 0 to 65535"},
             bad_case{"127.0.0.1:65536", "port from 0 to 65535"},
             bad_case{"127.0.0.1:-1", "port from 0 to 65535"},
             bad_case{"127.0.0.1:80x", "port from 0 to 65535"},
             bad_case{"localhost:80", "host names are not resolved"},
             bad_case{"256.0.0.1:80", "IPv4 address"},
             bad_case{"::1:80", "brackets"},
             bad_case{"[::1]", "missing \":PORT\" after ']'"},
             bad_case{"[::1:80", "missing ']'"},
             bad_case{"[zz::1]:80", "IPv6 address"},
             bad_case{"[fe80::1%nosuchif0]:80", "network interface"},
         }) {
        INFO(text);
        auto r = socket_address::parse(text);
        REQUIRE_FALSE(r.has_value());
        CHECK_THAT(r.error(), Catch::Contains(says));
    }
}

TEST_CASE("addresses compare by value and ports can be set", "[address]") {
    auto a = *socket_address::parse("127.0.0.1:0");
    auto b = *socket_address::parse("127.0.0.1:9000");
    CHECK_FALSE(a == b);
    a.set_port(9000);
    CHECK(a == b);
    CHECK_FALSE(*socket_address::parse("127.0.0.1:9000") == *socket_address::parse("[::1]:9000"));
}
