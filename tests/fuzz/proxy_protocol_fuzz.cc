// libFuzzer target: the PROXY protocol parser (server/proxy/proxy_protocol.hh).
//
// Needs clang with libFuzzer (Debian: clang-14, libfuzzer-14-dev); built and
// run by tests/fuzz/run. Beyond "no crash, no sanitizer report", it checks
// what a caller relies on: a complete header's length is sane and within
// max_size; the header parses the same from exactly its own bytes; the
// verdict on a prefix never changes when more bytes arrive (so a caller may
// parse whatever it has received so far); and the addresses survive a trip
// through the builder of the same version.

#include "server/proxy/proxy_protocol.hh"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

using namespace shardd::server::proxy_protocol;

namespace {

constexpr std::size_t max_size = 4096;  // shardd's default
// Cuts below this are all tried: every v1 line and the fixed part of v2.
constexpr std::size_t every_cut = v1_max_size + 24;

void check(bool ok) {
    if (!ok) {
        std::abort();
    }
}

// Where the header must end, read straight off the bytes as the spec frames
// them (v1: the first CRLF; v2: 16 + the length field), independently of the
// parser's own walk; npos when the bytes do not say yet.
std::size_t framed_end(std::string_view all) {
    const std::string_view v2_signature("\r\n\r\n\0\r\nQUIT\n", 12);
    if (all.substr(0, 6) == "PROXY ") {
        const std::size_t crlf = all.find("\r\n");
        return crlf == std::string_view::npos ? crlf : crlf + 2;
    }
    if (all.size() >= v2_fixed_size && all.substr(0, 12) == v2_signature) {
        return v2_fixed_size + (static_cast<std::uint8_t>(all[14]) << 8 | static_cast<std::uint8_t>(all[15]));
    }
    return std::string_view::npos;
}

bool same_header(const header& a, const header& b) {
    return a.version == b.version && a.local == b.local && a.source == b.source && a.destination == b.destination;
}

bool same(const parse_result& a, const parse_result& b) {
    if (a.state != b.state) {
        return false;
    }
    switch (a.state) {
    case parse_state::need_more: return true;
    case parse_state::error: return a.reason == b.reason;
    case parse_state::complete: return a.consumed == b.consumed && same_header(a.value, b.value);
    }
    return false;
}

// A prefix's verdict against the whole's.
void check_prefix(std::string_view all, const parse_result& whole, std::size_t cut) {
    const parse_result p = parse(all.substr(0, cut), max_size);
    switch (p.state) {
    case parse_state::need_more:
        // Every byte of a need_more prefix belongs to the header.
        check(whole.state != parse_state::complete || cut < whole.consumed);
        break;
    case parse_state::error: check(same(p, whole)); break;
    case parse_state::complete: check(same(p, whole)); break;
    }
    if (whole.state == parse_state::complete && cut >= whole.consumed) {
        check(same(p, whole));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view all(reinterpret_cast<const char*>(data), size);
    const parse_result w = parse(all, max_size);
    check(w.state != parse_state::need_more || size < max_size);
    check((w.state == parse_state::error) == !w.reason.empty());
    // A header whose framing is all in is decided; a complete one ends where
    // its framing says.
    const std::size_t end = framed_end(all);
    check(w.state != parse_state::need_more || end == std::string_view::npos || end > size);
    check(w.state != parse_state::complete || w.consumed == end);

    if (w.state == parse_state::complete) {
        const header& h = w.value;
        check(h.version == 1 || h.version == 2);
        const std::size_t min_size = h.version == 1 ? 15 : v2_fixed_size;  // "PROXY UNKNOWN\r\n"
        check(w.consumed >= min_size && w.consumed <= size && w.consumed <= max_size);
        check(h.version != 1 || w.consumed <= v1_max_size);
        check(h.local == !h.source.has_value() && h.local == !h.destination.has_value());
        if (!h.local) {
            check(h.source->family() == h.destination->family());
            check(h.source->family() == AF_INET || h.source->family() == AF_INET6);
        }

        // Exactly its own bytes, and max_size bounding exactly there.
        const std::string_view own = all.substr(0, w.consumed);
        check(same(parse(own, max_size), w));
        check(same(parse(own, w.consumed), w));
        check(parse(own, w.consumed - 1).state == parse_state::error);

        // Through the builder and back: the same addresses.
        if (!h.local) {
            const std::string rebuilt =
                h.version == 1 ? build_v1(&*h.source, &*h.destination) : build_v2(&*h.source, &*h.destination);
            const parse_result r = parse(rebuilt, max_size);
            check(r.state == parse_state::complete && r.consumed == rebuilt.size());
            check(same_header(r.value, h));
        }
    }

    // The verdict does not depend on where the bytes were cut: every short
    // cut, and one chosen by the input among the rest.
    for (std::size_t cut = 0; cut < size && cut < every_cut; ++cut) {
        check_prefix(all, w, cut);
    }
    if (size > every_cut) {
        const std::size_t pick = data[size - 1] | (static_cast<std::size_t>(data[size - 2]) << 8);
        check_prefix(all, w, every_cut + pick % (size - every_cut));
    }
    return 0;
}
