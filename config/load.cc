#include "config/load.hh"

#include "config/reader.hh"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

namespace shardd::config {

namespace {

load_result finish(config cfg, std::vector<diagnostic> diags) {
    std::stable_sort(diags.begin(), diags.end(), [](const diagnostic& a, const diagnostic& b) {
        if (a.from != b.from) {
            return a.from == origin::command_line;
        }
        const auto la = a.line == 0 ? UINT32_MAX : a.line;
        const auto lb = b.line == 0 ? UINT32_MAX : b.line;
        return std::tie(la, a.column) < std::tie(lb, b.column);
    });
    load_result out;
    if (!has_errors(diags)) {
        out.cfg = std::move(cfg);
    }
    out.diagnostics = std::move(diags);
    return out;
}

}  // namespace

load_result load_string(std::string_view text, const std::string& name, const overrides& over, const cpu_set& allowed) {
    std::vector<diagnostic> diags;
    config cfg;
    try {
        toml::table root = toml::parse(text, name);
        internal::read_document(root, name, over, allowed, cfg, diags);
    } catch (const toml::parse_error& err) {
        const auto& where = err.source().begin;
        diags.push_back({origin::file, severity::error, name, where.line, where.column, "",
                         "TOML syntax error: " + std::string(err.description())});
    }
    return finish(std::move(cfg), std::move(diags));
}

load_result load_file(const std::string& path, const overrides& over, const cpu_set& allowed) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int err = errno;
        load_result out;
        out.diagnostics.push_back(
            {origin::file, severity::error, path, 0, 0, "", "cannot open: " + std::generic_category().message(err)});
        return out;
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        load_result out;
        out.diagnostics.push_back({origin::file, severity::error, path, 0, 0, "", "cannot read the file"});
        return out;
    }
    return load_string(text.str(), path, over, allowed);
}

}  // namespace shardd::config
