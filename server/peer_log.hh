#pragma once
// Log lines that peers cause (a protocol error, say), rate-limited per
// shard. A peer that connects and sends garbage in a loop must not turn
// every shard into a log writer: each line costs a getpeername() and a
// write to a sink whose mutex every shard shares. At most `burst` lines per
// second per shard get logged; the rest are counted (shard_counters::
// log_suppressed), and the next line logged says how many were left out.

#include "server/counters.hh"

#include <chrono>
#include <cstdint>

namespace shardd::server {

class peer_log {
public:
    // 10 lines a second: enough to see what is going on, and a few
    // microseconds of a shard's second at most.
    static constexpr unsigned default_burst = 10;

    explicit peer_log(shard_counter& suppressed, unsigned burst = default_burst)
        : _suppressed_total(suppressed), _burst(burst) {}

    // Whether to log a line now. When it says no, the line is counted as
    // suppressed.
    bool allow() {
        const auto now = std::chrono::steady_clock::now();
        if (now - _window_start >= std::chrono::seconds(1)) {
            _window_start = now;
            _in_window = 0;
        }
        if (_in_window < _burst) {
            ++_in_window;
            return true;
        }
        ++_suppressed;
        _suppressed_total.add();
        return false;
    }
    // Lines suppressed since the last call: for the next line logged.
    std::uint64_t take_suppressed() noexcept { return std::exchange(_suppressed, 0); }

private:
    shard_counter& _suppressed_total;
    unsigned _burst;
    unsigned _in_window = 0;
    std::uint64_t _suppressed = 0;
    std::chrono::steady_clock::time_point _window_start{};
};

}  // namespace shardd::server
