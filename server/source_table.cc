#include "server/source_table.hh"

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <stdexcept>

namespace shardd::server {

namespace {

constexpr std::uint64_t count_mask = 0xffff;
constexpr std::uint64_t tag_mask = (std::uint64_t{1} << 48) - 1;
constexpr std::size_t cache_line = 64;
// One token, in the bucket's unit.
constexpr std::uint64_t milli = 1000;
// A bucket refills from empty in one second, whatever the rate.
constexpr std::uint32_t refill_ms = 1000;
// Rescans of one admission: each is caused by another shard changing the
// window under us (a reclaim, a claim, a racing first connection), so more
// than a few in a row does not happen; the bound only makes admission
// wait-free in the worst case (the caller fails open, as for table_full).
constexpr int max_attempts = 64;

std::uint64_t tag_of(std::uint64_t state) { return state >> 16; }
std::uint64_t count_of(std::uint64_t state) { return state & count_mask; }
std::uint64_t make_state(std::uint64_t tag, std::uint64_t count) { return tag << 16 | count; }

std::uint32_t bucket_time(std::uint64_t bucket) { return static_cast<std::uint32_t>(bucket >> 32); }
std::uint64_t bucket_tokens(std::uint64_t bucket) { return bucket & 0xffffffff; }
std::uint64_t make_bucket(std::uint32_t time, std::uint64_t tokens) { return std::uint64_t{time} << 32 | tokens; }

// A bucket that reads as full at `now` and for the next 49 days, at any
// rate: it was last taken from one refill ago.
std::uint64_t full_bucket(std::uint32_t now) { return make_bucket(now - refill_ms, 0); }

// Milliseconds since the bucket's last take; 0 if that take was stamped by a
// shard whose clock read came slightly after ours (see
// clock_skew_tolerance_ms), rather than wrapping to 49.7 days.
std::uint32_t elapsed_since(std::uint64_t bucket, std::uint32_t now) {
    std::uint32_t ahead = bucket_time(bucket) - now;
    if (ahead <= source_table::clock_skew_tolerance_ms) {
        return 0;
    }
    return now - bucket_time(bucket);
}

// Thousandths of a token in `bucket` at `now`: `rate` tokens a second are
// `rate` thousandths a millisecond.
std::uint64_t available(std::uint64_t bucket, std::uint32_t rate, std::uint32_t now) {
    const std::uint64_t capacity = std::uint64_t{rate} * milli;
    const std::uint32_t elapsed = elapsed_since(bucket, now);
    if (elapsed >= refill_ms) {
        return capacity;
    }
    return std::min(capacity, bucket_tokens(bucket) + std::uint64_t{elapsed} * rate);
}

bool is_full(std::uint64_t bucket, std::uint32_t rate, std::uint32_t now) {
    return rate == 0 || available(bucket, rate, now) >= std::uint64_t{rate} * milli;
}

// SipHash-2-4 (Aumasson and Bernstein): keyed, so that the slots and tags of
// addresses cannot be computed by a peer choosing its addresses.
std::uint64_t siphash(const std::uint64_t key[2], const unsigned char* data, std::size_t len) {
    std::uint64_t v0 = 0x736f6d6570736575 ^ key[0];
    std::uint64_t v1 = 0x646f72616e646f6d ^ key[1];
    std::uint64_t v2 = 0x6c7967656e657261 ^ key[0];
    std::uint64_t v3 = 0x7465646279746573 ^ key[1];
    auto round = [&] {
        v0 += v1;
        v1 = std::rotl(v1, 13);
        v1 ^= v0;
        v0 = std::rotl(v0, 32);
        v2 += v3;
        v3 = std::rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = std::rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = std::rotl(v1, 17);
        v1 ^= v2;
        v2 = std::rotl(v2, 32);
    };
    auto load_le = [](const unsigned char* p, std::size_t n) {
        std::uint64_t m = 0;
        for (std::size_t i = 0; i < n; ++i) {
            m |= std::uint64_t{p[i]} << (8 * i);
        }
        return m;
    };
    std::size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        const std::uint64_t m = load_le(data + i, 8);
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
    const std::uint64_t last = std::uint64_t{len} << 56 | load_le(data + i, len - i);
    v3 ^= last;
    round();
    round();
    v0 ^= last;
    v2 ^= 0xff;
    for (int r = 0; r < 4; ++r) {
        round();
    }
    return v0 ^ v1 ^ v2 ^ v3;
}

}  // namespace

const char* to_string(admission::verdict v) noexcept {
    switch (v) {
    case admission::admitted: return "admitted";
    case admission::over_connections: return "over max_connections_per_source";
    case admission::over_rate: return "over connection_rate_per_source";
    case admission::table_full: return "source table full";
    }
    return "?";
}

void source_table::slot_array_delete::operator()(slot* p) const noexcept {
    // The slots' atomics are trivially destructible: nothing to run first.
    ::operator delete[](p, std::align_val_t{cache_line});
}

source_table::source_table(std::size_t slots)
    : _mask(slots - 1), _window(std::min(probe_window, slots)), _epoch(std::chrono::steady_clock::now()) {
    if (!std::has_single_bit(slots)) {
        throw std::invalid_argument("source_table: slots must be a power of two");
    }
    // On a cache line, so that a window of 16 slots is 4 lines, not 5.
    auto* raw = static_cast<slot*>(::operator new[](slots * sizeof(slot), std::align_val_t{cache_line}));
    _slots.reset(raw);
    const std::uint64_t initial_bucket = full_bucket(0);
    for (std::size_t i = 0; i < slots; ++i) {
        auto* s = new (&raw[i]) slot;
        s->state.store(0, std::memory_order_relaxed);
        s->bucket.store(initial_bucket, std::memory_order_relaxed);
    }
    std::random_device rd;
    for (auto& k : _hash_key) {
        k = std::uint64_t{rd()} << 32 | rd();
    }
}

std::int64_t source_table::now_ms() const noexcept {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - _epoch).count();
}

