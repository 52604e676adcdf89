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

std::string sockperf_framing::feed(std::byte* data, std::size_t len, std::vector<iovec>& out) {
    std::string error;
    while (len > 0) {
        if (!_in_body) {
            const std::size_t take = std::min(len, sockperf_header_size - _header_pos);
            std::memcpy(_header + _header_pos, data, take);
            if (_header_pos <= flags_low_offset && flags_low_offset < _header_pos + take) {
                _flags_low = data + (flags_low_offset - _header_pos);
            }
            _header_iov[_header_parts++] = {data, take};
            _header_pos += take;
            data += take;
            len -= take;
            if (_header_pos == sockperf_header_size) {
                header_complete(out, error);
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

void sockperf_framing::header_complete(std::vector<iovec>& out, std::string& error) {
    std::uint16_t flags_be;
    std::uint32_t length_be;
    std::memcpy(&flags_be, _header + 8, 2);
    std::memcpy(&length_be, _header + 10, 4);
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
        *_flags_low &= static_cast<std::byte>(~flag_client & 0xff);
        for (std::size_t i = 0; i < _header_parts; ++i) {
            append_range(out, static_cast<std::byte*>(_header_iov[i].iov_base), _header_iov[i].iov_len);
        }
    }
    _header_parts = 0;
    _header_pos = 0;
    _flags_low = nullptr;
    _body_left = length - sockperf_header_size;
    _in_body = _body_left > 0;
}

}  // namespace shardd::server
