#pragma once
// One problem found in a configuration, printed as
//   FILE:LINE:COL: key.path: what was expected, what was found
// so that editors and CI annotate the exact spot.

#include <cstdint>
#include <string>
#include <vector>

namespace shardd::config {

enum class origin {
    file,          // the TOML file
    command_line,  // an override such as --cpus
};

enum class severity { error, warning };

struct diagnostic {
    origin from = origin::file;
    severity level = severity::error;
    std::string file;
    std::uint32_t line = 0;  // 1-based; 0 when the problem has no position
    std::uint32_t column = 0;
    std::string path;  // "listener[1].listen[0]", or "--cpus"
    std::string message;

    // The one line to print. Control characters and bytes that are not UTF-8
    // come out escaped (\x1b, \n, \u009b, ...), wherever they came from:
    // the file's keys and values, its name, or the command line.
    std::string to_string() const;
};

bool has_errors(const std::vector<diagnostic>& diags);

}  // namespace shardd::config