bool source_table::make_key(const socket_address& source, key& out) const noexcept {
    const unsigned char* bytes = nullptr;
    std::size_t len = 0;
    if (source.family() == AF_INET) {
        bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<const sockaddr_in*>(source.get())->sin_addr);
        len = 4;
    } else if (source.family() == AF_INET6) {
        const auto* a6 = &reinterpret_cast<const sockaddr_in6*>(source.get())->sin6_addr;
        bytes = reinterpret_cast<const unsigned char*>(a6);
        len = 16;
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: the same
        // client, the same key.
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            bytes += 12;
            len = 4;
        }
    } else {
        return false;
    }
    const std::uint64_t h = siphash(_hash_key, bytes, len);
    out.tag = (h >> 16) & tag_mask;
    if (out.tag == 0) {
        out.tag = 1;
    }
    out.start = h & _mask;
    return true;
}

bool source_table::counted_elsewhere(const key& k, std::size_t self) const noexcept {
    for (std::size_t n = 0; n < _window; ++n) {
        const std::size_t i = (k.start + n) & _mask;
        if (i == self) {
            continue;
        }
        const std::uint64_t st = _slots[i].state.load();
        if (tag_of(st) == k.tag && count_of(st) > 0) {
            return true;
        }
    }
    return false;
}

bool source_table::take_token(slot& s, std::uint32_t rate, std::uint32_t now) noexcept {
    std::uint64_t b = s.bucket.load(std::memory_order_relaxed);
    while (true) {
        const std::uint64_t avail = available(b, rate, now);
        if (avail < milli) {
            return false;
        }
        // Keep a later stamp from another shard: moving it back would
        // refill the bucket twice for the same milliseconds.
        const std::uint32_t stamp = elapsed_since(b, now) == 0 ? bucket_time(b) : now;
        if (s.bucket.compare_exchange_weak(b, make_bucket(stamp, avail - milli), std::memory_order_acq_rel,
                                           std::memory_order_relaxed)) {
            return true;
        }
    }
}

void source_table::release(std::size_t slot_index) noexcept {
    // The ticket's own count keeps the slot from being reclaimed, so the tag
    // cannot change under us and subtracting 1 never borrows from it: a
    // plain atomic subtraction is the CAS loop "count - 1, same tag".
    _slots[slot_index].state.fetch_sub(1);
}

