// libFuzzer target: the admin endpoint's HTTP request parser.
//
// Needs clang with libFuzzer (Debian: clang-14, libfuzzer-14-dev); built and
// run by tests/fuzz/run, briefly by .ci/run. Beyond "no crash, no sanitizer
// report", it checks that the verdict does not depend on how the bytes were
// cut: a request that parses whole also parses from exactly its own bytes,
// and a prefix that is refused means the whole is refused the same way.

#include "server/admin/http_request.hh"

#include <cstdint>
#include <cstdlib>
#include <string_view>

using namespace shardd::server::admin;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view all(reinterpret_cast<const char*>(data), size);
    http_request_parser whole;
    const parse_result w = whole.parse(all);
    if (w.state == parse_state::complete) {
        if (w.consumed == 0 || w.consumed > size || whole.request().target.empty() ||
            whole.request().target.front() != '/') {
            std::abort();
        }
        http_request_parser exact;
        const parse_result e = exact.parse(all.substr(0, w.consumed));
        if (e.state != parse_state::complete || e.consumed != w.consumed ||
            exact.request().target != whole.request().target) {
            std::abort();
        }
    }
    if (w.state == parse_state::error && (w.status < 400 || w.status > 599 || w.reason.empty())) {
        std::abort();
    }
    // A cut chosen by the input itself.
    if (size > 1) {
        const std::size_t cut = data[0] % size;
        http_request_parser part;
        const parse_result p = part.parse(all.substr(0, cut));
        if (p.state == parse_state::error && (w.state != parse_state::error || w.status != p.status)) {
            std::abort();
        }
        if (p.state == parse_state::complete && w.state != parse_state::complete) {
            std::abort();
        }
    }
    return 0;
}
