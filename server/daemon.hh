#pragma once
// The daemon proper: start the shards, serve until a signal says stop.

#include "config/load.hh"

#include <string>

namespace shardd::server {

struct daemon_options {
    std::string config_path;
    config::overrides over;  // re-applied on reload
};

// Runs until SIGTERM or SIGINT; returns the process exit status.
int run_daemon(config::config cfg, const cpu_set& cpus, const daemon_options& opts);

}  // namespace shardd::server
