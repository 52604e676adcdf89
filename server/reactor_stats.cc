#include "server/reactor_stats.hh"

#include "reactor/buffer_ring.hh"
#include "reactor/executor.hh"

#include <algorithm>
#include <cstring>

namespace shardd::server {

void reactor_stats::publish(executor& ex, const buffer_ring* buffers) noexcept {
    const internal::ring* r[3] = {&ex.main_ring(), &ex.latency_ring(), &ex.poll_ring()};
    for (std::size_t i = 0; i < rings.size(); ++i) {
        rings[i].enters.set(r[i]->enters());
        rings[i].cqes.set(r[i]->cqes_reaped());
    }
    parks.set(ex.parks());
    eventfd_wakeups.set(ex.wakeups_by_eventfd());
    stalls.set(ex.stalls());
    if (buffers) {
        free_buffers.set(buffers->free_buffers());
        total_buffers.set(buffers->count());
    }
    const unsigned published = queue_count.load(std::memory_order_relaxed);
    const std::size_t n = std::min(ex.queue_count(), queues.size());
    for (std::size_t i = 0; i < n; ++i) {
        const task_queue_stats& st = ex.stats(task_queue_handle{static_cast<unsigned>(i)});
        queue_stats& q = queues[i];
        if (i >= published) {
            const std::size_t len = std::min(st.name.size(), max_queue_name);
            std::memcpy(q.name.data(), st.name.data(), len);
            q.name[len] = '\0';
        }
        q.runtime_ns.set(static_cast<std::uint64_t>(st.runtime.count()));
        q.tasks_run.set(st.tasks_run);
        q.slices.set(st.slices);
        q.preempted.set(st.preempted);
    }
    if (n > published) {
        queue_count.store(static_cast<unsigned>(n), std::memory_order_release);
    }
}

}  // namespace shardd::server
