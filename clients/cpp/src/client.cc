// imagegw::Client: calls imagegw.v1.GatewayService with a deadline on every call,
// moving on to the next gateway address only when one answers UNAVAILABLE (before
// any reply was received), and attaching a fresh MUNGE credential when configured.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "convert.h"
#include "imagegw/client.h"
#include "imagegw/v1/gateway_service.grpc.pb.h"
#include "munge_credential.h"

namespace imagegw {

namespace {
constexpr const char* kAuthenticationKey = "authentication";

std::string seconds_text(double seconds) {
  std::ostringstream text;
  text << seconds;
  return text.str();
}
}  // namespace

Error::Error(std::string code, std::string message)
    : std::runtime_error("imagegw: " + code + ": " + message),
      code_(std::move(code)),
      message_(std::move(message)) {}

class Client::Impl {
 public:
  Impl(std::vector<std::string> addresses, double timeout_seconds, std::string munge_socket)
      : addresses_(std::move(addresses)),
        timeout_seconds_(timeout_seconds),
        munge_socket_(std::move(munge_socket)) {}

  const std::vector<std::string>& addresses() const { return addresses_; }
  double timeout_seconds() const { return timeout_seconds_; }

  v1::GatewayService::Stub& stub(const std::string& address) {
    auto found = stubs_.find(address);
    if (found == stubs_.end()) {
      auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
      found = stubs_.emplace(address, v1::GatewayService::NewStub(channel)).first;
    }
    return *found->second;
  }

  // Sets the deadline and, with MUNGE, a credential made for this call only.
  void prepare(grpc::ClientContext& context, double seconds) const {
    const auto span = std::chrono::duration_cast<std::chrono::system_clock::duration>(
        std::chrono::duration<double>(seconds));
    context.set_deadline(std::chrono::system_clock::now() + span);
    if (!munge_socket_.empty()) {
      context.AddMetadata(kAuthenticationKey, make_munge_credential(munge_socket_));
    }
  }

  // The error for a failed attempt, with a readable text for a missed deadline.
  static Error attempt_error(const grpc::Status& status, const std::string& address,
                            double seconds) {
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return Error("DEADLINE_EXCEEDED", "gateway " + address + " did not answer within " +
                                            seconds_text(seconds) + " s");
    }
    return error_from_status(status);
  }

  static void note_unavailable(std::string& tried, const std::string& address,
                               const grpc::Status& status) {
    if (!tried.empty()) tried += "; ";
    tried += address + " (" + status.error_message() + ")";
  }

  static Error none_reachable(const std::string& tried) {
    return Error("UNAVAILABLE", "no gateway could be reached: " + tried);
  }

 private:
  std::vector<std::string> addresses_;
  double timeout_seconds_;
  std::string munge_socket_;
  std::map<std::string, std::unique_ptr<v1::GatewayService::Stub>> stubs_;
};

namespace {
// Reads a pull stream to its end. Sets `replied` once any message arrived, which
// makes a later UNAVAILABLE final (the pull may already be running there).
grpc::Status read_pull(grpc::ClientReader<v1::PullImageResponse>& reader,
                       grpc::ClientContext& context, const ProgressCallback& on_progress,
                       ImageInfo& last, bool& replied) {
  v1::PullImageResponse response;
  while (reader.Read(&response)) {
    replied = true;
    last = image_info_from(response.image());
    if (!on_progress) continue;
    try {
      on_progress(progress_from(response));
    } catch (...) {
      context.TryCancel();
      reader.Finish();
      throw;
    }
  }
  return reader.Finish();
}

}  // namespace

void ensure_ready(const ImageInfo& image, const std::string& requested) {
  if (image.state == "READY") return;
  if (image.state == "FAILED") {
    throw Error(image.failure_code.empty() ? "UNKNOWN" : image.failure_code,
                image.failure_message.empty() ? "the last pull of " + requested + " failed"
                                              : image.failure_message);
  }
  throw Error("FAILED_PRECONDITION",
              "image " + requested + " is not ready (state " +
                  (image.state.empty() ? "UNSPECIFIED" : image.state) +
                  "); pull it and wait until it is READY");
}

Client::Client(std::vector<std::string> addresses, double timeout_seconds,
               std::string munge_socket) {
  if (addresses.empty()) {
    throw Error("INVALID_ARGUMENT", "no gateway address given; use host:port[,host:port]");
  }
  if (!(timeout_seconds > 0)) {
    throw Error("INVALID_ARGUMENT", "the timeout must be a positive number of seconds");
  }
  impl_ = std::make_unique<Impl>(std::move(addresses), timeout_seconds, std::move(munge_socket));
}

Client::~Client() = default;

ImageInfo Client::lookup(const std::string& system, const std::string& type,
                         const std::string& reference) {
  v1::LookupImageRequest request;
  request.set_system(system);
  request.set_type(type);
  request.set_reference(reference);
  std::string tried;
  for (const auto& address : impl_->addresses()) {
    grpc::ClientContext context;
    impl_->prepare(context, impl_->timeout_seconds());
    v1::LookupImageResponse response;
    const grpc::Status status = impl_->stub(address).LookupImage(&context, request, &response);
    if (status.ok()) return image_info_from(response.image());
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) {
      throw Impl::attempt_error(status, address, impl_->timeout_seconds());
    }
    Impl::note_unavailable(tried, address, status);
  }
  throw Impl::none_reachable(tried);
}

ImageInfo Client::pull(const std::string& system, const std::string& type,
                       const std::string& reference, const ProgressCallback& on_progress,
                       double pull_timeout_seconds) {
  const double seconds = pull_timeout_seconds > 0 ? pull_timeout_seconds
                                                  : impl_->timeout_seconds();
  v1::PullImageRequest request;
  request.set_system(system);
  request.set_type(type);
  request.set_reference(reference);
  std::string tried;
  for (const auto& address : impl_->addresses()) {
    grpc::ClientContext context;
    impl_->prepare(context, seconds);
    auto reader = impl_->stub(address).PullImage(&context, request);
    ImageInfo last;
    bool replied = false;
    const grpc::Status status = read_pull(*reader, context, on_progress, last, replied);
    if (status.ok()) {
      ensure_ready(last, reference);
      return last;
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || replied) {
      throw Impl::attempt_error(status, address, seconds);
    }
    Impl::note_unavailable(tried, address, status);
  }
  throw Impl::none_reachable(tried);
}

}  // namespace imagegw
