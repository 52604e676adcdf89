#pragma once
// Test support: run the real shardd binary as a child process, talk to it the
// way systemd does, and wait for it without sleeping.

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace shardd::test {

using namespace std::chrono_literals;

// Generous: CI is a loaded 2-core machine. A healthy run takes milliseconds.
inline constexpr std::chrono::milliseconds default_timeout = 30s;

// Path of the shardd binary under test ($SHARDD_BIN, set by meson).
std::string shardd_binary();
// Path of the shardd-bench binary ($SHARDD_BENCH_BIN, set by meson).
std::string shardd_bench_binary();
// Path of a file in the source tree ($SHARDD_SOURCE_ROOT, set by meson).
std::string source_path(const std::string& relative);

// A file in a fresh temporary directory, removed with the object.
class temp_file {
public:
    temp_file(const std::string& name, const std::string& contents);
    ~temp_file();
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    const std::string& path() const { return _path; }

private:
    std::string _dir;
    std::string _path;
};

struct run_result {
    int exit_code = -1;  // -1 when killed by a signal
    int signal = 0;
    std::string out;
    std::string err;
};

// Runs shardd with `args` to completion, capturing stdout and stderr.
run_result run_shardd(const std::vector<std::string>& args, std::chrono::milliseconds timeout = default_timeout);
// Runs `binary` with `args` to completion, capturing stdout and stderr.
run_result run_program(const std::string& binary, const std::vector<std::string>& args,
                       std::chrono::milliseconds timeout = default_timeout);

// A datagram socket in the place of systemd's $NOTIFY_SOCKET.
class notify_socket {
public:
    notify_socket();
    ~notify_socket();
    notify_socket(const notify_socket&) = delete;
    notify_socket& operator=(const notify_socket&) = delete;
    const std::string& path() const { return _path; }
    // Waits for a datagram that contains `line` ("READY=1"); returns the
    // whole datagram, or nullopt after the timeout.
    std::optional<std::string> wait_for(const std::string& line, std::chrono::milliseconds timeout = default_timeout);

private:
    int _fd = -1;
    std::string _dir;
    std::string _path;
};

// shardd running in the background.
class daemon_process {
public:
    daemon_process(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {},
                   const std::string& binary = shardd_binary());
    ~daemon_process();  // SIGKILL if still running
    daemon_process(const daemon_process&) = delete;
    daemon_process& operator=(const daemon_process&) = delete;

    int pid() const { return _pid; }
    void signal(int sig);
    // Waits for exit; returns the result, or nullopt after the timeout.
    std::optional<run_result> wait(std::chrono::milliseconds timeout = default_timeout);
    // Everything written to stderr so far (drains the pipe without blocking).
    const std::string& stderr_text();
    // Waits until stdout or stderr contains `text` (true), or the process
    // exits or the timeout passes (false). For programs that say when they
    // are ready ("Server listening on 5201").
    bool wait_for_output(const std::string& text, std::chrono::milliseconds timeout = default_timeout);

private:
    void drain(int timeout_ms);
    int _pid = -1;
    int _pidfd = -1;
    int _out = -1;
    int _err = -1;
    std::string _out_text;
    std::string _err_text;
    bool _exited = false;
};

}  // namespace shardd::test
