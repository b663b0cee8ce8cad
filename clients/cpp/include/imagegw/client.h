// The C++ client of the Image Gateway's public API (imagegw.v1.GatewayService).
// It owns gateway failover, per-call deadlines, optional MUNGE credentials and the
// translation of gRPC statuses into imagegw::Error. No gRPC type appears here.
#ifndef IMAGEGW_CLIENT_H
#define IMAGEGW_CLIENT_H

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace imagegw {

// A failed call: the gRPC status code name ("NOT_FOUND") and the server's message.
// what() reads "imagegw: NOT_FOUND: <message>".
class Error : public std::runtime_error {
 public:
  Error(std::string code, std::string message);
  const std::string& code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }

 private:
  std::string code_;
  std::string message_;
};

// An image record as the gateway reports it. State names drop the enum prefix
// ("READY", "PULLING", "FAILED").
struct ImageInfo {
  std::string id;
  std::string system;
  std::string type;
  std::string reference;
  std::string state;
  std::vector<std::string> tags;
  std::vector<std::string> env;
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::string workdir;
  std::string user;
  std::string format;
  std::string image_file;
  // What the runtime opens: <image dir>/<name>.squashfs and <name>.meta (the id, with an
  // ACL suffix "<id>-<12 hex>" for a private image).
  std::string name;
  std::uint64_t size_bytes = 0;
  // Set when state is "FAILED".
  std::string failure_code;
  std::string failure_message;
};

// One progress message of a running pull.
struct PullProgress {
  std::string state;  // the image's state, e.g. "PULLING"
  std::string stage;  // the job's stage, e.g. "DOWNLOADING"; empty when unknown
  std::uint32_t layer_index = 0;
  std::uint32_t layer_count = 0;
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total = 0;
  std::string message;
};

using ProgressCallback = std::function<void(const PullProgress&)>;

// What a user asked for: "docker:ubuntu:24.04", "id:<hex>", or a bare
// "ubuntu:24.04", which means docker (as in Shifter).
struct ImageRequest {
  std::string type;
  std::string reference;
};

// Splits a user's image string; throws Error("INVALID_ARGUMENT", ...) when empty.
ImageRequest parse_image_request(const std::string& text);

// Returns when the image is READY; throws the pull's failure when it is FAILED and
// Error("FAILED_PRECONDITION", ...) while it is still queued or being pulled.
void ensure_ready(const ImageInfo& image, const std::string& requested);

// Splits "host:port,host:port" into addresses, dropping empty items.
std::vector<std::string> split_addresses(const std::string& text);

class Client {
 public:
  // Tries each gateway address in turn when one is UNAVAILABLE. Every call gets a
  // deadline of timeout_seconds. With munge_socket set, each call carries a fresh
  // MUNGE credential (metadata key "authentication") made through that socket.
  // Not thread-safe: use one Client per thread.
  Client(std::vector<std::string> addresses, double timeout_seconds,
         std::string munge_socket = "");
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Looks an image up by reference (type "docker") or by id (type "id").
  ImageInfo lookup(const std::string& system, const std::string& type,
                   const std::string& reference);

  // Pulls an image and waits until it is READY, reporting progress on the way.
  // A FAILED pull throws the job's failure. The deadline covers the whole pull:
  // pull_timeout_seconds, or the client's timeout when it is 0.
  ImageInfo pull(const std::string& system, const std::string& type,
                 const std::string& reference, const ProgressCallback& on_progress = {},
                 double pull_timeout_seconds = 0);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace imagegw

#endif  // IMAGEGW_CLIENT_H
