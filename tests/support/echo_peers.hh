#pragma once
// Test support: echo clients that behave well or badly, on non-blocking
// sockets with deadlines (never sleeps); and what the daemon reports of
// itself afterwards: its per-shard "drained: ..." counters, its warnings, its
// descriptors and limits in /proc.
//
//   socket_fd c(d.connect());
//   CHECK(echo_check(c.get(), pattern(1 << 20, 1)) == "");
//   CHECK(close_cleanly(c.get()));
//   const shard_stats t = sum(drained_stats(d.stop()->err));

#include "tests/support/process.hh"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace shardd::test {

using steady = std::chrono::steady_clock;

// Milliseconds until `deadline`, 0 once it has passed (a poll(2) timeout).
int ms_left(steady::time_point deadline);
// Seconds since `t`.
double seconds_since(steady::time_point t);

// An owned socket; -1 when empty.
class socket_fd {
public:
    socket_fd() = default;
    explicit socket_fd(int fd) : _fd(fd) {}
    socket_fd(socket_fd&& o) noexcept : _fd(std::exchange(o._fd, -1)) {}
    socket_fd& operator=(socket_fd&& o) noexcept {
        reset();
        _fd = std::exchange(o._fd, -1);
        return *this;
    }
    ~socket_fd() { reset(); }
    int get() const { return _fd; }
    void reset();

private:
    int _fd = -1;
};

// TOML of one echo [[listener]] on `listen`, with `extra` lines in it.
std::string listener_toml(const std::string& extra = "", const std::string& listen = R"(["127.0.0.1:0"])");

// Sends `msg` while reading its echo (never blocks on either), until all of
// it came back, the peer closed or failed, or the deadline. Returns what came
// back.
std::string echo_exchange(int fd, const std::string& msg, std::chrono::milliseconds timeout = default_timeout);
// "" when `back` is `sent`; otherwise what differs, briefly (assertions on
// the strings themselves would print megabytes of binary).
std::string mismatch(const std::string& back, const std::string& sent);
// Echoes `msg` over `fd`: "" when it came back byte-exact, else what went
// wrong.
std::string echo_check(int fd, const std::string& msg, std::chrono::milliseconds timeout = default_timeout);

// What a socket closed by its peer sees first.
enum class peer_end { eof, reset, data, timeout };
const char* to_string(peer_end e);
// What a socket that should be closed by the peer, with nothing to read,
// sees first.
peer_end wait_for_close(int fd, std::chrono::milliseconds timeout);

// Half-closes, then reads until the daemon's EOF: everything sent came back
// and the daemon is done with the connection (as far as the peer can see).
bool close_cleanly(int fd, std::chrono::milliseconds timeout = default_timeout);
// Closes with an RST instead of a FIN.
void reset_connection(socket_fd& s);

// Clients that write and never read: each sends (non-blocking) until its
// window closes, at most `data.size()` bytes. Returns once no socket has been
// writable for `stall` (all windows closed) or at `deadline`; counts what
// each sent into `sent`. Returns whether all stalled. Against a daemon with
// an idle_timeout, keep `stall` well under it: the daemon's idle clock starts
// at its last receive, before this one's last send, and a hog it closes
// during the wait (its sweep closes after 3/4 to 4/4 of idle_timeout) counts
// as a failure here.
bool flood_until_stalled(const std::vector<socket_fd>& hogs, const std::string& data, std::vector<std::size_t>& sent,
                         std::chrono::milliseconds stall, steady::time_point deadline);

// One shard's "drained: ..." line, logged at exit.
struct shard_stats {
    unsigned shard = 0;
    std::uint64_t accepted = 0, closed = 0, refused = 0, idle_closed = 0, errors = 0;
    std::uint64_t bytes_in = 0, bytes_out = 0, enobufs = 0, pauses = 0, backoffs = 0;
    std::uint64_t protocol_errors = 0, spilled = 0, spliced = 0, log_suppressed = 0;
};
// Every shard's "drained: ..." line in `log`, by shard number.
std::vector<shard_stats> drained_stats(const std::string& log);
// The counters of all shards added up.
shard_stats sum(const std::vector<shard_stats>& all);

// Log lines at warning level or above ("TIME LEVEL [thread] message"), except
// the executor's stall report: on a loaded CI machine the kernel may take a
// shard's CPU away mid-slice, which the executor cannot tell from a task
// that did not yield.
std::string alarming_lines(const std::string& log);

// How many CPUs this process may run on (one shard each, by default).
std::size_t cpus_allowed();
// The lowest-numbered CPU this process may run on.
int first_allowed_cpu();

// Descriptors of `pid` numbered below `limit` (RLIMIT_NOFILE caps the number
// a new descriptor gets, not how many there are). With `skip_unix`, leaves
// out Unix-domain sockets: sd_notify() opens one for each message and closes
// it just after sending, so right after READY=1 it may still be there.
std::size_t fds_below(int pid, int limit, bool skip_unix = false);
// The line of /proc/PID/limits that starts with `name` ("Max open files"),
// or "".
std::string proc_limit(int pid, const std::string& name);

// sockperf's framing, by hand: flags, a message (the 14-byte big-endian
// header: sequence, flags, total length; then `length - 14` bytes of payload
// that vary with `seed`; the header alone when length < 14), and what a
// server sends back for it (the very message, 0x1 cleared).
constexpr std::uint16_t flag_client = 0x1;
constexpr std::uint16_t flag_reply = 0x2;
constexpr std::uint16_t flag_warmup = 0x4;
std::string sockperf_message(std::uint64_t seq, std::uint16_t flags, std::uint32_t length, std::uint64_t seed);
std::string sockperf_reply(std::string m);

// Catch's --rng-seed, or a random one when it is 0.
std::uint64_t test_seed();

}  // namespace shardd::test
