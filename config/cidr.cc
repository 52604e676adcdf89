#include "config/cidr.hh"

#include <arpa/inet.h>
#include <charconv>
#include <cstring>
#include <netinet/in.h>

namespace shardd::config {

namespace {

// Whether the first `prefix` bits of a and b agree.
bool same_prefix(const std::uint8_t* a, const std::uint8_t* b, unsigned prefix) noexcept {
    const unsigned whole = prefix / 8;
    if (std::memcmp(a, b, whole) != 0) {
        return false;
    }
    const unsigned rest = prefix % 8;
    if (rest == 0) {
        return true;
    }
    const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

expected<cidr, std::string> cidr::parse(std::string_view text) {
    const std::string_view expect_what =
        "expected a CIDR block like \"10.0.0.0/8\" or \"2001:db8::/32\", or an address";
    const std::size_t slash = text.find('/');
    const std::string host(text.substr(0, slash));
    cidr c;
    unsigned max_prefix = 0;
    if (inet_pton(AF_INET, host.c_str(), c.bytes.data()) == 1) {
        c.family = AF_INET;
        max_prefix = 32;
    } else if (inet_pton(AF_INET6, host.c_str(), c.bytes.data()) == 1) {
        c.family = AF_INET6;
        max_prefix = 128;
    } else {
        return unexpected{std::string(expect_what) + ", found \"" + std::string(text) + "\""};
    }
    c.prefix = max_prefix;
    if (slash != std::string_view::npos) {
        const std::string_view digits = text.substr(slash + 1);
        unsigned n = 0;
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
        if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || n > max_prefix ||
            (digits.size() > 1 && digits[0] == '0')) {
            return unexpected{"expected a prefix length from 0 to " + std::to_string(max_prefix) +
                              " after '/', found \"" + std::string(text) + "\""};
        }
        c.prefix = n;
    }
    cidr network = c;
    const unsigned len = c.family == AF_INET ? 4 : 16;
    for (unsigned bit = c.prefix; bit < len * 8; ++bit) {
        network.bytes[bit / 8] &= static_cast<std::uint8_t>(~(0x80u >> (bit % 8)));
    }
    if (network.bytes != c.bytes) {
        return unexpected{"expected a network address (host bits zero), found \"" + std::string(text) +
                          "\"; did you mean \"" + network.to_string() + "\"?"};
    }
    return c;
}

bool cidr::contains(const socket_address& a) const noexcept {
    if (a.family() == AF_INET) {
        if (family != AF_INET) {
            return false;
        }
        const auto* in = reinterpret_cast<const sockaddr_in*>(a.get());
        return same_prefix(reinterpret_cast<const std::uint8_t*>(&in->sin_addr), bytes.data(), prefix);
    }
    if (a.family() != AF_INET6) {
        return false;
    }
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a.get());
    const auto* b = reinterpret_cast<const std::uint8_t*>(&in6->sin6_addr);
    if (family == AF_INET6) {
        return same_prefix(b, bytes.data(), prefix);
    }
    return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && same_prefix(b + 12, bytes.data(), prefix);
}

std::string cidr::to_string() const {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(family, bytes.data(), buf, sizeof(buf));
    return std::string(buf) + "/" + std::to_string(prefix);
}

bool any_contains(const std::vector<cidr>& list, const socket_address& a) noexcept {
    for (const cidr& c : list) {
        if (c.contains(a)) {
            return true;
        }
    }
    return false;
}

}  // namespace shardd::config
