#pragma once
// Test support: a TCP socket bound to 127.0.0.1 on a port the kernel picks,
// closed with the object. `backlog` < 0 leaves it unlistening, so that
// connections to the port are refused.

#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <cstdint>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd::test {

class loopback_socket {
public:
    explicit loopback_socket(int backlog) {
        _fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(_fd >= 0);
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(_fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0);
        if (backlog >= 0) {
            REQUIRE(listen(_fd, backlog) == 0);
        }
        socklen_t len = sizeof(sin);
        REQUIRE(getsockname(_fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0);
        _port = ntohs(sin.sin_port);
    }
    ~loopback_socket() { close(_fd); }
    loopback_socket(const loopback_socket&) = delete;
    loopback_socket& operator=(const loopback_socket&) = delete;

    int fd() const { return _fd; }
    std::uint16_t port() const { return _port; }

private:
    int _fd = -1;
    std::uint16_t _port = 0;
};

}  // namespace shardd::test
