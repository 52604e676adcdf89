#include "tests/support/echo_daemon.hh"

#include "reactor/socket_address.hh"

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd::test {

namespace {

using clock = std::chrono::steady_clock;

int remaining_ms(clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

}  // namespace

std::string echo_config(const std::string& listeners, const std::string& runtime_extra) {
    return "[runtime]\n" + runtime_extra + "\n[log]\nlevel = \"info\"\n" + listeners + "\n";
}

std::vector<std::string> seccomp_exec_wrapper(const std::string& syscalls) {
    const char* path = std::getenv("SHARDD_SECCOMP_EXEC");
    if (path == nullptr) {
        throw std::runtime_error("SHARDD_SECCOMP_EXEC is not set; run the tests through `meson test`");
    }
    return {path, syscalls};
}

echo_daemon::echo_daemon(const std::string& config_toml, const std::string& shell_prefix,
                         const std::vector<std::string>& exec_wrapper) {
    _config = std::make_unique<temp_file>("shardd.toml", config_toml);
    _notify = std::make_unique<notify_socket>();
    const std::map<std::string, std::string> env{{"NOTIFY_SOCKET", _notify->path()}};
    if (!exec_wrapper.empty()) {
        std::vector<std::string> args(exec_wrapper.begin() + 1, exec_wrapper.end());
        args.insert(args.end(), {shardd_binary(), "-c", _config->path()});
        _process = std::make_unique<daemon_process>(args, env, exec_wrapper.front());
    } else if (shell_prefix.empty()) {
        _process = std::make_unique<daemon_process>(std::vector<std::string>{"-c", _config->path()}, env);
    } else {
        _process =
            std::make_unique<daemon_process>(std::vector<std::string>{"-c", shell_prefix + " && exec \"$0\" -c \"$1\"",
                                                                      shardd_binary(), _config->path()},
                                             env, "/bin/sh");
    }
    if (!_notify->wait_for("READY=1")) {
        throw std::runtime_error("shardd did not become ready; stderr:\n" + _process->stderr_text());
    }
    // Logged before READY=1, so already in the pipe.
    static const std::regex listening(R"(listening on (\S+) \()");
    const std::string& err = _process->stderr_text();
    for (std::sregex_iterator it(err.begin(), err.end(), listening), end; it != end; ++it) {
        _addresses.push_back((*it)[1].str());
    }
    if (_addresses.empty()) {
        throw std::runtime_error("shardd logged no listening address; stderr:\n" + err);
    }
}

int echo_daemon::connect(std::size_t index) const { return connect_to(_addresses.at(index)); }

void echo_daemon::reload(const std::string& config_toml) {
    std::ofstream(_config->path(), std::ios::binary | std::ios::trunc) << config_toml;
    _process->signal(SIGHUP);
    if (!_notify->wait_for("RELOADING=1") || !_notify->wait_for("READY=1")) {
        throw std::runtime_error("shardd did not finish the reload; stderr:\n" + _process->stderr_text());
    }
}

std::optional<run_result> echo_daemon::stop(std::chrono::milliseconds timeout) {
    _process->signal(SIGTERM);
    return _process->wait(timeout);
}

int connect_to(const std::string& address) {
    auto addr = socket_address::parse(address);
    if (!addr) {
        throw std::runtime_error("bad address " + address + ": " + addr.error());
    }
    const int fd = socket(addr->family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
    if (::connect(fd, addr->get(), addr->length()) != 0) {
        const int e = errno;
        close(fd);
        throw std::runtime_error("connect " + address + ": " + std::strerror(e));
    }
    return fd;
}

bool send_all(int fd, const std::string& data) {
    std::size_t off = 0;
    while (off < data.size()) {
        const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        off += static_cast<std::size_t>(n);
    }
    return true;
}

std::string recv_exact(int fd, std::size_t n, std::chrono::milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    std::string out;
    out.resize(n);
    std::size_t got = 0;
    while (got < n) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, remaining_ms(deadline)) <= 0) {
            break;
        }
        const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) {
                continue;
            }
            break;
        }
        got += static_cast<std::size_t>(r);
    }
    out.resize(got);
    return out;
}

bool recv_until_eof(int fd, std::string& out, std::chrono::milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    char buf[65536];
    while (true) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, remaining_ms(deadline)) <= 0) {
            return false;
        }
        const ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
        if (r == 0) {
            return true;
        }
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        out.append(buf, static_cast<std::size_t>(r));
    }
}

std::string pattern(std::size_t n, std::uint64_t seed) {
    std::string s(n, '\0');
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (std::size_t i = 0; i < n; ++i) {
        // xorshift64: cheap and never repeats within any test's sizes.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s[i] = static_cast<char>(x >> 56);
    }
    return s;
}

std::size_t rss_kib(int pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            return std::stoul(line.substr(6));
        }
    }
    throw std::runtime_error("no VmRSS for pid " + std::to_string(pid));
}

std::size_t rss_slack_kib() {
#if defined(__SANITIZE_ADDRESS__)
    // The default quarantine_size_mb, plus a quarter for allocator metadata.
    return (256 + 64) * 1024;
#else
    return 0;
#endif
}

std::uint64_t cpu_ticks(int pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::istringstream rest(all.substr(all.rfind(')') + 2));
    std::string field;
    std::uint64_t utime = 0;
    std::uint64_t stime = 0;
    // Fields after the command: state is 3; utime 14, stime 15.
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) {
            utime = std::stoull(field);
        } else if (i == 15) {
            stime = std::stoull(field);
        }
    }
    return utime + stime;
}

}  // namespace shardd::test
