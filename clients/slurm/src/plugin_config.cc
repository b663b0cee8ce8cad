// Parses the SPANK plugin's plugstack.conf arguments into a PluginConfig; every
// error names the argument so a site admin can fix the line.
#include "plugin_config.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "imagegw/client.h"

namespace imagegw_spank {

namespace {
double parse_seconds(const std::string& key, const std::string& value) {
  char* end = nullptr;
  const double seconds = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !(seconds > 0)) {
    throw std::invalid_argument(key + "=" + value + ": expected a positive number of seconds");
  }
  return seconds;
}

bool parse_flag(const std::string& key, const std::string& value) {
  if (value == "1" || value == "yes" || value == "true") return true;
  if (value == "0" || value == "no" || value == "false") return false;
  throw std::invalid_argument(key + "=" + value + ": expected 0 or 1");
}
}  // namespace

PluginConfig parse_plugin_config(int argc, char** argv) {
  PluginConfig config;
  for (int i = 0; i < argc; ++i) {
    const std::string argument = argv[i];
    const auto equals = argument.find('=');
    if (equals == std::string::npos) {
      throw std::invalid_argument(argument + ": expected key=value");
    }
    const std::string key = argument.substr(0, equals);
    const std::string value = argument.substr(equals + 1);
    if (key == "gateway") {
      config.gateways = imagegw::split_addresses(value);
    } else if (key == "system") {
      config.system = value;
    } else if (key == "timeout") {
      config.timeout_seconds = parse_seconds(key, value);
    } else if (key == "pull") {
      config.pull = parse_flag(key, value);
    } else if (key == "pull_timeout") {
      config.pull_timeout_seconds = parse_seconds(key, value);
    } else if (key == "munge_socket") {
      config.munge_socket = value;
    } else {
      throw std::invalid_argument(argument + ": unknown argument (known: gateway, system, " +
                                  "timeout, pull, pull_timeout, munge_socket)");
    }
  }
  if (config.gateways.empty()) {
    throw std::invalid_argument("gateway=host:port[,host:port] is required");
  }
  if (config.system.empty()) throw std::invalid_argument("system= must not be empty");
  return config;
}

}  // namespace imagegw_spank
