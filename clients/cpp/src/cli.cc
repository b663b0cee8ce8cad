// imagegw-cpp: the command line over imagegw::Client (lookup and pull).
// Prints the image's runtime name (its id; "<id>-<12 hex>" when private) on stdout,
// progress on stderr; exit 1 with "imagegw: <CODE>: <message>" when the gateway
// refuses, 2 on a usage error.
#include <getopt.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "imagegw/client.h"

namespace {

constexpr const char* kUsage =
    "usage: imagegw-cpp [options] lookup|pull IMAGE\n"
    "\n"
    "IMAGE is TYPE:REFERENCE (docker:ubuntu:24.04, id:<image id>) or a bare\n"
    "docker reference (ubuntu:24.04). Prints the id of the READY image.\n"
    "\n"
    "options:\n"
    "  --gateway HOST:PORT[,HOST:PORT]  gateways to try in turn (default: $IMAGEGW_GATEWAY)\n"
    "  --system NAME                    the system (platform) to ask about (default: default)\n"
    "  --timeout SECONDS                deadline of a lookup (default: 30)\n"
    "  --pull-timeout SECONDS           deadline of a whole pull (default: 1800)\n"
    "  --munge-socket PATH              send a MUNGE credential made through this socket\n"
    "  -h, --help                       show this help\n";

struct Options {
  std::string gateway;
  std::string system = "default";
  double timeout = 30;
  double pull_timeout = 1800;
  std::string munge_socket;
  std::string command;
  std::string image;
};

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

double parse_seconds(const char* flag, const char* text) {
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value > 0)) {
    throw UsageError(std::string(flag) + " wants a positive number of seconds, not '" + text +
                     "'");
  }
  return value;
}

Options parse_options(int argc, char** argv) {
  enum { kGateway = 1000, kSystem, kTimeout, kPullTimeout, kMungeSocket };
  static const option long_options[] = {
      {"gateway", required_argument, nullptr, kGateway},
      {"system", required_argument, nullptr, kSystem},
      {"timeout", required_argument, nullptr, kTimeout},
      {"pull-timeout", required_argument, nullptr, kPullTimeout},
      {"munge-socket", required_argument, nullptr, kMungeSocket},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0}};
  Options options;
  if (const char* gateway = std::getenv("IMAGEGW_GATEWAY")) options.gateway = gateway;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "+h", long_options, nullptr)) != -1) {
    switch (opt) {
      case kGateway: options.gateway = optarg; break;
      case kSystem: options.system = optarg; break;
      case kTimeout: options.timeout = parse_seconds("--timeout", optarg); break;
      case kPullTimeout: options.pull_timeout = parse_seconds("--pull-timeout", optarg); break;
      case kMungeSocket: options.munge_socket = optarg; break;
      case 'h': std::cout << kUsage; std::exit(0);
      default: throw UsageError(std::string("unknown or incomplete option '") +
                                argv[optind - 1] + "'");
    }
  }
  if (argc - optind != 2) throw UsageError("expected a command and an image");
  options.command = argv[optind];
  options.image = argv[optind + 1];
  if (options.command != "lookup" && options.command != "pull") {
    throw UsageError("unknown command '" + options.command + "'; use lookup or pull");
  }
  if (options.gateway.empty()) throw UsageError("no gateway: give --gateway HOST:PORT");
  return options;
}

void print_progress(const imagegw::PullProgress& progress) {
  static std::string last_line;
  std::string line = progress.state;
  if (!progress.stage.empty()) line += " " + progress.stage;
  if (progress.layer_count > 0) {
    line += " layer " + std::to_string(progress.layer_index) + "/" +
            std::to_string(progress.layer_count);
  }
  if (!progress.message.empty()) line += ": " + progress.message;
  if (line == last_line) return;
  last_line = line;
  std::cerr << "pull: " << line << std::endl;
}

int run(const Options& options) {
  imagegw::Client client(imagegw::split_addresses(options.gateway), options.timeout,
                         options.munge_socket);
  const imagegw::ImageRequest request = imagegw::parse_image_request(options.image);
  const imagegw::ImageInfo image =
      options.command == "lookup"
          ? client.lookup(options.system, request.type, request.reference)
          : client.pull(options.system, request.type, request.reference, print_progress,
                        options.pull_timeout);
  imagegw::ensure_ready(image, options.image);
  std::cout << image.name << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = parse_options(argc, argv);
  } catch (const UsageError& error) {
    std::cerr << "imagegw-cpp: " << error.what() << "\n\n" << kUsage;
    return 2;
  }
  try {
    return run(options);
  } catch (const imagegw::Error& error) {
    std::cerr << error.what() << std::endl;
    return 1;
  }
}
