#include "server/socket_activation.hh"

#include "server/sd_notify.hh"

#include "reactor/net.hh"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd::server {

namespace {

// More than any .socket unit has; a bound on what a bad LISTEN_FDS can make
// us touch.
constexpr unsigned long max_inherited = 1024;

bool int_option(int fd, int level, int name, int& out) {
    socklen_t len = sizeof(out);
    return getsockopt(fd, level, name, &out, &len) == 0;
}

void unset_listen_environment() {
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
}

}  // namespace

std::string inherited_socket::describe() const {
    return "fd " + std::to_string(number) + (name.empty() ? "" : " '" + name + "'") + " " + address.to_string();
}

expected<std::vector<inherited_socket>, std::string> take_inherited_sockets() {
    std::vector<inherited_socket> out;
    const auto pid = parse_env_number(std::getenv("LISTEN_PID"));
    if (!pid || *pid != static_cast<unsigned long long>(getpid())) {
        return out;  // not for us (or not set)
    }
    const char* fds_text = std::getenv("LISTEN_FDS");
    const auto count = parse_env_number(fds_text);
    if (!count || *count > max_inherited) {
        return unexpected{std::string("socket activation: LISTEN_FDS=") + (fds_text ? fds_text : "") +
                          " is not a count of descriptors"};
    }
    std::vector<std::string> names;
    if (const char* n = std::getenv("LISTEN_FDNAMES")) {
        std::string_view rest(n);
        while (true) {
            const std::size_t colon = rest.find(':');
            names.emplace_back(rest.substr(0, colon));
            if (colon == std::string_view::npos) {
                break;
            }
            rest.remove_prefix(colon + 1);
        }
    }
    unset_listen_environment();
    for (unsigned long i = 0; i < *count; ++i) {
        const int fd = listen_fds_start + static_cast<int>(i);
        inherited_socket s;
        s.fd = owned_fd(fd);
        s.number = fd;
        s.name = i < names.size() ? names[i] : "";
        const std::string which =
            "socket activation: fd " + std::to_string(fd) + (s.name.empty() ? "" : " '" + s.name + "'");
        const int flags = fcntl(fd, F_GETFD);
        if (flags < 0) {
            s.fd.release();  // not ours to close: it is not open
            return unexpected{which + ": " + std::strerror(errno)};
        }
        fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        int type = 0;
        int listening = 0;
        if (!int_option(fd, SOL_SOCKET, SO_TYPE, type) || type != SOCK_STREAM ||
            !int_option(fd, SOL_SOCKET, SO_ACCEPTCONN, listening) || !listening) {
            return unexpected{which + " is not a listening stream socket (ListenStream= in the .socket unit)"};
        }
        auto addr = local_address(fd);
        if (!addr || (addr->family() != AF_INET && addr->family() != AF_INET6)) {
            return unexpected{which + " is not a TCP socket on IPv4 or IPv6"};
        }
        s.address = *addr;
        int reuse = 0;
        s.reuse_port = int_option(fd, SOL_SOCKET, SO_REUSEPORT, reuse) && reuse;
        if (addr->family() == AF_INET6) {
            int v6 = 1;
            s.v6_only = !int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, v6) || v6;
        }
        // Blocking, like the sockets we open ourselves (reactor/net.hh says
        // why); systemd never accepts on it (Accept=no), so its copy does
        // not care.
        if (const int fl = fcntl(fd, F_GETFL); fl >= 0 && (fl & O_NONBLOCK)) {
            fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        }
        out.push_back(std::move(s));
    }
    return out;
}

}  // namespace shardd::server
