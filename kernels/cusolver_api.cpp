// dlopen of libcusolver.so.<major> (see cusolver_api.h): by soname first (the loader's paths),
// then beside the libcublas this process already uses (the CUDA toolkit's library folder).
#include "cusolver_api.h"

#include <cublas_v2.h>
#include <dlfcn.h>

#include <mutex>
#include <string>
#include <type_traits>

namespace ql::cuda {
namespace {

#define QL_STRINGIFY2(x) #x
#define QL_STRINGIFY(x) QL_STRINGIFY2(x)
const char* kSoname = "libcusolver.so." QL_STRINGIFY(CUSOLVER_VER_MAJOR);

struct Loaded {
    CusolverApi api;
    std::string error;
};

Loaded load()
{
    Loaded out;
    void* lib = dlopen(kSoname, RTLD_NOW | RTLD_LOCAL);
    std::string tried = kSoname;
    if (!lib) {
        Dl_info info{};
        if (dladdr(reinterpret_cast<void*>(&cublasCreate_v2), &info) && info.dli_fname) {
            std::string dir = info.dli_fname;
            dir = dir.substr(0, dir.find_last_of('/') + 1);
            const std::string path = dir + kSoname;
            lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
            tried += ", " + path;
        }
    }
    if (!lib) {
        const char* why = dlerror();
        out.error = "cuSOLVER (" + std::string(kSoname) + ") cannot be loaded (tried " + tried +
                    ")" + (why ? std::string(": ") + why : std::string());
        return out;
    }
    auto get = [&](auto& fn, const char* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
        if (!fn && out.error.empty())
            out.error = std::string("cuSOLVER has no ") + name + " (" + kSoname + ")";
    };
    get(out.api.create, "cusolverDnCreate");
    get(out.api.destroy, "cusolverDnDestroy");
    get(out.api.setStream, "cusolverDnSetStream");
    get(out.api.createParams, "cusolverDnCreateParams");
    get(out.api.destroyParams, "cusolverDnDestroyParams");
    get(out.api.potrfBufferSize, "cusolverDnXpotrf_bufferSize");
    get(out.api.potrf, "cusolverDnXpotrf");
    return out;  // the library stays loaded for the life of the process
}

}  // namespace

Result<const CusolverApi*> cusolverApi()
{
    static const Loaded loaded = load();
    if (!loaded.error.empty()) return makeError(ErrorCode::Unsupported, loaded.error);
    return &loaded.api;
}

}  // namespace ql::cuda
