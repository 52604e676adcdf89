#pragma once
// source_table: per source address, the connections one listener has open
// and the rate at which it accepts new ones, over all shards together, for
// `max_connections_per_source` and `connection_rate_per_source`. Lock-free
// and bounded: a fixed array of 16-byte slots, allocated once (slots × 16
// bytes: 1 MiB for default_source_slots), shared by every shard of the
// listener.
//
// A slot is two words, each changed only by one CAS (or atomic add) at a
// time:
//   state:  48-bit tag of the address | 16-bit count of open connections
//   bucket: 32-bit time of the last take, ms | tokens left, in thousandths
// The tag comes from a keyed hash (SipHash-2-4 under a random per-table key)
// of the address bytes (4 for IPv4, an IPv4-mapped IPv6 address included;
// 16 for IPv6; never the port), so that a peer cannot pick addresses that
// collide with a victim's and spend its limits. Tag 0 marks an empty slot.
//
// A source's slot is looked up in a window of probe_window slots from its
// hash. A new source takes the first slot in the window that is empty or
// reclaimable: no connection open (count 0) and a full bucket (no rate
// limit, or refilled since the last take). Count 0 is what makes a reclaim
// safe: a reclaim is CAS(old tag | 0 -> new tag | 1) and an increment
// CAS(tag | n -> tag | n + 1) on the same word, so they cannot both win.
// The full bucket is what keeps a source under its rate limit from escaping
// it by being evicted.
//
// Admission checks the count first (a connection refused for its count
// spends no token), then takes a token (a connection refused for its rate
// gives its count back). Refusals write nothing to the bucket.
//
// table_full: every slot of the window belongs to a source with connections
// open or a bucket not yet full. The caller then admits the connection
// uncounted (fail open: a peer that fills the table from many addresses must
// not lock out every new client; the listener's own max_connections still
// bounds them), counts it and logs a warning once. An admission that finds
// the window changed under it by other shards 64 times in a row (not seen in
// the stress test; the bound keeps admission wait-free) answers table_full
// too.
//
// Limits and races, all bounded:
// - Counts are 16 bits: max_connections is at most max_connections_limit
//   (65535; 0 means that). Rates are at most max_rate_per_second (the
//   config's bound), so that a full bucket fits 32 bits of thousandths.
// - Two shards that place a new source at once may, if the window changes
//   under them, take two slots for it. Every increment is therefore checked
//   afterwards against the rest of the window and given back (and retried)
//   if another slot of the same source has connections open: admitted
//   connections of one source are only ever counted in one slot, so the
//   count limit holds exactly. A slot left over holds count 0 and is
//   reclaimed like any idle one. Its bucket may have served the racing first
//   connections: one burst too many, once.
// - A reclaim reads the count and the bucket, then CASes the state. If a
//   whole connection of the old source (admitted and closed) fits between,
//   the CAS still wins and that source's last take is forgotten: it gets a
//   fresh bucket, one burst more, only when the reclaiming shard stalls
//   between two loads and a CAS.
// - Times are 32-bit ms, compared by unsigned subtraction. A take stamped by
//   a shard whose clock read came a little later than ours reads as "just
//   now" (within clock_skew_tolerance_ms), never as ~49.7 days old; and a
//   bucket last used exactly a multiple of 2^32 ms (49.7 days) ago, to
//   within that tolerance and one second, reads as less full than it is.

#include "reactor/socket_address.hh"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace shardd::server {

// 65536 slots, 1 MiB per listener that sets a per-source limit. A source
// holds a slot while it has connections open and, under a rate limit, up to
// a second after its last one; kept at most about half full (where a probe
// window rarely fills by chance) the table tracks some 32,000 such sources,
// more than one listener sees outside of a flood, and a flood fails open.
inline constexpr std::size_t default_source_slots = 65536;

class source_table;

