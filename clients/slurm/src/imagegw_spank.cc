// imagegw_spank.so: Shifter's --image=<type:tag> option for srun, sbatch and salloc.
// At submission (srun: local_user_init; sbatch/salloc: init_post_opt) it asks the
// Image Gateway for the image and puts SHIFTER_IMAGE, SHIFTER_IMAGETYPE and
// SHIFTER_IMAGEREQUEST into the job's environment, so compute nodes never call the
// gateway. A missing, failed or forbidden image fails the submission with the
// gateway's message.
extern "C" {
#include <slurm/spank.h>
}

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "imagegw/client.h"
#include "plugin_config.h"

// Defined by hand: in C++ the SPANK_PLUGIN macro's constants get internal linkage
// and Slurm would refuse to load the plugin.
extern "C" {
extern const char plugin_name[] = "imagegw";
extern const char plugin_type[] = "spank";
extern const unsigned int plugin_version = SLURM_VERSION_NUMBER;
extern const unsigned int spank_plugin_version = 1;
}

namespace {

// Slurm treats only a negative return as failure (and only for "required" plugins).
constexpr int kFailed = -1;
constexpr const char* kImageVar = "SHIFTER_IMAGE";
constexpr const char* kImageTypeVar = "SHIFTER_IMAGETYPE";
constexpr const char* kImageRequestVar = "SHIFTER_IMAGEREQUEST";

// Set by the option callback; the plugin's lifetime is one srun/sbatch/salloc.
std::string g_requested_image;
imagegw_spank::PluginConfig g_config;
// A bad plugstack.conf line fails only the submissions that ask for an image.
std::string g_config_error;

int on_image_option(int /*val*/, const char* optarg, int /*remote*/) {
  if (optarg == nullptr || *optarg == '\0') {
    slurm_error("imagegw: --image needs a value, e.g. --image=docker:ubuntu:24.04");
    return kFailed;
  }
  g_requested_image = optarg;
  return ESPANK_SUCCESS;
}

char kOptionName[] = "image";
char kOptionArg[] = "type:tag";
char kOptionUsage[] =
    "Run in this container image (Shifter), e.g. docker:ubuntu:24.04; "
    "a bare name:tag means docker.";
struct spank_option g_image_option = {kOptionName, kOptionArg, kOptionUsage, 1, 0,
                                      on_image_option};

bool submitting_context() {
  const spank_context_t context = spank_context();
  return context == S_CTX_LOCAL || context == S_CTX_ALLOCATOR;
}

// True when an enclosing sbatch/salloc already resolved this very request, as for
// an srun inside a batch script (Slurm hands the --image option down to it).
bool already_resolved(const std::string& requested) {
  const char* previous = std::getenv(kImageRequestVar);
  const char* id = std::getenv(kImageVar);
  return previous != nullptr && id != nullptr && *id != '\0' && requested == previous;
}

imagegw::ImageInfo find_image(const imagegw::ImageRequest& request) {
  imagegw::Client client(g_config.gateways, g_config.timeout_seconds, g_config.munge_socket);
  const bool may_pull = g_config.pull && request.type == "docker";
  imagegw::ImageInfo image;
  try {
    image = client.lookup(g_config.system, request.type, request.reference);
  } catch (const imagegw::Error& error) {
    if (!(may_pull && error.code() == "NOT_FOUND")) throw;
  }
  if (may_pull && image.state != "READY") {
    slurm_info("imagegw: pulling %s on %s", request.reference.c_str(), g_config.system.c_str());
    image = client.pull(
        g_config.system, request.type, request.reference,
        [](const imagegw::PullProgress& progress) {
          slurm_verbose("imagegw: %s %s", progress.state.c_str(), progress.message.c_str());
        },
        g_config.pull_timeout_seconds);
  }
  imagegw::ensure_ready(image, g_requested_image);
  return image;
}

void export_variable(spank_t sp, const char* name, const std::string& value) {
  // The job inherits srun's / sbatch's environment; the job control copy is for
  // the prolog and epilog (seen there as SPANK_<name>).
  if (setenv(name, value.c_str(), 1) != 0) {
    throw std::runtime_error(std::string("cannot set ") + name + " in the job environment");
  }
  const spank_err_t rc = spank_job_control_setenv(sp, name, value.c_str(), 1);
  if (rc != ESPANK_SUCCESS) {
    slurm_debug("imagegw: job control environment not set for %s: %s", name,
                spank_strerror(rc));
  }
}

int resolve_image(spank_t sp) {
  if (g_requested_image.empty() || already_resolved(g_requested_image)) return ESPANK_SUCCESS;
  if (!g_config_error.empty()) {
    slurm_error("imagegw: bad plugstack.conf argument: %s", g_config_error.c_str());
    return kFailed;
  }
  try {
    const imagegw::ImageRequest request = imagegw::parse_image_request(g_requested_image);
    const imagegw::ImageInfo image = find_image(request);
    // The name the runtime opens (<id>-<12 hex> for a private image), not the bare id.
    export_variable(sp, kImageVar, image.name);
    export_variable(sp, kImageTypeVar, "id");
    export_variable(sp, kImageRequestVar, g_requested_image);
    slurm_verbose("imagegw: %s is image %s", g_requested_image.c_str(), image.name.c_str());
    return ESPANK_SUCCESS;
  } catch (const imagegw::Error& error) {
    slurm_error("%s", error.what());
  } catch (const std::exception& error) {
    slurm_error("imagegw: %s", error.what());
  }
  return kFailed;
}

}  // namespace

extern "C" int slurm_spank_init(spank_t sp, int argc, char** argv) {
  const spank_err_t rc = spank_option_register(sp, &g_image_option);
  if (rc != ESPANK_SUCCESS) {
    slurm_error("imagegw: cannot register --image: %s", spank_strerror(rc));
    return kFailed;
  }
  if (!submitting_context()) return ESPANK_SUCCESS;
  try {
    g_config = imagegw_spank::parse_plugin_config(argc, argv);
  } catch (const std::invalid_argument& error) {
    g_config_error = error.what();
  }
  return ESPANK_SUCCESS;
}

extern "C" int slurm_spank_init_post_opt(spank_t sp, int /*argc*/, char** /*argv*/) {
  if (spank_context() != S_CTX_ALLOCATOR) return ESPANK_SUCCESS;
  return resolve_image(sp);
}

extern "C" int slurm_spank_local_user_init(spank_t sp, int /*argc*/, char** /*argv*/) {
  if (spank_context() != S_CTX_LOCAL) return ESPANK_SUCCESS;
  return resolve_image(sp);
}
