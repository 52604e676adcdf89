// The shipped systemd units, checked by systemd's own tools: the service's
// exposure under `systemd-analyze security` (at most 2.0, "OK"), and
// `systemd-analyze verify` with nothing to say, for it and for the socket
// unit. Skipped where systemd-analyze is not installed (.ci/install-deps
// installs it).
#include "tests/support/process.hh"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <unistd.h>

using namespace shardd::test;

namespace {

const std::string analyze = "/usr/bin/systemd-analyze";

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// The shipped unit `name`, with /usr/sbin/shardd replaced by the binary under
// test (verify checks that ExecStart= can run), in a temporary directory
// under its own name.
std::unique_ptr<temp_file> unit_under_test(const std::string& name) {
    std::string text = read_file(source_path("systemd/" + name));
    REQUIRE(!text.empty());
    const std::string binary = std::filesystem::absolute(shardd_binary()).string();
    text = std::regex_replace(text, std::regex("/usr/sbin/shardd"), binary);
    return std::make_unique<temp_file>(name, text);
}

}  // namespace

TEST_CASE("systemd-analyze security: the service's exposure is at most 2.0", "[systemd]") {
    if (access(analyze.c_str(), X_OK) != 0) {
        WARN("systemd-analyze is not installed: skipped");
        return;
    }
    const auto unit = unit_under_test("shardd.service");
    const run_result r = run_program(analyze, {"security", "--offline=true", unit->path()});
    INFO(r.out << r.err);
    std::smatch m;
    REQUIRE(std::regex_search(r.out, m, std::regex(R"(Overall exposure level for shardd\.service: ([0-9]+\.[0-9]))")));
    const double exposure = std::stod(m[1].str());
    WARN("systemd-analyze security: exposure " << exposure);
    CHECK(exposure <= 2.0);
}

TEST_CASE("systemd-analyze verify: the units have nothing to complain about", "[systemd]") {
    if (access(analyze.c_str(), X_OK) != 0) {
        WARN("systemd-analyze is not installed: skipped");
        return;
    }
    // Both in one directory: the socket unit names the service.
    const auto service = unit_under_test("shardd.service");
    const std::string dir = std::filesystem::path(service->path()).parent_path().string();
    std::string socket_unit = read_file(source_path("systemd/shardd.socket"));
    REQUIRE(!socket_unit.empty());
    {
        std::ofstream out(dir + "/shardd.socket");
        out << socket_unit;
    }
    for (const char* name : {"shardd.service", "shardd.socket"}) {
        INFO(name);
        const run_result r = run_program(analyze, {"verify", dir + "/" + name});
        CHECK(r.err == "");
        CHECK(r.exit_code == 0);
    }
    std::filesystem::remove(dir + "/shardd.socket");
}
