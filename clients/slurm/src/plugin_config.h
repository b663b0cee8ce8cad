// The SPANK plugin's settings, parsed from its plugstack.conf arguments:
// gateway=host:port[,host:port] system=<name> timeout=<s> pull=0|1
// pull_timeout=<s> munge_socket=<path>.
#ifndef IMAGEGW_SPANK_PLUGIN_CONFIG_H
#define IMAGEGW_SPANK_PLUGIN_CONFIG_H

#include <string>
#include <vector>

namespace imagegw_spank {

struct PluginConfig {
  std::vector<std::string> gateways;
  std::string system = "default";
  double timeout_seconds = 10;
  bool pull = false;
  double pull_timeout_seconds = 600;
  std::string munge_socket;
};

// Throws std::invalid_argument naming the offending argument.
PluginConfig parse_plugin_config(int argc, char** argv);

}  // namespace imagegw_spank

#endif  // IMAGEGW_SPANK_PLUGIN_CONFIG_H
