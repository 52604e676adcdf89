#pragma once
// Walks a parsed TOML document into a config: each key checked on its own
// (type, unit, range, "did you mean"), then the cross-checks between keys.
// Every problem becomes a diagnostic with the key's file position; nothing
// stops at the first one. Internal to config/: load.cc reads and parses the
// text, this reads the tree.

#include "config/config.hh"
#include "config/diagnostic.hh"
#include "config/load.hh"

#include <string>
#include <toml++/toml.h>
#include <vector>

namespace shardd::config::internal {

// Fills `cfg` from `root` (file `file`), appending to `diags`. `allowed`
// is the CPU set that runtime.cpus must fall in.
void read_document(const toml::table& root, const std::string& file, const overrides& over, const cpu_set& allowed,
                   config& cfg, std::vector<diagnostic>& diags);

}  // namespace shardd::config::internal
