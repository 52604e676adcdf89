#pragma once
// Test support: a connected pair of Unix stream sockets, closed with the
// object. For reactor tests that need a peer without a listener.

#include <catch2/catch.hpp>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd::test {

struct socket_pair {
    int fd[2];
    socket_pair() { REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd) == 0); }
    socket_pair(const socket_pair&) = delete;
    socket_pair& operator=(const socket_pair&) = delete;
    ~socket_pair() {
        ::close(fd[0]);
        ::close(fd[1]);
    }
};

}  // namespace shardd::test
