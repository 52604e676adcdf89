#pragma once
// The daemon proper: start the shards, serve until a signal says stop.

#include "config/load.hh"

#include <string>

namespace shardd::server {

struct daemon_options {
    std::string config_path;
    config::overrides over;  // re-applied on reload
};

// For --check: the backend `wanted` would give on this machine, and why, as
// one line: "backend: io_uring (runtime.backend = \"auto\"; io_uring is usable
// here)". Sets up and probes a small io_uring to find out; binds nothing.
std::string backend_forecast(config::io_backend wanted);

// Runs until SIGTERM or SIGINT; returns the process exit status.
int run_daemon(config::config cfg, const cpu_set& cpus, const daemon_options& opts);

}  // namespace shardd::server
