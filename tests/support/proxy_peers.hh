#pragma once
// Test support for the proxy: shardd started with an echo listener (the
// upstream most tests relay to) or with a proxy listener to given servers;
// raw sockets the tests play servers and clients with; real programs
// (nginx, iperf3) as peers, on ports the test picks.
//
//   auto echo = start_echo();
//   auto proxy = start_proxy(quoted_list({echo->addresses()[0]}), "retries = 1\n");
//   int fd = proxy->connect();

#include "tests/support/echo_daemon.hh"
#include "tests/support/loopback.hh"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shardd::test {

// A loaded CI machine can be slow; nothing here waits this long when healthy.
inline constexpr std::chrono::milliseconds generous = std::chrono::seconds(30);

// `cpus = "N"`: the first CPU this process may run on (one shard).
std::string cpus_key();

// shardd with one raw echo listener.
std::unique_ptr<echo_daemon> start_echo();

// ["a", "b"] as TOML.
std::string quoted_list(const std::vector<std::string>& servers);

// shardd with one proxy listener "p" to upstream "u" of `servers` (TOML
// array text); `upstream_extra` and `listener_extra` are lines in those
// tables, `runtime` replaces the [runtime] lines (default: cpus_key()).
std::unique_ptr<echo_daemon> start_proxy(const std::string& servers, const std::string& upstream_extra = "",
                                         const std::string& listener_extra = "", const std::string& runtime = "");

// "127.0.0.1:PORT".
std::string addr(std::uint16_t port);

// Accepts one connection on `l` within the deadline; -1 if none came.
int accept_one(const loopback_socket& l, std::chrono::milliseconds timeout = generous);

// Reads until EOF or an error; the error (0 for a clean EOF, -1 on timeout).
int read_to_end(int fd, std::string& out, std::chrono::milliseconds timeout = generous);

// GET `path` from the admin endpoint at `address` (Connection: close);
// the whole response, head and body.
std::string http_get(const std::string& address, const std::string& path);
// The sum over shards of "key":N in /stats (e.g. "active").
std::uint64_t stats_sum(const std::string& admin_address, const std::string& key);

// Raises this process's RLIMIT_NOFILE (children inherit it) to at least
// `at_least`, raising the hard limit too where that is allowed (root);
// returns the soft limit now in effect.
std::size_t raise_fd_limit(std::size_t at_least = 0);

// The path of an installed program (nginx, haproxy, iperf3) in the usual
// directories; fails the test, naming .ci/install-deps, when it is absent.
std::string find_program(const std::string& name);

// Closes with an RST rather than a FIN.
void close_with_reset(int fd);

}  // namespace shardd::test
