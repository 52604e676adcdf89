#pragma once
// HAProxy's PROXY protocol, versions 1 (a text line) and 2 (binary): the
// header a proxy in front of shardd prepends to a connection to say whose
// connection it relays, and the header shardd prepends to an upstream
// connection to say the same.
//
// parse() is stateless: it is handed everything received so far each time,
// and its verdict on a prefix never changes when more bytes arrive (a prefix
// that is `error` stays `error` with the same reason, one that is `complete`
// stays complete with the same length). A header is at most a few hundred
// bytes and arrives in one segment in practice, so rescanning from the start
// costs nothing and saves the caller a parser object per connection.
//
// Only TCP is carried: v2's UDP families are refused, its AF_UNIX and
// AF_UNSPEC families are accepted as `local` (the connection's own addresses
// stand), as are v1's UNKNOWN and v2's LOCAL command.

#include "reactor/socket_address.hh"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace shardd::server::proxy_protocol {

// v1's longest line, CRLF included (the spec's 107).
inline constexpr std::size_t v1_max_size = 107;
// v2: 16-byte fixed part + the length field's bytes.
inline constexpr std::size_t v2_fixed_size = 16;

enum class parse_state { need_more, complete, error };

struct header {
    int version = 0;  // 1 or 2
    // v1 UNKNOWN, v2 LOCAL, or v2 PROXY with AF_UNSPEC / an unsupported family such as AF_UNIX: no addresses;
    // the receiver uses the connection's own.
    bool local = false;
    std::optional<socket_address> source;
    std::optional<socket_address> destination;
};

struct parse_result {
    parse_state state = parse_state::need_more;
    std::size_t consumed = 0;  // header length when complete
    std::string_view reason;   // static string, when error
    header value;              // when complete
};

// Parses the start of a connection's bytes. `bytes` is everything received
// so far; `max_size` bounds the whole header (v1 is also bounded by 107).
//
// need_more: `bytes` is a strict prefix of a header that may still be valid,
//   so every byte of it belongs to the header.
// complete: `consumed` is the exact header length (v2: 16 + its length
//   field); what follows is the client's data. v2 TLVs are skipped, but they
//   must tile the rest of the address block exactly.
// error: malformed, or longer than max_size. Decided at the first byte that
//   makes the header invalid: a byte that starts neither "PROXY " nor v2's
//   signature, a bad v1 token, a bad v2 version, command, family or length.
//
// IPv4-mapped IPv6 addresses stay IPv6. Allocates nothing; reads nothing past
// `bytes`.
parse_result parse(std::string_view bytes, std::size_t max_size);

// Builders. When source or destination is null, non-IP, or the two differ in
// family, v1 writes "PROXY UNKNOWN\r\n" and v2 a LOCAL header (command 0,
// family 0, length 0). IPv6 scope ids are not carried.
std::string build_v1(const socket_address* source, const socket_address* destination);
std::string build_v2(const socket_address* source, const socket_address* destination);

}  // namespace shardd::server::proxy_protocol
