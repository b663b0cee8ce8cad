// Parsing of what users type: image strings ("docker:ubuntu:24.04") and gateway lists.
// The type prefix is recognised only for known types, so a bare "ubuntu:24.04" or
// "registry.example.org:5000/app:1" is a docker reference.
#include <array>
#include <sstream>
#include <string>
#include <vector>

#include "imagegw/client.h"

namespace imagegw {

namespace {
constexpr std::array<const char*, 2> kKnownTypes = {"docker", "id"};

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\n");
  return text.substr(first, last - first + 1);
}
}  // namespace

ImageRequest parse_image_request(const std::string& text) {
  const std::string image = trim(text);
  ImageRequest request{"docker", image};
  const auto colon = image.find(':');
  if (colon != std::string::npos) {
    const std::string prefix = image.substr(0, colon);
    for (const char* known : kKnownTypes) {
      if (prefix == known) {
        request = {prefix, image.substr(colon + 1)};
        break;
      }
    }
  }
  if (request.reference.empty()) {
    throw Error("INVALID_ARGUMENT", "no image given in '" + text +
                                        "'; use TYPE:REFERENCE, e.g. docker:ubuntu:24.04");
  }
  return request;
}

std::vector<std::string> split_addresses(const std::string& text) {
  std::vector<std::string> addresses;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    item = trim(item);
    if (!item.empty()) addresses.push_back(item);
  }
  return addresses;
}

}  // namespace imagegw