admission source_table::admit(const socket_address& source, std::uint32_t max_connections,
                              std::uint32_t rate_per_second, std::int64_t now_time) {
    key k;
    if (!make_key(source, k)) {
        return admission{admission::admitted, {}};
    }
    const std::uint64_t max =
        max_connections == 0 ? max_connections_limit : std::min(max_connections, max_connections_limit);
    const std::uint32_t rate = std::min(rate_per_second, max_rate_per_second);
    // The bucket keeps 32 bits of milliseconds: compared modulo 2^32.
    const auto now = static_cast<std::uint32_t>(now_time);

    // The state words are accessed seq_cst: an increment followed by the
    // counted_elsewhere() scan, on two shards at once, is Dekker's pattern,
    // and it is the total order that guarantees at least one of them sees
    // the other's increment.
    for (int attempt = 0; attempt < max_attempts; ++attempt) {
        // One pass: this source's slot (one with connections first: an idle
        // duplicate left over from a race must not be joined while another
        // slot of the source counts, or we would give back forever), else
        // the first free one.
        std::size_t found = _window;
        std::uint64_t found_state = 0;
        std::size_t vacant = _window;
        std::uint64_t vacant_state = 0;
        for (std::size_t n = 0; n < _window; ++n) {
            const std::size_t i = (k.start + n) & _mask;
            const std::uint64_t st = _slots[i].state.load();
            if (tag_of(st) == k.tag) {
                if (found == _window || (count_of(found_state) == 0 && count_of(st) > 0)) {
                    found = i;
                    found_state = st;
                }
            } else if (vacant == _window &&
                       (tag_of(st) == 0 ||
                        (count_of(st) == 0 && is_full(_slots[i].bucket.load(std::memory_order_acquire), rate, now)))) {
                vacant = i;
                vacant_state = st;
            }
        }

        std::size_t at = _window;
        if (found != _window) {
            std::uint64_t st = found_state;
            while (tag_of(st) == k.tag) {
                if (count_of(st) >= max) {
                    return admission{admission::over_connections, {}};
                }
                if (_slots[found].state.compare_exchange_weak(st, st + 1)) {
                    at = found;
                    break;
                }
            }
            if (at == _window) {
                continue;  // reclaimed by another source under us
            }
        } else if (vacant != _window) {
            slot& s = _slots[vacant];
            // Make the bucket full before the slot is ours, so that a shard
            // joining the moment we claim it never finds a stale one (a
            // never-used slot's may have wrapped). A CAS, so as never to
            // overwrite a take; and it only succeeds on a bucket we judged
            // full (or one of no source), so it cannot refill anyone's.
            std::uint64_t b = s.bucket.load(std::memory_order_acquire);
            if (tag_of(vacant_state) != 0 && !is_full(b, rate, now)) {
                continue;
            }
            s.bucket.compare_exchange_strong(b, full_bucket(now), std::memory_order_acq_rel);
            if (!s.state.compare_exchange_strong(vacant_state, make_state(k.tag, 1))) {
                continue;  // taken under us, perhaps by this very source
            }
            at = vacant;
        } else {
            return admission{admission::table_full, {}};
        }

        if (counted_elsewhere(k, at)) {
            // Another shard placed this source in another slot at the same
            // time; give ours back and join whichever survives.
            release(at);
            continue;
        }
        if (rate != 0 && !take_token(_slots[at], rate, now)) {
            release(at);
            return admission{admission::over_rate, {}};
        }
        return admission{admission::admitted, source_ticket(this, at)};
    }
    return admission{admission::table_full, {}};
}

std::uint32_t source_table::connections(const socket_address& source) const noexcept {
    key k;
    if (!make_key(source, k)) {
        return 0;
    }
    std::uint32_t total = 0;
    for (std::size_t n = 0; n < _window; ++n) {
        const std::uint64_t st = _slots[(k.start + n) & _mask].state.load();
        if (tag_of(st) == k.tag) {
            total += static_cast<std::uint32_t>(count_of(st));
        }
    }
    return total;
}

}  // namespace shardd::server
