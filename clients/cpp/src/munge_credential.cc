// Creates MUNGE credentials through a given munged socket (libmunge's munge_encode).
// The context is created per call, so this is safe from several threads.
#include "munge_credential.h"

#include <munge.h>

#include <cstdlib>
#include <memory>

#include "imagegw/client.h"

namespace imagegw {

std::string make_munge_credential(const std::string& socket_path) {
  std::unique_ptr<struct munge_ctx, void (*)(munge_ctx_t)> ctx(munge_ctx_create(),
                                                               munge_ctx_destroy);
  if (!ctx) throw Error("UNAUTHENTICATED", "cannot create a MUNGE context (out of memory)");
  munge_err_t rc = munge_ctx_set(ctx.get(), MUNGE_OPT_SOCKET, socket_path.c_str());
  char* credential = nullptr;
  if (rc == EMUNGE_SUCCESS) rc = munge_encode(&credential, ctx.get(), nullptr, 0);
  if (rc != EMUNGE_SUCCESS) {
    const char* detail = munge_ctx_strerror(ctx.get());
    throw Error("UNAUTHENTICATED",
                "cannot create a MUNGE credential through " + socket_path + ": " +
                    (detail ? detail : munge_strerror(rc)));
  }
  std::string result(credential);
  std::free(credential);
  return result;
}

}  // namespace imagegw
