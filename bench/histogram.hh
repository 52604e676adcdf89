#pragma once
// Latency histogram for shardd-bench: one per executor, recorded on the
// request path without locks or allocation, merged once at the end of a run.
//
// The layout is HdrHistogram's log-linear one. Values 0..255 each get their
// own bucket; above that every power-of-two range [2^e, 2^(e+1)) is cut into
// 128 equal sub-buckets of width 2^(e-7). A bucket's width is then at most
// 1/128 of any value in it, so reporting a bucket's highest value overstates
// a latency by less than 0.8% at any magnitude, with no per-decade tuning.
//
// Why not a sorted sample or a t-digest: percentiles of merged per-shard
// histograms are exact up to bucket width, merging is one add per bucket, and
// memory does not grow with the run.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace shardd::bench {

// Values are nanoseconds. The counters live inside the object (~36 KiB): keep
// it in per-executor state, not on a small coroutine or thread stack.
class latency_histogram {
public:
    // Sub-buckets per power of two: 2^7 = 128 bounds the relative error by
    // 1/128 < 0.8%, inside the 1% budget. One more bit would halve the error
    // but double the memory for no gain in a p99 report.
    static constexpr unsigned sub_bucket_bits = 7;
    // Values up to 2^42 - 1 ns (about 73 minutes) are bucketed: a request
    // longer than an hour is a hang, not a latency, so it is clamped into the
    // top bucket and counted in overflows() rather than paying for more range.
    static constexpr unsigned range_bits = 42;
    static constexpr std::uint64_t highest_trackable = (std::uint64_t{1} << range_bits) - 1;
    // Bucket 0..255 for the exact values below 2^8, then 128 buckets for each
    // of the 34 power-of-two ranges 2^8 .. 2^42.
    static constexpr std::size_t bucket_count = std::size_t{range_bits - sub_bucket_bits + 1} << sub_bucket_bits;

    latency_histogram() noexcept = default;

    // O(1) and allocation-free: a count-leading-zeros and two shifts find the
    // bucket. Inline because it runs once per response on every executor and
    // the bench is not built with LTO.
    void record(std::uint64_t ns) noexcept { record_n(ns, 1); }
    void record_n(std::uint64_t ns, std::uint64_t count) noexcept {
        if (count == 0) {
            return;  // a zero count must not move min() or max()
        }
        if (ns > highest_trackable) {
            _overflows += count;
        }
        _counts[bucket_of(ns)] += count;
        _count += count;
        _sum += static_cast<double>(ns) * static_cast<double>(count);
        _min = std::min(_min, ns);
        _max = std::max(_max, ns);
    }

    // Exact: every histogram has the same compile-time layout.
    void merge(const latency_histogram& other) noexcept;
    void reset() noexcept;

    std::uint64_t count() const noexcept { return _count; }
    std::uint64_t min() const noexcept { return _count == 0 ? 0 : _min; }  // exact, 0 when empty
    std::uint64_t max() const noexcept { return _max; }                    // exact, 0 when empty
    double mean() const noexcept;                                          // of the exact values, 0 when empty
    // The value at percentile p (0..100]: the highest value of the bucket that
    // holds the sample of rank ceil(p/100 * count), as HdrHistogram's
    // valueAtPercentile, so it never understates a latency within the range.
    // Capped at max(); p100 is max() exactly even when max() overflowed. 0
    // when empty.
    std::uint64_t percentile(double p) const noexcept;
    // Samples above highest_trackable; they count in the top bucket.
    std::uint64_t overflows() const noexcept { return _overflows; }
    std::size_t memory_bytes() const noexcept { return sizeof(*this); }

    // Calls f(value_upper_bound, cumulative_count) for each non-empty bucket
    // in increasing order; the top bucket's bound is highest_trackable.
    template <typename F>
    void for_each_bucket(F&& f) const {
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < bucket_count; ++i) {
            if (_counts[i] != 0) {
                cumulative += _counts[i];
                f(highest_in_bucket(i), cumulative);
            }
        }
    }

private:
    // Values below 2^(sub_bucket_bits + 1) all fall in magnitude 0; OR-ing
    // them in makes the magnitude of small values 0 without a branch.
    static constexpr std::uint64_t low_mask = (std::uint64_t{1} << (sub_bucket_bits + 1)) - 1;

    static std::size_t bucket_of(std::uint64_t ns) noexcept {
        const std::uint64_t v = std::min(ns, highest_trackable);
        // magnitude m: buckets in this power of two are 2^m wide.
        const unsigned m = static_cast<unsigned>(std::bit_width(v | low_mask)) - (sub_bucket_bits + 1);
        // v >> m is in [128, 256) for m > 0 (the top half), [0, 256) for m = 0,
        // so magnitude m starts at index (m + 1) * 128.
        return (std::size_t{m} << sub_bucket_bits) + static_cast<std::size_t>(v >> m);
    }
    static std::uint64_t highest_in_bucket(std::size_t index) noexcept {
        const std::size_t m = std::max<std::size_t>(index >> sub_bucket_bits, 1) - 1;
        const std::uint64_t sub = index - (m << sub_bucket_bits);
        return ((sub + 1) << m) - 1;
    }

    std::array<std::uint64_t, bucket_count> _counts{};
    std::uint64_t _count = 0;
    std::uint64_t _overflows = 0;
    // A double never wraps; it stays exact up to 2^53 ns (104 days) of summed
    // latency, far beyond a bench run.
    double _sum = 0;
    std::uint64_t _min = std::numeric_limits<std::uint64_t>::max();
    std::uint64_t _max = 0;
};

}  // namespace shardd::bench
