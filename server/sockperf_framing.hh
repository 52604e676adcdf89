#pragma once
// sockperf's TCP framing, parsed in place across arbitrary segment
// boundaries (DESIGN.md §5). Every message starts with a 14-byte big-endian
// header: u64 sequence, u16 flags, u32 total length (header included).
// Flags: 0x1 sent by the client, 0x2 reply requested, 0x4 warm-up. A server
// replies with the very message, 0x1 cleared, only when 0x2 is set and 0x4
// is not.
//
// The parser never copies payload: it clears 0x1 in the received buffer
// itself and hands back the byte ranges to send. Bytes of a header that is
// not complete yet stay in their buffers until it is (held_chunks()).

#include <cstddef>
#include <cstdint>
#include <string>
#include <sys/uio.h>
#include <vector>

namespace shardd::server {

inline constexpr std::size_t sockperf_header_size = 14;

class sockperf_framing {
public:
    explicit sockperf_framing(std::uint64_t max_message) : _max_message(max_message) {}

    // Parses the next received chunk. Appends what to send back to `out`
    // (pointing into `data`, or into earlier chunks for a header that began
    // there). Returns an empty string, or why the stream is not sockperf
    // (a length below 14 or above max_message): the caller closes it.
    std::string feed(std::byte* data, std::size_t len, std::vector<iovec>& out);

    // How many of the most recent chunks hold bytes of an incomplete header
    // (0 to 14): they must not be released yet.
    std::size_t held_chunks() const noexcept { return _header_parts; }

    std::uint64_t replies() const noexcept { return _replies; }
    std::uint64_t messages() const noexcept { return _messages; }

private:
    void header_complete(std::vector<iovec>& out, std::string& error);

    std::uint64_t _max_message;
    // The current message: header bytes so far (copied, to decode), where
    // they sit in the received buffers, and how much of the body is left.
    std::byte _header[sockperf_header_size]{};
    std::size_t _header_pos = 0;
    iovec _header_iov[sockperf_header_size]{};
    std::size_t _header_parts = 0;
    std::byte* _flags_low = nullptr;  // byte 9, in a received buffer
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
