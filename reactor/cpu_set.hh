#pragma once
// A set of CPU numbers, and the two affinity calls the runtime needs.
//
// The allowed set comes from sched_getaffinity(0), not /sys/.../online: it
// honours taskset, cgroup cpusets and systemd's CPUAffinity=, which is what an
// operator means by "the CPUs this daemon may use".

#include "reactor/expected.hh"

#include <string>
#include <system_error>
#include <vector>

namespace shardd {

class cpu_set {
public:
    cpu_set() = default;
    explicit cpu_set(std::vector<unsigned> cpus);

    void add(unsigned cpu);
    bool contains(unsigned cpu) const noexcept;
    bool empty() const noexcept { return _cpus.empty(); }
    std::size_t size() const noexcept { return _cpus.size(); }
    // Sorted ascending, no duplicates.
    const std::vector<unsigned>& cpus() const noexcept { return _cpus; }

    // Kernel list format, as in /proc/PID/status Cpus_allowed_list: "0-3,6".
    std::string to_string() const;

    bool operator==(const cpu_set&) const = default;

private:
    std::vector<unsigned> _cpus;
};

// CPUs this process may run on.
expected<cpu_set> allowed_cpus();

// Pins the calling thread to exactly one CPU.
std::error_code pin_current_thread(unsigned cpu);
// Lets the calling thread run on `cpus` only (not empty).
std::error_code set_current_thread_cpus(const cpu_set& cpus);

}  // namespace shardd
