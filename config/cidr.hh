#pragma once
// A CIDR block ("10.0.0.0/8", "2001:db8::/32", or a bare address for one
// host), for the listeners' allow, deny and proxy_trusted lists.
//
// An IPv4 block also matches the same address written as IPv4-mapped IPv6
// (::ffff:10.1.2.3): a PROXY header or a dual-stack peer may carry it so,
// and an operator who wrote "10.0.0.0/8" means those clients too. shardd's
// own listening sockets are IPV6_V6ONLY, so a plain accept never yields one.

#include "reactor/expected.hh"
#include "reactor/socket_address.hh"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shardd::config {

struct cidr {
    int family = 0;                        // AF_INET or AF_INET6
    std::array<std::uint8_t, 16> bytes{};  // network order; IPv4 in the first 4, host bits zero
    unsigned prefix = 0;                   // 0-32 or 0-128

    // "A.B.C.D/N", "IPV6/N", or an address alone (/32, /128). Host bits set
    // below the prefix ("10.0.0.1/8") are an error: the operator probably
    // meant a different block. The error says what was expected.
    static expected<cidr, std::string> parse(std::string_view text);

    bool contains(const socket_address& a) const noexcept;
    std::string to_string() const;

    bool operator==(const cidr&) const = default;
};

// Whether any block of `list` contains `a`.
bool any_contains(const std::vector<cidr>& list, const socket_address& a) noexcept;

}  // namespace shardd::config
