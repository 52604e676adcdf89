#pragma once
// The bytes shardd-bench sends, so that every byte that comes back can be
// checked. Byte o of connection c's stream is table[(c * stride + o) % size]:
// a per-process table of pseudo-random bytes whose length is a prime, so a
// dropped, duplicated or reordered run of bytes shifts the stream out of step
// with the table (unless its length is a multiple of the prime, 65521 bytes)
// and a flipped byte differs. Filling and checking are memcpy/memcmp of
// table slices: cheap enough that the client outruns the server.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace shardd::bench {

class pattern {
public:
    // A prime: see above.
    static constexpr std::size_t size = 65521;
    // Connections start this far apart in the table.
    static constexpr std::size_t stride = 7919;

    pattern() : _table(2 * size) {
        std::uint64_t x = 0x9e3779b97f4a7c15ull;
        for (std::size_t i = 0; i < size; ++i) {
            // splitmix64
            x += 0x9e3779b97f4a7c15ull;
            std::uint64_t z = x;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            _table[i] = static_cast<std::byte>(z ^ (z >> 31));
        }
        // Doubled, so any slice of up to `size` bytes is contiguous.
        std::memcpy(_table.data() + size, _table.data(), size);
    }

    // Writes bytes [offset, offset + len) of connection `conn`'s stream.
    void fill(std::uint64_t conn, std::uint64_t offset, std::byte* out, std::size_t len) const {
        while (len > 0) {
            const std::size_t start = position(conn, offset);
            const std::size_t n = std::min(len, size);
            std::memcpy(out, _table.data() + start, n);
            out += n;
            offset += n;
            len -= n;
        }
    }

    // True if `data` is bytes [offset, offset + len) of the stream.
    bool matches(std::uint64_t conn, std::uint64_t offset, const std::byte* data, std::size_t len) const {
        while (len > 0) {
            const std::size_t start = position(conn, offset);
            const std::size_t n = std::min(len, size);
            if (std::memcmp(data, _table.data() + start, n) != 0) {
                return false;
            }
            data += n;
            offset += n;
            len -= n;
        }
        return true;
    }

private:
    static std::size_t position(std::uint64_t conn, std::uint64_t offset) {
        return static_cast<std::size_t>((conn * stride + offset) % size);
    }
    std::vector<std::byte> _table;
};

}  // namespace shardd::bench
