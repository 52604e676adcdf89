#include "server/admin/http_request.hh"

#include <algorithm>
#include <cctype>

namespace shardd::server::admin {

namespace {

// RFC 9110 5.6.2: tchar.
bool is_tchar(char c) noexcept {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return true;
    }
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_token(std::string_view s) noexcept { return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar); }

// Field values: visible characters, space, tab, and obs-text (bytes >= 0x80).
bool is_field_value(std::string_view s) noexcept {
    return std::all_of(s.begin(), s.end(), [](char ch) {
        const auto c = static_cast<unsigned char>(ch);
        return c == '\t' || (c >= 0x20 && c != 0x7f);
    });
}

// An origin-form target (RFC 9112 3.2.1): "/" and visible characters.
bool is_origin_form(std::string_view s) noexcept {
    return !s.empty() && s.front() == '/' && std::all_of(s.begin(), s.end(), [](char ch) {
        const auto c = static_cast<unsigned char>(ch);
        return c > 0x20 && c < 0x7f;
    });
}

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

std::string_view trim_ows(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

parse_result fail(int status, std::string reason) {
    parse_result r;
    r.state = parse_state::error;
    r.status = status;
    r.reason = std::move(reason);
    return r;
}

// Whether the comma-separated list `value` holds `token` (case-insensitive).
bool list_has(std::string_view value, std::string_view token) {
    while (!value.empty()) {
        const auto comma = value.find(',');
        const std::string_view item = trim_ows(value.substr(0, comma));
        if (lower(item) == token) {
            return true;
        }
        if (comma == std::string_view::npos) {
            break;
        }
        value.remove_prefix(comma + 1);
    }
    return false;
}

}  // namespace

std::string_view http_request::path() const noexcept {
    const std::string_view t = target;
    return t.substr(0, t.find('?'));
}

const std::string* http_request::field(std::string_view name) const noexcept {
    for (const auto& [k, v] : fields) {
        if (k == name) {
            return &v;
        }
    }
    return nullptr;
}

parse_result http_request_parser::parse(std::string_view data) {
    // Line ends are CRLF. A bare LF or CR anywhere in the head is refused at
    // once rather than waited on: RFC 9112 2.2 lets a recipient accept a bare
    // LF, and refusing it keeps one reading of where the head ends (the one a
    // proxy in front would also have to agree on).
    const std::size_t scan = std::min(data.size(), max_head);
    for (std::size_t i = 0; i < scan; ++i) {
        if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r')) {
            return fail(400, "bare LF");
        }
        if (data[i] == '\r' && i + 1 < data.size() && data[i + 1] != '\n') {
            return fail(400, "bare CR");
        }
        if (data[i] == '\n' && i >= 3 && data[i - 2] == '\n') {
            // "\r\n\r\n": the end of the head.
            const parse_result r = parse_head(data.substr(0, i + 1));
            if (r.state == parse_state::complete) {
                parse_result done = r;
                done.consumed = i + 1;
                return done;
            }
            return r;
        }
        if (data[i] == '\n' && i == 1) {
            // "\r\n" first: RFC 9112 2.2 lets a server skip empty lines
            // before a request line; the admin endpoint does not (a client
            // that sends them is not one of its clients).
            return fail(400, "empty line before the request line");
        }
    }
    if (data.size() <= max_head) {
        // The request line alone over the target limit: say so before the
        // head limit is reached.
        const std::string_view line = data.substr(0, data.find('\r'));
        if (line.size() > max_target + 32) {
            return fail(414, "request target too long");
        }
        return {};
    }
    const auto line_end = data.find("\r\n");
    if (line_end == std::string_view::npos || line_end > max_target + 32) {
        return fail(414, "request target too long");
    }
    return fail(431, "request line and header fields over " + std::to_string(max_head) + " bytes");
}

parse_result http_request_parser::parse_head(std::string_view head) {
    _request = http_request{};
    // The request line: method SP target SP HTTP/1.x
    const auto eol = head.find("\r\n");
    const std::string_view line = head.substr(0, eol);
    const auto sp1 = line.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
        return fail(400, "malformed request line");
    }
    const std::string_view method = line.substr(0, sp1);
    const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const std::string_view version = line.substr(sp2 + 1);
    if (!is_token(method)) {
        return fail(400, "malformed method");
    }
    if (target.size() > max_target) {
        return fail(414, "request target too long");
    }
    if (!is_origin_form(target)) {
        return fail(400, "request target is not a path");
    }
    if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' || version[5] < '0' ||
        version[5] > '9' || version[7] < '0' || version[7] > '9') {
        return fail(400, "malformed HTTP version");
    }
    if (version[5] != '1') {
        return fail(505, "HTTP version not supported");
    }
    _request.method = method;
    _request.target = target;
    // HTTP/1.2 and later minors would be answered as 1.1 (RFC 9110 6.2).
    _request.minor_version = version[7] == '0' ? 0 : 1;

    // The header fields, up to the empty line.
    std::string_view rest = head.substr(eol + 2);
    int hosts = 0;
    // Copies, not views into _request.fields: the vector moves its strings
    // when it grows (the fuzzer's first find).
    std::string content_length;
    std::string connection;
    while (rest.size() > 2) {
        const auto end = rest.find("\r\n");
        const std::string_view f = rest.substr(0, end);
        rest.remove_prefix(end + 2);
        if (f.front() == ' ' || f.front() == '\t') {
            return fail(400, "obsolete line folding");
        }
        const auto colon = f.find(':');
        if (colon == std::string_view::npos || !is_token(f.substr(0, colon))) {
            // Also catches whitespace before the colon (RFC 9112 5.1).
            return fail(400, "malformed header field");
        }
        const std::string_view value = trim_ows(f.substr(colon + 1));
        if (!is_field_value(value)) {
            return fail(400, "control character in a header field");
        }
        if (_request.fields.size() == max_fields) {
            return fail(431, "more than " + std::to_string(max_fields) + " header fields");
        }
        _request.fields.emplace_back(lower(f.substr(0, colon)), std::string(value));
        const std::string& name = _request.fields.back().first;
        if (name == "host") {
            ++hosts;
        } else if (name == "content-length") {
            if (value.empty() ||
                !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
                return fail(400, "malformed Content-Length");
            }
            if (!content_length.empty() && content_length != value) {
                return fail(400, "conflicting Content-Length fields");
            }
            content_length = value;
        } else if (name == "transfer-encoding") {
            return fail(413, "a request body (Transfer-Encoding) is not accepted");
        } else if (name == "connection") {
            connection = value;
        }
    }
    if (_request.minor_version == 1 && hosts != 1) {
        // RFC 9112 3.2: exactly one Host in HTTP/1.1.
        return fail(400, hosts == 0 ? "no Host header field" : "more than one Host header field");
    }
    if (!content_length.empty() && content_length.find_first_not_of('0') != std::string::npos) {
        return fail(413, "a request body is not accepted");
    }
    _request.keep_alive =
        _request.minor_version == 1 ? !list_has(connection, "close") : list_has(connection, "keep-alive");
    parse_result r;
    r.state = parse_state::complete;
    return r;
}

}  // namespace shardd::server::admin
