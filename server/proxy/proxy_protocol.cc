#include "server/proxy/proxy_protocol.hh"

#include <algorithm>
#include <arpa/inet.h>
#include <cstdint>
#include <cstring>
#include <netinet/in.h>

namespace shardd::server::proxy_protocol {

namespace {

constexpr std::string_view v1_signature = "PROXY ";
// Contains a NUL, hence the explicit length.
constexpr std::string_view v2_signature{"\r\n\r\n\0\r\nQUIT\n", 12};

constexpr std::string_view not_proxy = "not a PROXY protocol header";
constexpr std::string_view too_long = "header longer than max_size";
constexpr std::string_view v1_too_long = "v1: no CRLF in the first 107 bytes";
constexpr std::string_view v1_bad_protocol = "v1: bad protocol (expected TCP4, TCP6 or UNKNOWN)";
constexpr std::string_view v1_bad_address = "v1: bad address";
constexpr std::string_view v1_bad_port = "v1: bad port";
constexpr std::string_view v1_cr_without_lf = "v1: CR not followed by LF";
constexpr std::string_view v1_lf_without_cr = "v1: LF without CR";
constexpr std::string_view v2_bad_version = "v2: bad version";
constexpr std::string_view v2_bad_command = "v2: bad command";
constexpr std::string_view v2_bad_family = "v2: bad family";
constexpr std::string_view v2_short_block = "v2: address block too short for the family";
constexpr std::string_view v2_bad_tlv = "v2: TLVs do not fit the address block";

// The v2 command (low nibble of byte 13) and family bytes shardd knows.
constexpr unsigned command_local = 0x0;
constexpr unsigned command_proxy = 0x1;
constexpr unsigned family_unspec = 0x00;
constexpr unsigned family_tcp4 = 0x11;
constexpr unsigned family_tcp6 = 0x21;
constexpr unsigned family_unix_stream = 0x31;
constexpr std::size_t tcp4_block = 12;   // 2 * 4 + 2 * 2
constexpr std::size_t tcp6_block = 36;   // 2 * 16 + 2 * 2
constexpr std::size_t unix_block = 216;  // 2 * 108
constexpr std::size_t tlv_header = 3;    // type, length (big-endian u16)

parse_result fail(std::string_view reason) {
    parse_result r;
    r.state = parse_state::error;
    r.reason = reason;
    return r;
}

unsigned byte_at(std::string_view bytes, std::size_t i) { return static_cast<unsigned char>(bytes[i]); }

// Whether `bytes` agrees with `signature` as far as either goes.
bool matches_signature(std::string_view bytes, std::string_view signature) {
    const std::size_t n = std::min(bytes.size(), signature.size());
    return bytes.substr(0, n) == signature.substr(0, n);
}

// `addr` is in network order already (both v1's inet_pton and v2's wire
// carry it so); `port` is in host order.
socket_address make_address(int family, const unsigned char* addr, std::uint16_t port) {
    if (family == AF_INET) {
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port);
        std::memcpy(&sin.sin_addr, addr, sizeof(sin.sin_addr));
        return socket_address(reinterpret_cast<const sockaddr*>(&sin), sizeof(sin));
    }
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    std::memcpy(&sin6.sin6_addr, addr, sizeof(sin6.sin6_addr));
    return socket_address(reinterpret_cast<const sockaddr*>(&sin6), sizeof(sin6));
}

// v1 address text: the longest IPv6 form inet_pton takes is
// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 45 characters.
std::size_t max_address_text(int family) { return family == AF_INET ? 15 : INET6_ADDRSTRLEN - 1; }

bool address_char(int family, char c) {
    if (c >= '0' && c <= '9') {
        return true;
    }
    if (c == '.') {
        return true;
    }
    return family == AF_INET6 && (c == ':' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
}

bool parse_address(int family, std::string_view text, unsigned char* out) {
    // inet_pton wants a C string; the length was bounded as the text arrived.
    char buf[INET6_ADDRSTRLEN] = {};
    if (text.empty() || text.size() >= sizeof(buf)) {
        return false;
    }
    std::memcpy(buf, text.data(), text.size());
    return inet_pton(family, buf, out) == 1;
}

// Whether `text` could still grow into `word`.
bool prefix_of(std::string_view text, std::string_view word) { return word.substr(0, text.size()) == text; }

// The v1 line, read one byte at a time so that the error is reported at the
// first byte that makes the line invalid, wherever the bytes were cut.
// `line` is already bounded by the caller's limit.
parse_result parse_v1(std::string_view line) {
    if (!matches_signature(line, v1_signature)) {
        return fail(not_proxy);
    }
    enum class field { protocol, unknown, source, destination, source_port, destination_port, lf };
    field at = field::protocol;
    std::size_t start = v1_signature.size();  // of the current token
    int family = AF_UNSPEC;
    unsigned char addr[2][sizeof(in6_addr)] = {};
    std::uint32_t port[2] = {0, 0};
    for (std::size_t i = v1_signature.size(); i < line.size(); ++i) {
        const char c = line[i];
        const std::string_view token = line.substr(start, i - start);  // before c
        switch (at) {
        case field::protocol: {
            if (c == ' ' && (token == "TCP4" || token == "TCP6")) {
                family = token == "TCP4" ? AF_INET : AF_INET6;
                at = field::source;
                start = i + 1;
                break;
            }
            const std::string_view with = line.substr(start, i + 1 - start);
            if (with == "UNKNOWN") {
                at = field::unknown;
            } else if (!prefix_of(with, "TCP4") && !prefix_of(with, "TCP6") && !prefix_of(with, "UNKNOWN")) {
                return fail(v1_bad_protocol);
            }
            break;
        }
        case field::unknown:
            // The spec has the receiver ignore whatever follows UNKNOWN, but
            // the line still ends at the first CRLF and nowhere else.
            if (c == '\r') {
                at = field::lf;
            } else if (c == '\n') {
                return fail(v1_lf_without_cr);
            }
            break;
        case field::source:
        case field::destination: {
            const int k = at == field::source ? 0 : 1;
            if (c == ' ') {
                if (!parse_address(family, token, addr[k])) {
                    return fail(v1_bad_address);
                }
                at = k == 0 ? field::destination : field::source_port;
                start = i + 1;
            } else if (!address_char(family, c) || token.size() + 1 > max_address_text(family)) {
                return fail(v1_bad_address);
            }
            break;
        }
        case field::source_port:
        case field::destination_port: {
            const int k = at == field::source_port ? 0 : 1;
            if (c == (k == 0 ? ' ' : '\r') && !token.empty()) {
                at = k == 0 ? field::destination_port : field::lf;
                start = i + 1;
                break;
            }
            // No leading zeros (octal confusion, says the spec), but "0" itself is a port.
            if (c < '0' || c > '9' || token == "0") {
                return fail(v1_bad_port);
            }
            port[k] = port[k] * 10 + static_cast<std::uint32_t>(c - '0');
            if (port[k] > 65535) {
                return fail(v1_bad_port);
            }
            break;
        }
        case field::lf: {
            if (c != '\n') {
                return fail(v1_cr_without_lf);
            }
            parse_result r;
            r.state = parse_state::complete;
            r.consumed = i + 1;
            r.value.version = 1;
            if (family == AF_UNSPEC) {
                r.value.local = true;
            } else {
                r.value.source = make_address(family, addr[0], static_cast<std::uint16_t>(port[0]));
                r.value.destination = make_address(family, addr[1], static_cast<std::uint16_t>(port[1]));
            }
            return r;
        }
        }
    }
    return {};
}

// `bytes` is already bounded by max_size; max_size is passed on so that a
// length field announcing more is refused as soon as it is read.
parse_result parse_v2(std::string_view bytes, std::size_t max_size) {
    if (!matches_signature(bytes, v2_signature)) {
        return fail(not_proxy);
    }
    if (bytes.size() <= 12) {
        return {};
    }
    const unsigned version_command = byte_at(bytes, 12);
    if ((version_command >> 4) != 2) {
        return fail(v2_bad_version);
    }
    const unsigned command = version_command & 0xf;
    if (command != command_local && command != command_proxy) {
        return fail(v2_bad_command);
    }
    if (bytes.size() <= 13) {
        return {};
    }
    const unsigned family = byte_at(bytes, 13);
    // LOCAL ignores the family and the whole block (the spec: "discard the
    // protocol block including the family"); so does PROXY over AF_UNSPEC,
    // whose block has no known layout to find TLVs in.
    std::size_t address_block = 0;
    bool walk_tlvs = false;
    if (command == command_proxy) {
        switch (family) {
        case family_unspec: break;
        case family_tcp4: address_block = tcp4_block; break;
        case family_tcp6: address_block = tcp6_block; break;
        case family_unix_stream: address_block = unix_block; break;
        default: return fail(v2_bad_family);
        }
        walk_tlvs = family != family_unspec;
    }
    if (bytes.size() < v2_fixed_size) {
        return {};
    }
    const std::size_t length = (byte_at(bytes, 14) << 8) | byte_at(bytes, 15);
    if (length < address_block) {
        return fail(v2_short_block);
    }
    const std::size_t total = v2_fixed_size + length;
    if (total > max_size) {
        return fail(too_long);
    }
    if (walk_tlvs) {
        // Each TLV's bounds are known once its length arrives, so an overrun
        // is refused then, not when the whole block is in.
        for (std::size_t pos = v2_fixed_size + address_block; pos != total;) {
            if (total - pos < tlv_header) {
                return fail(v2_bad_tlv);
            }
            if (bytes.size() < pos + tlv_header) {
                return {};
            }
            const std::size_t value = (byte_at(bytes, pos + 1) << 8) | byte_at(bytes, pos + 2);
            if (value > total - pos - tlv_header) {
                return fail(v2_bad_tlv);
            }
            pos += tlv_header + value;
        }
    }
    if (bytes.size() < total) {
        return {};
    }
    parse_result r;
    r.state = parse_state::complete;
    r.consumed = total;
    r.value.version = 2;
    if (command == command_local || (family != family_tcp4 && family != family_tcp6)) {
        r.value.local = true;
        return r;
    }
    const auto* block = reinterpret_cast<const unsigned char*>(bytes.data()) + v2_fixed_size;
    const std::size_t addr_size = family == family_tcp4 ? sizeof(in_addr) : sizeof(in6_addr);
    const int af = family == family_tcp4 ? AF_INET : AF_INET6;
    const unsigned char* ports = block + 2 * addr_size;
    r.value.source = make_address(af, block, static_cast<std::uint16_t>((ports[0] << 8) | ports[1]));
    r.value.destination = make_address(af, block + addr_size, static_cast<std::uint16_t>((ports[2] << 8) | ports[3]));
    return r;
}

// Both addresses IP and of one family: what both versions can carry.
bool carriable(const socket_address* source, const socket_address* destination) {
    if (source == nullptr || destination == nullptr || source->family() != destination->family()) {
        return false;
    }
    if (source->family() == AF_INET) {
        return source->length() >= sizeof(sockaddr_in) && destination->length() >= sizeof(sockaddr_in);
    }
    if (source->family() == AF_INET6) {
        return source->length() >= sizeof(sockaddr_in6) && destination->length() >= sizeof(sockaddr_in6);
    }
    return false;
}

const void* raw_address(const socket_address& a) {
    if (a.family() == AF_INET) {
        return &reinterpret_cast<const sockaddr_in*>(a.get())->sin_addr;
    }
    return &reinterpret_cast<const sockaddr_in6*>(a.get())->sin6_addr;
}

void append_text_address(std::string& out, const socket_address& a) {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(a.family(), raw_address(a), buf, sizeof(buf));
    out += buf;
}

void append_u16(std::string& out, std::uint16_t v) {
    out += static_cast<char>(v >> 8);
    out += static_cast<char>(v & 0xff);
}

}  // namespace

parse_result parse(std::string_view bytes, std::size_t max_size) {
    if (bytes.empty()) {
        return {};
    }
    // The two signatures differ in their first byte, so it alone picks the
    // version. Each parser sees no more than the limit allows; if that much
    // is still a valid prefix, the header can only be longer than the limit.
    if (bytes.front() == v1_signature.front()) {
        const std::size_t limit = std::min(v1_max_size, max_size);
        parse_result r = parse_v1(bytes.substr(0, limit));
        if (r.state == parse_state::need_more && bytes.size() >= limit) {
            return fail(limit == v1_max_size ? v1_too_long : too_long);
        }
        return r;
    }
    if (bytes.front() == v2_signature.front()) {
        parse_result r = parse_v2(bytes.substr(0, max_size), max_size);
        if (r.state == parse_state::need_more && bytes.size() >= max_size) {
            return fail(too_long);
        }
        return r;
    }
    return fail(not_proxy);
}

std::string build_v1(const socket_address* source, const socket_address* destination) {
    if (!carriable(source, destination)) {
        return "PROXY UNKNOWN\r\n";
    }
    std::string out;
    out.reserve(v1_max_size);
    out += source->family() == AF_INET ? "PROXY TCP4 " : "PROXY TCP6 ";
    append_text_address(out, *source);
    out += ' ';
    append_text_address(out, *destination);
    out += ' ';
    out += std::to_string(source->port());
    out += ' ';
    out += std::to_string(destination->port());
    out += "\r\n";
    return out;
}

std::string build_v2(const socket_address* source, const socket_address* destination) {
    std::string out(v2_signature);
    if (!carriable(source, destination)) {
        out += static_cast<char>(0x20 | command_local);
        out += static_cast<char>(family_unspec);
        append_u16(out, 0);
        return out;
    }
    const bool v4 = source->family() == AF_INET;
    const std::size_t addr_size = v4 ? sizeof(in_addr) : sizeof(in6_addr);
    out += static_cast<char>(0x20 | command_proxy);
    out += static_cast<char>(v4 ? family_tcp4 : family_tcp6);
    append_u16(out, static_cast<std::uint16_t>(v4 ? tcp4_block : tcp6_block));
    out.append(static_cast<const char*>(raw_address(*source)), addr_size);
    out.append(static_cast<const char*>(raw_address(*destination)), addr_size);
    append_u16(out, source->port());
    append_u16(out, destination->port());
    return out;
}

}  // namespace shardd::server::proxy_protocol
