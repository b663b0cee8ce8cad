// Creates MUNGE credentials through a given munged socket (libmunge's munge_encode).
// A fresh credential per call: the gateway rejects a replayed one.
#ifndef IMAGEGW_MUNGE_CREDENTIAL_H
#define IMAGEGW_MUNGE_CREDENTIAL_H

#include <string>

namespace imagegw {

// Returns a new credential with an empty payload; throws Error("UNAUTHENTICATED", ...)
// naming the socket when munged cannot make one.
std::string make_munge_credential(const std::string& socket_path);

}  // namespace imagegw

#endif  // IMAGEGW_MUNGE_CREDENTIAL_H
