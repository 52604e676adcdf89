#include "tests/support/proxy_peers.hh"

#include <cerrno>
#include <poll.h>
#include <regex>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/support/echo_peers.hh"

namespace shardd::test {

std::string cpus_key() { return "cpus = \"" + std::to_string(first_allowed_cpu()) + "\"\n"; }

std::unique_ptr<echo_daemon> start_echo() {
    return std::make_unique<echo_daemon>(
        echo_config("[[listener]]\nname = \"e\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"echo\"\n", cpus_key()));
}

std::string quoted_list(const std::vector<std::string>& servers) {
    std::string out = "[";
    for (std::size_t i = 0; i < servers.size(); ++i) {
        out += (i ? ", \"" : "\"") + servers[i] + "\"";
    }
    return out + "]";
}

std::unique_ptr<echo_daemon> start_proxy(const std::string& servers, const std::string& upstream_extra,
                                         const std::string& listener_extra, const std::string& runtime) {
    return std::make_unique<echo_daemon>(
        echo_config("[[listener]]\nname = \"p\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"proxy\"\nupstream = \"u\"\n" +
                        listener_extra + "\n[[upstream]]\nname = \"u\"\nservers = " + servers + "\n" + upstream_extra,
                    runtime.empty() ? cpus_key() : runtime));
}

std::string addr(std::uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

int accept_one(const loopback_socket& l, std::chrono::milliseconds timeout) {
    pollfd p{l.fd(), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) {
        return -1;
    }
    return accept4(l.fd(), nullptr, nullptr, SOCK_CLOEXEC);
}

int read_to_end(int fd, std::string& out, std::chrono::milliseconds timeout) {
    const auto deadline = steady::now() + timeout;
    char buf[65536];
    while (true) {
        pollfd p{fd, POLLIN, 0};
        const int left = ms_left(deadline);
        if (left <= 0 || poll(&p, 1, left) != 1) {
            return -1;
        }
        const ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0) {
            return 0;
        }
        if (n < 0) {
            return errno;
        }
        out.append(buf, static_cast<std::size_t>(n));
    }
}

std::size_t raise_fd_limit(std::size_t at_least) {
    rlimit rl{};
    REQUIRE(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_max < at_least) {
        // Needs CAP_SYS_RESOURCE; without it the hard limit stays.
        rlimit higher{at_least, at_least};
        if (setrlimit(RLIMIT_NOFILE, &higher) == 0) {
            rl = higher;
        }
    }
    rl.rlim_cur = rl.rlim_max;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    return rl.rlim_cur;
}

std::string find_program(const std::string& name) {
    for (const char* dir : {"/usr/sbin/", "/usr/bin/", "/sbin/", "/bin/"}) {
        const std::string p = std::string(dir) + name;
        if (access(p.c_str(), X_OK) == 0) {
            return p;
        }
    }
    FAIL(name << " is not installed: .ci/install-deps installs it");
    return "";
}

void close_with_reset(int fd) {
    const linger lg{1, 0};
    REQUIRE(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    close(fd);
}

std::string http_get(const std::string& address, const std::string& path) {
    socket_fd c(connect_to(address));
    if (!send_all(c.get(), "GET " + path + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")) {
        return "";
    }
    std::string out;
    (void)read_to_end(c.get(), out);
    return out;
}

std::uint64_t stats_sum(const std::string& admin_address, const std::string& key) {
    const std::string body = http_get(admin_address, "/stats");
    const std::regex field("\"" + key + "\":([0-9]+)");
    std::uint64_t n = 0;
    for (std::sregex_iterator it(body.begin(), body.end(), field), end; it != end; ++it) {
        n += std::stoull((*it)[1].str());
    }
    return n;
}

}  // namespace shardd::test
