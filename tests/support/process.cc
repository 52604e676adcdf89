#include "tests/support/process.hh"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

namespace shardd::test {

namespace {

std::string env_or_throw(const char* name) {
    const char* v = std::getenv(name);
    if (!v || !*v) {
        throw std::runtime_error(std::string(name) + " is not set; run the tests through `meson test`");
    }
    return v;
}

std::string make_temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "shardd-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) {
        throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    }
    return tmpl;
}

int pidfd_open(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Appends what is readable on fd to out; returns false at EOF.
bool read_some(int fd, std::string& out) {
    char buf[4096];
    for (;;) {
        const ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            out.append(buf, static_cast<std::size_t>(n));
            continue;
        }
        if (n == 0) {
            return false;
        }
        if (errno == EINTR) {
            continue;
        }
        return errno == EAGAIN;
    }
}

int remaining_ms(std::chrono::steady_clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<std::int64_t>(0, left.count()));
}

}  // namespace

std::string shardd_binary() { return env_or_throw("SHARDD_BIN"); }

std::string shardd_bench_binary() { return env_or_throw("SHARDD_BENCH_BIN"); }

std::string source_path(const std::string& relative) { return env_or_throw("SHARDD_SOURCE_ROOT") + "/" + relative; }

temp_file::temp_file(const std::string& name, const std::string& contents) : _dir(make_temp_dir()) {
    _path = _dir + "/" + name;
    std::ofstream(_path, std::ios::binary) << contents;
}

temp_file::~temp_file() {
    std::error_code ec;
    std::filesystem::remove_all(_dir, ec);
}

run_result run_shardd(const std::vector<std::string>& args, std::chrono::milliseconds timeout) {
    return run_program(shardd_binary(), args, timeout);
}

run_result run_program(const std::string& binary, const std::vector<std::string>& args,
                       std::chrono::milliseconds timeout) {
    daemon_process p(args, {}, binary);
    auto r = p.wait(timeout);
    if (!r) {
        throw std::runtime_error(binary + " did not exit within the timeout");
    }
    return *r;
}

notify_socket::notify_socket() : _dir(make_temp_dir()) {
    _path = _dir + "/notify";
    _fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, _path.c_str(), sizeof(addr.sun_path) - 1);
    if (_fd < 0 || bind(_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        throw std::runtime_error(std::string("notify socket: ") + std::strerror(errno));
    }
}

notify_socket::~notify_socket() {
    close(_fd);
    std::error_code ec;
    std::filesystem::remove_all(_dir, ec);
}

std::optional<std::string> notify_socket::wait_for(const std::string& line, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        pollfd pfd{_fd, POLLIN, 0};
        const int rc = poll(&pfd, 1, remaining_ms(deadline));
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc <= 0) {
            return std::nullopt;
        }
        char buf[4096];
        const ssize_t n = recv(_fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            continue;
        }
        std::string msg(buf, static_cast<std::size_t>(n));
        // Datagrams are newline-separated assignments; match whole lines.
        std::size_t pos = 0;
        while (pos <= msg.size()) {
            const std::size_t end = std::min(msg.find('\n', pos), msg.size());
            if (msg.compare(pos, end - pos, line) == 0) {
                return msg;
            }
            pos = end + 1;
        }
    }
}

daemon_process::daemon_process(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
                               const std::string& binary) {
    int out[2];
    int err[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
        throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
    }
    const std::string bin = binary;
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (const auto& a : args) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    _pid = fork();
    if (_pid < 0) {
        throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    }
    if (_pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        // A clean environment for what the daemon reads, so that the test
        // process's own systemd context (if any) does not leak in.
        unsetenv("NOTIFY_SOCKET");
        unsetenv("JOURNAL_STREAM");
        for (const auto& [k, v] : env) {
            setenv(k.c_str(), v.c_str(), 1);
        }
        execv(bin.c_str(), argv.data());
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    _out = out[0];
    _err = err[0];
    fcntl(_out, F_SETFL, O_NONBLOCK);
    fcntl(_err, F_SETFL, O_NONBLOCK);
    _pidfd = pidfd_open(_pid);
}

daemon_process::~daemon_process() {
    if (!_exited && _pid > 0) {
        kill(_pid, SIGKILL);
        waitpid(_pid, nullptr, 0);
    }
    for (int fd : {_pidfd, _out, _err}) {
        if (fd >= 0) {
            close(fd);
        }
    }
}

void daemon_process::signal(int sig) {
    if (!_exited) {
        kill(_pid, sig);
    }
}

void daemon_process::drain(int timeout_ms) {
    pollfd pfds[2] = {{_out, POLLIN, 0}, {_err, POLLIN, 0}};
    if (poll(pfds, 2, timeout_ms) > 0) {
        read_some(_out, _out_text);
        read_some(_err, _err_text);
    }
}

const std::string& daemon_process::stderr_text() {
    drain(0);
    return _err_text;
}

bool daemon_process::wait_for_output(const std::string& text, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (_out_text.find(text) == std::string::npos && _err_text.find(text) == std::string::npos) {
        pollfd pfds[3] = {{_pidfd, POLLIN, 0}, {_out, POLLIN, 0}, {_err, POLLIN, 0}};
        const int rc = poll(pfds, 3, remaining_ms(deadline));
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc <= 0 || (pfds[0].revents & POLLIN)) {
            drain(0);  // what it wrote before it exited
            return _out_text.find(text) != std::string::npos || _err_text.find(text) != std::string::npos;
        }
        read_some(_out, _out_text);
        read_some(_err, _err_text);
    }
    return true;
}

std::optional<run_result> daemon_process::wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    // Read both pipes while waiting: a child blocked on a full pipe would
    // never exit. A pipe at EOF leaves the poll set (-1 is ignored).
    bool out_open = true;
    bool err_open = true;
    bool exited = false;
    while (!exited || out_open || err_open) {
        pollfd pfds[3] = {
            {exited ? -1 : _pidfd, POLLIN, 0}, {out_open ? _out : -1, POLLIN, 0}, {err_open ? _err : -1, POLLIN, 0}};
        const int rc = poll(pfds, 3, remaining_ms(deadline));
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc == 0) {
            return std::nullopt;
        }
        exited = exited || (pfds[0].revents & POLLIN);
        if (out_open && pfds[1].revents) {
            out_open = read_some(_out, _out_text);
        }
        if (err_open && pfds[2].revents) {
            err_open = read_some(_err, _err_text);
        }
    }
    int status = 0;
    waitpid(_pid, &status, 0);
    _exited = true;
    run_result r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    r.out = _out_text;
    r.err = _err_text;
    return r;
}

}  // namespace shardd::test
