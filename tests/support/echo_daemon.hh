#pragma once
// Test support: shardd serving echo listeners on ephemeral loopback ports,
// started through the real binary and waited for with systemd's READY=1; and
// blocking socket helpers with deadlines (never sleeps).
//
//   echo_daemon d(echo_config(R"([[listener]] ... listen = ["127.0.0.1:0"] ...)"));
//   int fd = d.connect();          // to the first address it listens on
//   send_all(fd, data); auto back = recv_exact(fd, data.size());

#include "tests/support/process.hh"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace shardd::test {

// A config with [runtime]/[log] defaults suitable for tests, plus `listeners`
// (TOML text of one or more [[listener]] tables). `runtime_extra` lands in
// [runtime] (e.g. "shutdown_timeout = \"2s\"").
std::string echo_config(const std::string& listeners, const std::string& runtime_extra = "");

class echo_daemon {
public:
    // Writes `config_toml` to a temporary file and starts shardd on it;
    // `shell_prefix` (e.g. "ulimit -n 64") runs in /bin/sh first, or
    // `exec_wrapper` (a program and its arguments, e.g. seccomp_exec_wrapper())
    // execs shardd. Throws if READY=1 does not come.
    explicit echo_daemon(const std::string& config_toml, const std::string& shell_prefix = "",
                         const std::vector<std::string>& exec_wrapper = {});

    daemon_process& process() { return *_process; }
    int pid() const { return _process->pid(); }
    // "127.0.0.1:41234", "[::1]:41235", in the order the daemon logged them.
    const std::vector<std::string>& addresses() const { return _addresses; }
    // A blocking TCP socket connected to addresses()[index]; throws on error.
    int connect(std::size_t index = 0) const;
    // Replaces the config file with `config_toml`, sends SIGHUP and waits
    // for the daemon's RELOADING=1 and READY=1 (a reload it refuses still
    // ends in READY=1: check its log).
    void reload(const std::string& config_toml);
    // SIGTERM, then wait for exit.
    std::optional<run_result> stop(std::chrono::milliseconds timeout = default_timeout);

private:
    std::unique_ptr<temp_file> _config;
    std::unique_ptr<notify_socket> _notify;
    std::unique_ptr<daemon_process> _process;
    std::vector<std::string> _addresses;
};

// tests/support/seccomp_exec with `syscalls` (comma-separated) denied with
// EPERM: an exec_wrapper for echo_daemon.
std::vector<std::string> seccomp_exec_wrapper(const std::string& syscalls);

// Connects a blocking TCP socket to "HOST:PORT" ("[::1]:PORT" for IPv6).
int connect_to(const std::string& address);

// Writes all of `data` (blocking), or returns false on an error.
bool send_all(int fd, const std::string& data);
// Reads exactly `n` bytes, or fewer if the peer closes or errs, or the
// deadline passes first.
std::string recv_exact(int fd, std::size_t n, std::chrono::milliseconds timeout = default_timeout);
// Reads until EOF (returns true) or error/deadline (false); appends to `out`.
bool recv_until_eof(int fd, std::string& out, std::chrono::milliseconds timeout = default_timeout);

// Bytes that vary with `seed` and position: a shifted or corrupted echo
// never matches by accident.
std::string pattern(std::size_t n, std::uint64_t seed);

// Resident set size of a process, KiB (VmRSS).
std::size_t rss_kib(int pid);
// What a daemon's RSS may grow by for reasons that are not the daemon's:
// 0 in a plain build. Under AddressSanitizer freed blocks sit in a
// quarantine (256 MiB by default, redzones included) before reuse, so any
// churn of allocations grows RSS up to that ceiling; a memory bound there
// only catches runaway growth. LeakSanitizer checks leaks at exit.
std::size_t rss_slack_kib();
// utime + stime of a process, in clock ticks.
std::uint64_t cpu_ticks(int pid);

}  // namespace shardd::test
