#pragma once
// Test support: an executor for the calling thread, or a failed REQUIRE that
// says why it could not start.

#include "reactor/executor.hh"

#include <catch2/catch.hpp>

namespace shardd::test {

inline std::unique_ptr<executor> make_executor(executor_config cfg = {}) {
    if (cfg.name == "unnamed") {
        cfg.name = "test";
    }
    auto ex = executor::create(cfg);
    INFO((ex ? std::string() : ex.error().message));
    REQUIRE(ex.has_value());
    return std::move(*ex);
}

}  // namespace shardd::test
