#pragma once
// An IPv4 or IPv6 socket address, parsed from and printed as "1.2.3.4:80" or
// "[::1]:80" — the form used in the config, in logs and by the tests. Parse
// errors say what was expected; the caller adds what was found.
//
// Host names are deliberately not resolved: a daemon that resolves at start-up
// binds or connects somewhere the operator did not write down, and blocks the
// start on DNS. Literal addresses only.

#include "reactor/expected.hh"

#include <cstdint>
#include <netinet/in.h>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace shardd {

class socket_address {
public:
    socket_address() = default;
    socket_address(const sockaddr* sa, socklen_t len);

    // Parses "A.B.C.D:PORT" or "[IPV6]:PORT" (an IPv6 zone, "[fe80::1%eth0]:80",
    // is accepted). On failure the error says what was expected.
    static expected<socket_address, std::string> parse(std::string_view text);

    int family() const noexcept { return _storage.ss_family; }
    std::uint16_t port() const noexcept;
    void set_port(std::uint16_t port) noexcept;
    // 0.0.0.0 or [::]
    bool is_wildcard() const noexcept;

    const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&_storage); }
    sockaddr* get() noexcept { return reinterpret_cast<sockaddr*>(&_storage); }
    socklen_t length() const noexcept { return _length; }

    std::string to_string() const;

    bool operator==(const socket_address& other) const noexcept;

private:
    sockaddr_storage _storage{};
    socklen_t _length = 0;
};

}  // namespace shardd
