// shardd's entry point: command line -> config -> logging -> shards -> wait
// for signals. Only this file decides to exit.

#include "config/load.hh"
#include "server/cli.hh"
#include "server/daemon.hh"
#include "server/logging.hh"

#include <iostream>
#include <spdlog/spdlog.h>

using namespace shardd;

int main(int argc, char** argv) {
    auto cli = server::parse_cli(argc, argv);
    if (!cli) {
        return cli.error();
    }
    const auto allowed = allowed_cpus();
    if (!allowed) {
        std::cerr << "shardd: sched_getaffinity: " << allowed.error().message() << "\n";
        return server::exit_failure;
    }
    auto loaded = config::load_file(cli->config_path, cli->over, *allowed);
    bool bad_command_line = false;
    for (const auto& d : loaded.diagnostics) {
        std::cerr << d.to_string() << "\n";
        bad_command_line |= d.from == config::origin::command_line && d.level == config::severity::error;
    }
    if (!loaded.ok()) {
        return bad_command_line ? server::exit_usage : server::exit_config;
    }
    if (cli->print_config) {
        std::cout << config::to_toml(*loaded.cfg);
    }
    if (cli->check) {
        // With --print-config, stdout stays pure TOML. The backend line does
        // not change the exit status: the file is valid, and a --check run in
        // a build container may well have no io_uring where the daemon will.
        (cli->print_config ? std::cerr : std::cout) << "configuration OK\n"
                                                    << server::backend_forecast(loaded.cfg->runtime.backend) << "\n";
    }
    if (cli->check || cli->print_config) {
        return server::exit_ok;
    }

    server::setup_logging(loaded.cfg->log.level, loaded.cfg->log.format);
    const cpu_set cpus = config::effective_cpus(*loaded.cfg, *allowed);
    try {
        return server::run_daemon(std::move(*loaded.cfg), cpus, {cli->config_path, cli->over});
    } catch (const std::exception& e) {
        spdlog::critical("fatal: {}", e.what());
        return server::exit_failure;
    }
}
