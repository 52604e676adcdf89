#include "reactor/net.hh"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd {

namespace {

std::error_code set_int_option(int fd, int level, int name, int value) {
    if (setsockopt(fd, level, name, &value, sizeof(value)) != 0) {
        return errno_code(errno);
    }
    return {};
}

}  // namespace

expected<owned_fd> listen_socket(const socket_address& addr, const listen_options& opts) {
    owned_fd owned(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
    const int fd = owned.get();
    if (fd < 0) {
        return unexpected{errno_code(errno)};
    }
    internal::fd_opened(fd);
    auto fail = [](std::error_code ec) { return unexpected{ec}; };
    if (auto ec = set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1)) {
        return fail(ec);
    }
    if (opts.reuse_port) {
        if (auto ec = set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1)) {
            return fail(ec);
        }
    }
    if (addr.family() == AF_INET6) {
        if (auto ec = set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, opts.v6_only ? 1 : 0)) {
            return fail(ec);
        }
    }
    if (::bind(fd, addr.get(), addr.length()) != 0) {
        return fail(errno_code(errno));
    }
    if (::listen(fd, opts.backlog) != 0) {
        return fail(errno_code(errno));
    }
    return owned;
}

expected<owned_fd> tcp_socket(int family) {
    owned_fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!fd) {
        return unexpected{errno_code(errno)};
    }
    internal::fd_opened(fd.get());
    return fd;
}

expected<socket_address> local_address(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        return unexpected{errno_code(errno)};
    }
    return socket_address(reinterpret_cast<sockaddr*>(&ss), len);
}

expected<socket_address> peer_address(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        return unexpected{errno_code(errno)};
    }
    return socket_address(reinterpret_cast<sockaddr*>(&ss), len);
}

std::error_code set_nodelay(int fd, bool on) { return set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0); }

task<expected<std::size_t>> send_all(int fd, std::span<const std::byte> data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
        const auto chunk = static_cast<std::uint32_t>(std::min<std::size_t>(data.size() - sent, UINT32_MAX));
        auto n = co_await send_some(fd, data.data() + sent, chunk);
        if (!n) {
            co_return unexpected{n.error()};
        }
        sent += *n;
    }
    co_return sent;
}

task<std::error_code> connect(int fd, socket_address addr) {
    auto r = co_await connect_op(fd, addr);
    co_return r ? std::error_code{} : r.error();
}

std::error_code shutdown_socket(int fd, int how) {
    if (::shutdown(fd, how) != 0) {
        return errno_code(errno);
    }
    return {};
}

std::error_code close_socket(int fd) {
    executor* ex = executor::current();
    for (internal::ring* r : {&ex->latency_ring(), &ex->main_ring()}) {
        r->cancel_fd(fd);
    }
    if (close_fd(fd) != 0) {
        return errno_code(errno);
    }
    return {};
}

}  // namespace shardd
