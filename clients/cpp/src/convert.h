// Translation from the generated imagegw.v1 messages and gRPC statuses into the
// client's plain types (ImageInfo, PullProgress, Error).
#ifndef IMAGEGW_CONVERT_H
#define IMAGEGW_CONVERT_H

#include <grpcpp/grpcpp.h>

#include <string>

#include "imagegw/client.h"
#include "imagegw/v1/gateway_service.pb.h"

namespace imagegw {

// "NOT_FOUND" for 5; "CODE_<n>" for numbers outside the canonical codes.
std::string status_code_name(int code);
Error error_from_status(const grpc::Status& status);
ImageInfo image_info_from(const v1::Image& image);
PullProgress progress_from(const v1::PullImageResponse& response);

}  // namespace imagegw

#endif  // IMAGEGW_CONVERT_H
