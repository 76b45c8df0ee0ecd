// NVML (libnvidia-ml, loaded with dlopen at run time) read on a thread of its own; see nvml.cc.
#pragma once
#include <napi.h>

namespace tender {

// Adds the NvmlSession class to the addon's exports (Linux), or nvmlUnavailable saying why not.
void exportNvml(Napi::Env env, Napi::Object exports);

}  // namespace tender
