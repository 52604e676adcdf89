#include "bench/histogram.hh"

#include <cmath>

namespace shardd::bench {

namespace {

// p/100 * count is computed in doubles, and a percentile such as 99.9 has no
// exact binary form: 99.9% of a count can come out a hair above the integer
// rank it means, and ceil would then skip to the next sample. Shaving a
// relative 1e-9 absorbs that rounding (about 1e-16) while moving no rank that
// a percentile written with a few decimals really asks for.
constexpr double rank_rounding_slack = 1e-9;

}  // namespace

void latency_histogram::merge(const latency_histogram& other) noexcept {
    for (std::size_t i = 0; i < bucket_count; ++i) {
        _counts[i] += other._counts[i];
    }
    _count += other._count;
    _overflows += other._overflows;
    _sum += other._sum;
    _min = std::min(_min, other._min);
    _max = std::max(_max, other._max);
}

void latency_histogram::reset() noexcept {
    // Field by field rather than assigning a fresh object: that would build a
    // 36 KiB temporary on the caller's stack in an unoptimised build.
    _counts.fill(0);
    _count = 0;
    _overflows = 0;
    _sum = 0;
    _min = std::numeric_limits<std::uint64_t>::max();
    _max = 0;
}

double latency_histogram::mean() const noexcept { return _count == 0 ? 0.0 : _sum / static_cast<double>(_count); }

std::uint64_t latency_histogram::percentile(double p) const noexcept {
    if (_count == 0) {
        return 0;
    }
    // Written so that NaN and p <= 0 ask for the lowest sample, p >= 100 for
    // the highest.
    const double fraction = p >= 100 ? 1.0 : (p > 0 ? p / 100 : 0.0);
    const double wanted = fraction * static_cast<double>(_count);
    const auto rank =
        std::clamp<std::uint64_t>(static_cast<std::uint64_t>(std::ceil(wanted * (1 - rank_rounding_slack))), 1, _count);
    if (rank == _count) {
        // The highest sample is max() by definition; its bucket's bound would
        // understate it when it overflowed the range.
        return _max;
    }
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
        seen += _counts[i];
        if (seen >= rank) {
            return std::min(highest_in_bucket(i), _max);
        }
    }
    return _max;  // unreachable: the buckets hold _count samples
}

}  // namespace shardd::bench
