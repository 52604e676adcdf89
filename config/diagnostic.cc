#include "config/diagnostic.hh"

#include <algorithm>
#include <string_view>

namespace shardd::config {

namespace {

// Length of the valid UTF-8 sequence at the start of `s` (1 to 4), or 0 when
// it is not one (a stray continuation byte, a truncated or overlong sequence,
// a surrogate, or beyond U+10FFFF).
std::size_t utf8_length(std::string_view s) {
    const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    const auto continuation = [&](std::size_t i) { return i < s.size() && (b(i) & 0xc0) == 0x80; };
    const unsigned char lead = b(0);
    if (lead >= 0xc2 && lead <= 0xdf) {
        return continuation(1) ? 2 : 0;
    }
    if (lead >= 0xe0 && lead <= 0xef) {
        if (!continuation(1) || !continuation(2) || (lead == 0xe0 && b(1) < 0xa0) || (lead == 0xed && b(1) > 0x9f)) {
            return 0;
        }
        return 3;
    }
    if (lead >= 0xf0 && lead <= 0xf4) {
        if (!continuation(1) || !continuation(2) || !continuation(3) || (lead == 0xf0 && b(1) < 0x90) ||
            (lead == 0xf4 && b(1) > 0x8f)) {
            return 0;
        }
        return 4;
    }
    return 0;
}

void append_hex(std::string& out, const char* prefix, unsigned value) {
    constexpr char digits[] = "0123456789abcdef";
    out += prefix;
    out += digits[(value >> 4) & 0xf];
    out += digits[value & 0xf];
}

// The text with every control character written as an escape: C0 (\n, \t,
// \r or \xNN), DEL (\x7f), C1 (\u0080 to \u009f, which some terminals obey
// as escape sequences too) and bytes that are not UTF-8 (\xNN). A diagnostic
// echoes bytes from the file and the command line: printed raw, an ESC
// sequence in a string value would recolour or rewrite the operator's
// terminal, and journald stores a message with control characters or bad
// UTF-8 as a blob that journalctl does not show. An escaped line is still one
// line, and shows the bytes that were there.
std::string escaped(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
            ++i;
            continue;
        }
        if (c == '\n' || c == '\t' || c == '\r') {
            out += c == '\n' ? "\\n" : c == '\t' ? "\\t" : "\\r";
            ++i;
            continue;
        }
        const std::size_t n = c < 0x80 ? 0 : utf8_length(text.substr(i));
        if (n == 0) {
            append_hex(out, "\\x", c);  // C0, DEL, or not UTF-8
            ++i;
        } else if (n == 2 && c == 0xc2 && static_cast<unsigned char>(text[i + 1]) < 0xa0) {
            append_hex(out, "\\u00", static_cast<unsigned char>(text[i + 1]));  // C1: U+0080 to U+009F
            i += 2;
        } else {
            out.append(text, i, n);
            i += n;
        }
    }
    return out;
}

}  // namespace

std::string diagnostic::to_string() const {
    std::string out;
    if (from == origin::command_line) {
        out = "command line: ";
    } else {
        out = file;
        if (line != 0) {
            out += ":" + std::to_string(line) + ":" + std::to_string(column);
        }
        out += ": ";
    }
    if (level == severity::warning) {
        out += "warning: ";
    }
    if (!path.empty()) {
        out += path + ": ";
    }
    out += message;
    return escaped(out);
}

bool has_errors(const std::vector<diagnostic>& diags) {
    return std::any_of(diags.begin(), diags.end(), [](const diagnostic& d) { return d.level == severity::error; });
}

}  // namespace shardd::config
