#include "config/units.hh"

#include <array>
#include <cctype>
#include <charconv>
#include <limits>

namespace shardd::config {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
        s.remove_prefix(1);
    }
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
        s.remove_suffix(1);
    }
    return s;
}

// Reads leading decimal digits; returns false on none or on overflow.
bool take_number(std::string_view& s, std::uint64_t& out) {
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec != std::errc{} || end == s.data()) {
        return false;
    }
    s.remove_prefix(static_cast<std::size_t>(end - s.data()));
    return true;
}

struct unit {
    std::string_view name;
    std::uint64_t factor;
};

constexpr std::array size_units{
    unit{"TiB", 1ull << 40}, unit{"GiB", 1ull << 30}, unit{"MiB", 1ull << 20}, unit{"KiB", 1ull << 10}, unit{"B", 1},
};

constexpr std::array duration_units{
    unit{"h", 3600'000'000'000ull}, unit{"m", 60'000'000'000ull}, unit{"s", 1'000'000'000ull},
    unit{"ms", 1'000'000ull},       unit{"us", 1'000ull},         unit{"ns", 1ull},
};

const std::string size_expected = "expected a size like \"4MiB\" (units B, KiB, MiB, GiB, TiB)";
const std::string duration_expected = "expected a duration like \"10s\" (units ns, us, ms, s, m, h)";

}  // namespace

expected<std::uint64_t, std::string> parse_size(std::string_view text) {
    std::string_view s = trim(text);
    std::uint64_t n = 0;
    if (!take_number(s, n)) {
        return unexpected{size_expected + ", found \"" + std::string(text) + "\""};
    }
    s = trim(s);
    if (s.empty()) {
        return n;
    }
    for (const auto& u : size_units) {
        if (s == u.name) {
            if (n > std::numeric_limits<std::uint64_t>::max() / u.factor) {
                return unexpected{"size \"" + std::string(text) + "\" is too large"};
            }
            return n * u.factor;
        }
    }
    std::string hint;
    if (s == "K" || s == "KB" || s == "k" || s == "kB" || s == "kb") {
        hint = " (did you mean \"KiB\"?)";
    } else if (s == "M" || s == "MB" || s == "m" || s == "mb") {
        hint = " (did you mean \"MiB\"?)";
    } else if (s == "G" || s == "GB" || s == "g" || s == "gb") {
        hint = " (did you mean \"GiB\"?)";
    }
    return unexpected{size_expected + ", found \"" + std::string(text) + "\"" + hint};
}

std::string format_size(std::uint64_t bytes) {
    for (const auto& u : size_units) {
        if (bytes != 0 && u.factor > 1 && bytes % u.factor == 0) {
            return std::to_string(bytes / u.factor) + std::string(u.name);
        }
    }
    return std::to_string(bytes) + "B";
}

expected<duration, std::string> parse_duration(std::string_view text) {
    std::string_view s = trim(text);
    auto fail = [&] { return unexpected{duration_expected + ", found \"" + std::string(text) + "\""}; };
    if (s.empty()) {
        return fail();
    }
    std::uint64_t total = 0;
    while (!s.empty()) {
        std::uint64_t n = 0;
        if (!take_number(s, n)) {
            return fail();
        }
        s = trim(s);
        const unit* found = nullptr;
        // Longest match first, so "ms" is not read as "m" followed by "s".
        for (const auto& u : duration_units) {
            if (s.starts_with(u.name) && (!found || u.name.size() > found->name.size())) {
                found = &u;
            }
        }
        if (!found) {
            return fail();
        }
        s.remove_prefix(found->name.size());
        s = trim(s);
        constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<duration::rep>::max());
        if (n > max / found->factor || total > max - n * found->factor) {
            return unexpected{"duration \"" + std::string(text) + "\" is too long"};
        }
        total += n * found->factor;
    }
    return duration(static_cast<duration::rep>(total));
}

std::string format_duration(duration d) {
    auto ns = static_cast<std::uint64_t>(d.count());
    if (ns == 0) {
        return "0s";
    }
    // Whole seconds print as hours/minutes/seconds; anything finer as the
    // single largest unit that divides it.
    if (ns % duration_units[2].factor == 0) {
        std::string out;
        for (std::size_t i = 0; i < 3; ++i) {
            std::uint64_t n = ns / duration_units[i].factor;
            ns %= duration_units[i].factor;
            if (n != 0) {
                out += std::to_string(n) + std::string(duration_units[i].name);
            }
        }
        return out;
    }
    for (const auto& u : duration_units) {
        if (ns % u.factor == 0) {
            return std::to_string(ns / u.factor) + std::string(u.name);
        }
    }
    return std::to_string(ns) + "ns";
}

expected<cpu_set, std::string> parse_cpu_list(std::string_view text) {
    const std::string expected_form =
        "expected \"all\" or a CPU list like \"0-3,6\", found \"" + std::string(text) + "\"";
    cpu_set out;
    std::string_view s = trim(text);
    if (s.empty()) {
        return unexpected{expected_form};
    }
    while (true) {
        const auto comma = s.find(',');
        std::string_view item = trim(s.substr(0, comma));
        std::uint64_t first = 0;
        if (!take_number(item, first)) {
            return unexpected{expected_form};
        }
        item = trim(item);
        std::uint64_t last = first;
        if (!item.empty()) {
            if (item.front() != '-') {
                return unexpected{expected_form};
            }
            item.remove_prefix(1);
            item = trim(item);
            if (!take_number(item, last) || !trim(item).empty()) {
                return unexpected{expected_form};
            }
        }
        if (first > last) {
            return unexpected{"CPU range " + std::to_string(first) + "-" + std::to_string(last) +
                              " is backwards, in \"" + std::string(text) + "\""};
        }
        if (last > max_cpu_number) {
            return unexpected{"CPU " + std::to_string(last) + " is above the largest CPU number " +
                              std::to_string(max_cpu_number)};
        }
        for (auto cpu = first; cpu <= last; ++cpu) {
            out.add(static_cast<unsigned>(cpu));
        }
        if (comma == std::string_view::npos) {
            break;
        }
        s.remove_prefix(comma + 1);
    }
    return out;
}

}  // namespace shardd::config
