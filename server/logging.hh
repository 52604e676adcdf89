#pragma once
// Logging set-up. Every line names the thread it came from: "main" or
// "shard N". Lines go to stderr; under systemd the journal collects them.

#include "config/config.hh"

#include <string>

namespace shardd::server {

// Installs the default spdlog logger, or changes its level and format when
// called again (reload). Text lines carry a timestamp, except
// when stderr is connected to the journal (JOURNAL_STREAM matches), where a
// "<N>" syslog priority prefix lets journald keep the level and the journal's
// own timestamp is used. JSON lines are one object per line.
void setup_logging(config::log_level level, config::log_format format);

// Names the calling thread in every line it logs from now on.
void set_thread_label(std::string label);

}  // namespace shardd::server
