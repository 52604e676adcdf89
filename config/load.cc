#include "config/load.hh"

#include "config/reader.hh"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <sys/stat.h>
#include <system_error>
#include <toml++/toml.h>
#include <unistd.h>

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
    auto fail = [&](const std::string& message) {
        load_result out;
        out.diagnostics.push_back({origin::file, severity::error, path, 0, 0, "", message});
        return out;
    };
    // POSIX I/O rather than a stream: a directory must be told apart (a
    // stream opens one and reads it as empty, which then reported a missing
    // [[listener]]), and the read must stop at the cap whatever the file is.
    // st_size cannot be trusted for that: it is 0 for /dev/zero, a pipe or a
    // /proc file.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return fail("cannot open: " + std::generic_category().message(errno));
    }
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } closed{fd};
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        return fail("cannot open: " + std::generic_category().message(EISDIR));
    }
    // Chunks, not one slurp: reading stops one byte past the cap, so an
    // endless source (/dev/zero, a FIFO whose writer never stops) costs at
    // most max_config_file_size + 1 bytes and returns at once.
    constexpr std::size_t chunk = 64 * KiB;
    std::string text;
    while (text.size() <= max_config_file_size) {
        const std::size_t old_size = text.size();
        const std::size_t want = std::min<std::size_t>(chunk, max_config_file_size + 1 - old_size);
        text.resize(old_size + want);
        const ssize_t n = ::read(fd, text.data() + old_size, want);
        if (n < 0 && errno == EINTR) {
            text.resize(old_size);
            continue;
        }
        if (n < 0) {
            return fail("cannot read: " + std::generic_category().message(errno));
        }
        text.resize(old_size + static_cast<std::size_t>(n));
        if (n == 0) {
            return load_string(text, path, over, allowed);
        }
    }
    return fail("larger than " + format_size(max_config_file_size) + "; not a shardd configuration");
}

}  // namespace shardd::config
