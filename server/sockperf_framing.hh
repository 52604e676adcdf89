#pragma once
// sockperf's TCP framing, parsed in place across arbitrary segment
// boundaries (DESIGN.md §5). Every message starts with a 14-byte big-endian
// header: u64 sequence, u16 flags, u32 total length (header included).
// Flags: 0x1 sent by the client, 0x2 reply requested, 0x4 warm-up. A server
// replies with the very message, 0x1 cleared, only when 0x2 is set and 0x4
// is not.
//
// The parser copies no payload: it clears 0x1 in the received buffer itself
// and hands back the byte ranges to send. It keeps no received buffer
// either: a header cut by a segment boundary is copied into the parser's
// 14-byte store as it arrives, so the buffers that carried its first bytes
// can go back to the pool at once, and its reply header is sent from a copy
// (header_copies) rather than from those buffers.

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <sys/uio.h>
#include <vector>

namespace shardd::server {

inline constexpr std::size_t sockperf_header_size = 14;

// Reply headers copied out of the parser (headers that a segment boundary
// cut). A deque: the ranges in `out` point into it, so its elements must not
// move while more are added. The caller clears it once `out` is sent.
using header_copies = std::deque<std::array<std::byte, sockperf_header_size>>;

class sockperf_framing {
public:
    explicit sockperf_framing(std::uint64_t max_message) : _max_message(max_message) {}

    // Parses the next received chunk. Appends what to send back to `out`:
    // ranges of `data`, and of `copies` for a reply header that began in an
    // earlier chunk. Nothing in `out` points into an earlier chunk. Returns an
    // empty string, or why the stream is not sockperf (a length below 14 or
    // above max_message): the caller sends what `out` holds, then closes.
    std::string feed(std::byte* data, std::size_t len, std::vector<iovec>& out, header_copies& copies);

    // Bytes of a header received so far and not yet complete (0 to 13).
    std::size_t partial_header() const noexcept { return _header_pos; }
    std::uint64_t replies() const noexcept { return _replies; }
    std::uint64_t messages() const noexcept { return _messages; }

private:
    void header_complete(std::vector<iovec>& out, header_copies& copies, std::string& error);

    std::uint64_t _max_message;
    // The current message: header bytes so far (copied, to decode and, when
    // cut, to reply from), where the header began when it began in the
    // current chunk, and how much of the body is left.
    std::array<std::byte, sockperf_header_size> _header{};
    std::size_t _header_pos = 0;
    std::byte* _header_in_chunk = nullptr;
    std::uint64_t _body_left = 0;
    bool _in_body = false;
    bool _replying = false;
    std::uint64_t _replies = 0;
    std::uint64_t _messages = 0;
};

// Appends [data, data + len) to `out`, extending the last range when it ends
// where this one starts.
inline void append_range(std::vector<iovec>& out, std::byte* data, std::size_t len) {
    if (!out.empty() && static_cast<std::byte*>(out.back().iov_base) + out.back().iov_len == data) {
        out.back().iov_len += len;
    } else {
        out.push_back({data, len});
    }
}

}  // namespace shardd::server
