#include "reactor/socket_address.hh"

#include <arpa/inet.h>
#include <charconv>
#include <cstring>
#include <net/if.h>

namespace shardd {

socket_address::socket_address(const sockaddr* sa, socklen_t len) {
    _length = std::min<socklen_t>(len, sizeof(_storage));
    std::memcpy(&_storage, sa, _length);
}

namespace {

bool parse_port(std::string_view text, std::uint16_t& port) {
    if (text.empty() || text.size() > 5) {
        return false;
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value > 65535) {
        return false;
    }
    port = static_cast<std::uint16_t>(value);
    return true;
}

const std::string expected_form = "expected an address like \"127.0.0.1:7007\" or \"[::1]:7007\"";

}  // namespace

expected<socket_address, std::string> socket_address::parse(std::string_view text) {
    std::string_view host;
    std::string_view port_text;
    bool v6 = false;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos) {
            return unexpected{expected_form + " (missing ']')"};
        }
        host = text.substr(1, close - 1);
        auto rest = text.substr(close + 1);
        if (rest.empty() || rest.front() != ':') {
            return unexpected{expected_form + " (missing \":PORT\" after ']')"};
        }
        port_text = rest.substr(1);
        v6 = true;
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) {
            return unexpected{expected_form + " (missing \":PORT\")"};
        }
        host = text.substr(0, colon);
        port_text = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) {
            return unexpected{expected_form + " (put IPv6 addresses in brackets)"};
        }
    }
    std::uint16_t port = 0;
    if (!parse_port(port_text, port)) {
        return unexpected{std::string("expected a port from 0 to 65535 after ':'")};
    }
    socket_address out;
    if (v6) {
        sockaddr_in6 sin6{};
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(port);
        std::string addr(host);
        if (auto pct = addr.find('%'); pct != std::string::npos) {
            std::string zone = addr.substr(pct + 1);
            addr.resize(pct);
            unsigned index = if_nametoindex(zone.c_str());
            if (index == 0) {
                auto [end, ec] = std::from_chars(zone.data(), zone.data() + zone.size(), index);
                if (ec != std::errc{} || end != zone.data() + zone.size()) {
                    return unexpected{"expected a known network interface after '%', not \"" + zone + "\""};
                }
            }
            sin6.sin6_scope_id = index;
        }
        if (inet_pton(AF_INET6, addr.c_str(), &sin6.sin6_addr) != 1) {
            return unexpected{std::string("expected an IPv6 address inside [ ]")};
        }
        out = socket_address(reinterpret_cast<const sockaddr*>(&sin6), sizeof(sin6));
    } else {
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port);
        std::string addr(host);
        if (inet_pton(AF_INET, addr.c_str(), &sin.sin_addr) != 1) {
            return unexpected{std::string("expected an IPv4 address like \"127.0.0.1\" (host names are not resolved)")};
        }
        out = socket_address(reinterpret_cast<const sockaddr*>(&sin), sizeof(sin));
    }
    return out;
}

std::uint16_t socket_address::port() const noexcept {
    if (family() == AF_INET) {
        return ntohs(reinterpret_cast<const sockaddr_in*>(&_storage)->sin_port);
    }
    if (family() == AF_INET6) {
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&_storage)->sin6_port);
    }
    return 0;
}

void socket_address::set_port(std::uint16_t port) noexcept {
    if (family() == AF_INET) {
        reinterpret_cast<sockaddr_in*>(&_storage)->sin_port = htons(port);
    } else if (family() == AF_INET6) {
        reinterpret_cast<sockaddr_in6*>(&_storage)->sin6_port = htons(port);
    }
}

bool socket_address::is_wildcard() const noexcept {
    if (family() == AF_INET) {
        return reinterpret_cast<const sockaddr_in*>(&_storage)->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    if (family() == AF_INET6) {
        return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&_storage)->sin6_addr);
    }
    return false;
}

std::string socket_address::to_string() const {
    char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 2] = {};
    if (family() == AF_INET) {
        auto* sin = reinterpret_cast<const sockaddr_in*>(&_storage);
        inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
        return std::string(buf) + ":" + std::to_string(port());
    }
    if (family() == AF_INET6) {
        auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&_storage);
        inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
        std::string host(buf);
        if (sin6->sin6_scope_id != 0) {
            char name[IF_NAMESIZE] = {};
            host += '%';
            host += if_indextoname(sin6->sin6_scope_id, name) ? std::string(name) : std::to_string(sin6->sin6_scope_id);
        }
        return "[" + host + "]:" + std::to_string(port());
    }
    return "<unspecified>";
}

bool socket_address::operator==(const socket_address& other) const noexcept {
    return _length == other._length && std::memcmp(&_storage, &other._storage, _length) == 0;
}

}  // namespace shardd