// One admitted connection's place in its source's count, given back when it
// is destroyed or reset(). Movable; holds the table, which must outlive it.
class source_ticket {
public:
    source_ticket() = default;
    source_ticket(source_ticket&& o) noexcept : _table(std::exchange(o._table, nullptr)), _slot(o._slot) {}
    source_ticket& operator=(source_ticket&& o) noexcept {
        if (this != &o) {
            reset();
            _table = std::exchange(o._table, nullptr);
            _slot = o._slot;
        }
        return *this;
    }
    source_ticket(const source_ticket&) = delete;
    source_ticket& operator=(const source_ticket&) = delete;
    ~source_ticket() { reset(); }

    explicit operator bool() const noexcept { return _table != nullptr; }
    void reset() noexcept;

private:
    friend class source_table;
    source_ticket(source_table* table, std::size_t slot) noexcept : _table(table), _slot(slot) {}

    source_table* _table = nullptr;
    std::size_t _slot = 0;
};

struct admission {
    enum verdict { admitted, over_connections, over_rate, table_full };
    verdict result = table_full;
    // Set when admitted, except for an address that is neither IPv4 nor
    // IPv6 (nothing to count it by: admitted uncounted).
    source_ticket ticket;
};

const char* to_string(admission::verdict v) noexcept;

class source_table {
public:
    // Slots in the window a source may live in: a few cache lines read per
    // admission; with the table at most about half full, the chance that 16
    // slots in a row are all taken is negligible (about 2^-16 at half full
    // for independent slots; linear probing's clustering makes it larger,
    // still rare).
    static constexpr std::size_t probe_window = 16;
    // The count is a 16-bit field.
    static constexpr std::uint32_t max_connections_limit = 65535;
    // The config's bound (config/reader_impl.hh); a full bucket of it,
    // 10^9 thousandths, fits the bucket's 32 bits.
    static constexpr std::uint32_t max_rate_per_second = 1'000'000;
    // How far another shard's clock read may be ahead of ours and still be
    // taken for "now" rather than for a time 49.7 days ago (which would read
    // as a full bucket). Clock reads of two shards admitting at once differ
    // by microseconds; a second covers a shard preempted between its clock
    // read and its CAS.
    static constexpr std::uint32_t clock_skew_tolerance_ms = 1000;

    // `slots` must be a power of two (std::invalid_argument otherwise).
    explicit source_table(std::size_t slots = default_source_slots);
    source_table(const source_table&) = delete;
    source_table& operator=(const source_table&) = delete;

    // Admits a new connection from `source` or says which limit refuses
    // it. 0 means no limit for either; max_connections is capped at
    // max_connections_limit, rate_per_second at max_rate_per_second. `now_time`
    // is now_ms() (a parameter so that tests need no sleeps).
    admission admit(const socket_address& source, std::uint32_t max_connections, std::uint32_t rate_per_second,
                    std::int64_t now_time);

    // Open connections counted for `source` (0 when absent). For tests and
    // metrics: a plain scan, exact while no admission is under way.
    std::uint32_t connections(const socket_address& source) const noexcept;

    std::size_t slots() const noexcept { return _mask + 1; }

    // Milliseconds on the steady clock since this table was created.
    std::int64_t now_ms() const noexcept;

private:
    friend class source_ticket;

    // 16 bytes, four to a cache line; the array starts on a line.
    struct alignas(16) slot {
        std::atomic<std::uint64_t> state;
        std::atomic<std::uint64_t> bucket;
    };
    struct slot_array_delete {
        void operator()(slot* p) const noexcept;
    };

    struct key {
        std::uint64_t tag;
        std::size_t start;
    };
    // False for an address that is neither IPv4 nor IPv6.
    bool make_key(const socket_address& source, key& out) const noexcept;
    // Another slot of the window than `self` holds `tag` with connections.
    bool counted_elsewhere(const key& k, std::size_t self) const noexcept;
    bool take_token(slot& s, std::uint32_t rate, std::uint32_t now) noexcept;
    void release(std::size_t slot_index) noexcept;

    std::unique_ptr<slot[], slot_array_delete> _slots;
    std::size_t _mask;
    std::size_t _window;
    std::uint64_t _hash_key[2];
    std::chrono::steady_clock::time_point _epoch;
};

inline void source_ticket::reset() noexcept {
    if (_table) {
        std::exchange(_table, nullptr)->release(_slot);
    }
}

}  // namespace shardd::server
