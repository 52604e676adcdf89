#include "server/cli.hh"

#include <CLI/CLI.hpp>
#include <iostream>

namespace shardd::server {

expected<cli_options, int> parse_cli(int argc, char** argv) {
    cli_options opts;
    CLI::App app{"shardd: a sharded thread-per-core TCP echo and proxy daemon on io_uring", "shardd"};
    app.set_version_flag("--version", std::string("shardd ") + SHARDD_VERSION);
    app.footer("Exit status: 0 ok, 1 runtime failure, 64 bad command line, 78 bad configuration.\n"
               "Examples:\n"
               "  shardd -c /etc/shardd/shardd.toml             run in the foreground\n"
               "  shardd --check -c shardd.toml                 validate, like nginx -t\n"
               "  shardd --print-config --cpus 0-1 -c shardd.toml  show the effective config");
    app.add_option("-c,--config", opts.config_path,
                   std::string("configuration file (default ") + default_config_path + ")")
        ->option_text("FILE");
    app.add_flag("--check", opts.check,
                 "validate the configuration, print 'configuration OK' and the backend that would run here, or "
                 "the errors; bind nothing");
    app.add_flag("--print-config", opts.print_config, "print the effective configuration as TOML and exit");
    std::string cpus;
    auto* cpus_opt =
        app.add_option("--cpus", cpus, "CPUs to run shards on, overrides runtime.cpus (\"all\", \"0-3,6\")")
            ->option_text("LIST");
    std::string level;
    auto* level_opt = app.add_option("--log-level", level, "overrides log.level (trace, debug, info, warn, error)")
                          ->option_text("LEVEL");
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::cout << app.help();
        return unexpected{exit_ok};
    } catch (const CLI::CallForVersion& e) {
        std::cout << e.what() << "\n";
        return unexpected{exit_ok};
    } catch (const CLI::ParseError& e) {
        std::cerr << "shardd: " << e.what() << "\nRun 'shardd --help' for usage.\n";
        return unexpected{exit_usage};
    }
    if (cpus_opt->count() > 0) {
        opts.over.cpus = cpus;
    }
    if (level_opt->count() > 0) {
        opts.over.log_level = level;
    }
    return opts;
}

}  // namespace shardd::server
