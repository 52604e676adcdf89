#include "server/sockperf_framing.hh"

#include <algorithm>
#include <cstring>
#include <endian.h>

namespace shardd::server {

namespace {
constexpr std::size_t flags_low_offset = 9;  // big-endian u16 at 8..9
constexpr std::uint16_t flag_client = 0x1;
constexpr std::uint16_t flag_reply = 0x2;
constexpr std::uint16_t flag_warmup = 0x4;
}  // namespace

std::string sockperf_framing::feed(std::byte* data, std::size_t len, std::vector<iovec>& out, header_copies& copies) {
    std::string error;
    // A header carried over from an earlier chunk lives only in _header.
    _header_in_chunk = nullptr;
    while (len > 0) {
        if (!_in_body) {
            if (_header_pos == 0) {
                _header_in_chunk = data;
            }
            const std::size_t take = std::min(len, sockperf_header_size - _header_pos);
            std::memcpy(_header.data() + _header_pos, data, take);
            _header_pos += take;
            data += take;
            len -= take;
            if (_header_pos == sockperf_header_size) {
                header_complete(out, copies, error);
                if (!error.empty()) {
                    return error;
                }
            }
            continue;
        }
        const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(len, _body_left));
        if (_replying) {
            append_range(out, data, take);
        }
        _body_left -= take;
        data += take;
        len -= take;
        if (_body_left == 0) {
            _in_body = false;
        }
    }
    return error;
}

void sockperf_framing::header_complete(std::vector<iovec>& out, header_copies& copies, std::string& error) {
    std::uint16_t flags_be;
    std::uint32_t length_be;
    std::memcpy(&flags_be, _header.data() + 8, 2);
    std::memcpy(&length_be, _header.data() + 10, 4);
    const std::uint16_t flags = be16toh(flags_be);
    const std::uint32_t length = be32toh(length_be);
    if (length < sockperf_header_size || length > _max_message) {
        error = "sockperf message length " + std::to_string(length) + " outside 14.." + std::to_string(_max_message) +
                " (max_message)";
        return;
    }
    ++_messages;
    _replying = (flags & flag_reply) && !(flags & flag_warmup);
    if (_replying) {
        ++_replies;
        constexpr auto clear_client = static_cast<std::byte>(~flag_client & 0xff);
        if (_header_in_chunk) {
            // The whole header is in this chunk: reply from it, in place.
            _header_in_chunk[flags_low_offset] &= clear_client;
            append_range(out, _header_in_chunk, sockperf_header_size);
        } else {
            auto& copy = copies.emplace_back(_header);
            copy[flags_low_offset] &= clear_client;
            append_range(out, copy.data(), sockperf_header_size);
        }
    }
    _header_pos = 0;
    _header_in_chunk = nullptr;
    _body_left = length - sockperf_header_size;
    _in_body = _body_left > 0;
}

}  // namespace shardd::server
