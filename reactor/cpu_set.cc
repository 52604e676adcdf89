#include "reactor/cpu_set.hh"

#include <algorithm>
#include <cerrno>
#include <memory>
#include <pthread.h>
#include <sched.h>

namespace shardd {

cpu_set::cpu_set(std::vector<unsigned> cpus) : _cpus(std::move(cpus)) {
    std::sort(_cpus.begin(), _cpus.end());
    _cpus.erase(std::unique(_cpus.begin(), _cpus.end()), _cpus.end());
}

void cpu_set::add(unsigned cpu) {
    auto it = std::lower_bound(_cpus.begin(), _cpus.end(), cpu);
    if (it == _cpus.end() || *it != cpu) {
        _cpus.insert(it, cpu);
    }
}

bool cpu_set::contains(unsigned cpu) const noexcept { return std::binary_search(_cpus.begin(), _cpus.end(), cpu); }

std::string cpu_set::to_string() const {
    std::string out;
    for (std::size_t i = 0; i < _cpus.size();) {
        std::size_t j = i;
        while (j + 1 < _cpus.size() && _cpus[j + 1] == _cpus[j] + 1) {
            ++j;
        }
        if (!out.empty()) {
            out += ',';
        }
        out += std::to_string(_cpus[i]);
        if (j > i) {
            out += '-';
            out += std::to_string(_cpus[j]);
        }
        i = j + 1;
    }
    return out;
}

namespace {
// CPU_SETSIZE is 1024; hosts with more CPUs exist, so size the mask
// dynamically and grow it while the kernel answers EINVAL.
constexpr int initial_cpu_mask_bits = 1024;
constexpr int max_cpu_mask_bits = 1 << 16;

struct cpu_mask_deleter {
    void operator()(cpu_set_t* p) const noexcept { CPU_FREE(p); }
};
}  // namespace

expected<cpu_set> allowed_cpus() {
    for (int bits = initial_cpu_mask_bits; bits <= max_cpu_mask_bits; bits *= 2) {
        std::unique_ptr<cpu_set_t, cpu_mask_deleter> mask(CPU_ALLOC(bits));
        if (!mask) {
            return unexpected{errno_code(ENOMEM)};
        }
        const std::size_t bytes = CPU_ALLOC_SIZE(bits);
        CPU_ZERO_S(bytes, mask.get());
        if (sched_getaffinity(0, bytes, mask.get()) != 0) {
            if (errno == EINVAL) {
                continue;
            }
            return unexpected{errno_code(errno)};
        }
        cpu_set out;
        for (int cpu = 0; cpu < bits; ++cpu) {
            if (CPU_ISSET_S(cpu, bytes, mask.get())) {
                out.add(static_cast<unsigned>(cpu));
            }
        }
        return out;
    }
    return unexpected{errno_code(EINVAL)};
}

std::error_code pin_current_thread(unsigned cpu) { return set_current_thread_cpus(cpu_set({cpu})); }

std::error_code set_current_thread_cpus(const cpu_set& cpus) {
    if (cpus.empty()) {
        return errno_code(EINVAL);
    }
    const int bits = static_cast<int>(cpus.cpus().back()) + 1;
    std::unique_ptr<cpu_set_t, cpu_mask_deleter> mask(CPU_ALLOC(bits));
    if (!mask) {
        return errno_code(ENOMEM);
    }
    const std::size_t bytes = CPU_ALLOC_SIZE(bits);
    CPU_ZERO_S(bytes, mask.get());
    for (unsigned cpu : cpus.cpus()) {
        CPU_SET_S(cpu, bytes, mask.get());
    }
    // pthread_setaffinity_np returns the error number instead of setting errno.
    if (int rc = pthread_setaffinity_np(pthread_self(), bytes, mask.get()); rc != 0) {
        return errno_code(rc);
    }
    return {};
}

}  // namespace shardd
