#include "reactor/internal/ring.hh"

#include <ctime>

namespace shardd::internal {

const char* to_string(ring_kind kind) {
    switch (kind) {
    case ring_kind::main: return "main";
    case ring_kind::latency: return "latency";
    case ring_kind::poll: return "poll";
    }
    return "?";
}

bool ring::deadline_passed() const noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const auto now = static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
    return now >= _next_deadline;
}

bool ring::run_deferred(bool discard) noexcept {
    if (!_deferred_head) {
        return false;
    }
    while (deferred_action* a = _deferred_head) {
        _deferred_head = a->next;
        if (!_deferred_head) {
            _deferred_tail = nullptr;
        }
        a->next = nullptr;
        a->queued = false;
        a->fn(a, discard);
    }
    return true;
}

}  // namespace shardd::internal
