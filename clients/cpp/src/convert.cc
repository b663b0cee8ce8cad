// Translation from the generated imagegw.v1 messages and gRPC statuses into the
// client's plain types. Enum names lose their prefix: IMAGE_STATE_READY -> READY.
#include "convert.h"

#include <array>

namespace imagegw {

namespace {
constexpr std::array<const char*, 17> kCodeNames = {
    "OK",        "CANCELLED",         "UNKNOWN",           "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL",      "UNAVAILABLE",       "DATA_LOSS",
    "UNAUTHENTICATED"};

std::string without_prefix(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) == 0) return name.substr(prefix.size());
  return name;
}

std::string state_name(v1::ImageState state) {
  return without_prefix(v1::ImageState_Name(state), "IMAGE_STATE_");
}
}  // namespace

std::string status_code_name(int code) {
  if (code >= 0 && code < static_cast<int>(kCodeNames.size())) return kCodeNames[code];
  return "CODE_" + std::to_string(code);
}

Error error_from_status(const grpc::Status& status) {
  return Error(status_code_name(status.error_code()), status.error_message());
}

ImageInfo image_info_from(const v1::Image& image) {
  ImageInfo info;
  info.id = image.id();
  info.system = image.system();
  info.type = image.type();
  info.reference = image.reference();
  info.state = state_name(image.state());
  info.tags.assign(image.tags().begin(), image.tags().end());
  const auto& meta = image.metadata();
  info.env.assign(meta.env().begin(), meta.env().end());
  info.entrypoint.assign(meta.entrypoint().begin(), meta.entrypoint().end());
  info.cmd.assign(meta.cmd().begin(), meta.cmd().end());
  info.workdir = meta.workdir();
  info.user = meta.user();
  info.format = image.format();
  info.image_file = image.image_file();
  info.name = image.name().empty() ? image.id() : image.name();
  info.size_bytes = image.size_bytes();
  if (image.has_failure()) {
    info.failure_code = status_code_name(image.failure().code());
    info.failure_message = image.failure().message();
  }
  return info;
}

PullProgress progress_from(const v1::PullImageResponse& response) {
  PullProgress progress;
  progress.state = state_name(response.image().state());
  const v1::Progress& source =
      response.has_progress() ? response.progress() : response.image().progress();
  if (source.stage() != v1::STAGE_UNSPECIFIED) {
    progress.stage = without_prefix(v1::Stage_Name(source.stage()), "STAGE_");
  }
  progress.layer_index = source.layer_index();
  progress.layer_count = source.layer_count();
  progress.bytes_done = source.bytes_done();
  progress.bytes_total = source.bytes_total();
  progress.message = source.message();
  return progress;
}

}  // namespace imagegw
