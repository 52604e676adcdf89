#include "server/heartbeat.hh"

namespace shardd::server {

std::int64_t steady_now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

void shard_heartbeat::beat() noexcept { steady_ns.store(steady_now_ns(), std::memory_order_relaxed); }

std::vector<unsigned> late_shards(const std::vector<shard_heartbeat>& beats, std::chrono::nanoseconds bound) {
    std::vector<unsigned> late;
    const std::int64_t now = steady_now_ns();
    for (std::size_t i = 0; i < beats.size(); ++i) {
        const std::int64_t beat = beats[i].steady_ns.load(std::memory_order_relaxed);
        if (beat == 0 || now - beat > bound.count()) {
            late.push_back(static_cast<unsigned>(i));
        }
    }
    return late;
}

}  // namespace shardd::server
