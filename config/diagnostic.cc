#include "config/diagnostic.hh"

#include <algorithm>

namespace shardd::config {

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
    return out;
}

bool has_errors(const std::vector<diagnostic>& diags) {
    return std::any_of(diags.begin(), diags.end(), [](const diagnostic& d) { return d.level == severity::error; });
}

}  // namespace shardd::config
