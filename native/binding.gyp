{
  "variables": {
    # Set by node-gyp from the running node's config (process.config); default for safety.
    "node_use_openssl%": "true"
  },
  "targets": [
    {
      "target_name": "tender_native",
      "sources": ["src/addon.cc", "src/gear.cc", "src/shuffle.cc", "src/seal.cc", "src/pagecache.cc", "src/directio.cc", "src/lease.cc", "src/freeze.cc", "src/nvml.cc"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      # NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS: a worker thread that is being terminated cannot
      # take a JS exception; without it node-addon-api aborts the whole process when a call into
      # the addon fails at that moment (node-addon-api#975; zstd-napi sets it for the same reason).
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED",
                  "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-O2", "-O0", "-fno-exceptions"],
      "cflags_cc!": ["-O2", "-O0", "-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra"],
      # OpenSSL for sealInto/openInto (src/seal.cc): the addon uses the OpenSSL that is already
      # inside the node process and links NO libcrypto of its own.
      # - Headers: node-gyp's include dir <(node_root_dir)/include/node (from addon.gypi) carries the
      #   OpenSSL headers of the OpenSSL bundled into node (e.g. /usr/include/node/openssl, 3.0.x for
      #   Node 20), so they match the library the calls bind to; with node_shared_openssl=="true"
      #   (distro node linked to the system libcrypto) the system headers (libssl-dev) are used.
      # - Symbols: left undefined in tender_native.node; the dynamic loader binds them at load time
      #   (lazily, per call site) to the definitions the node executable exports (a static OpenSSL
      #   build exports them: `nm -D $(which node) | grep EVP_`) or, for a shared-OpenSSL node, to the
      #   libcrypto node itself depends on. macOS gets the same from addon.gypi's
      #   "-undefined dynamic_lookup". Linking -lcrypto here would load a SECOND OpenSSL next to
      #   node's; the calls would still bind to node's copy (the executable comes first in the
      #   lookup order) but the two libraries' internals would then mix, so it is deliberately not
      #   done. Init checks that every needed symbol resolved (weak references on ELF, dlsym on
      #   macOS) and that the OpenSSL major version matches the headers before exporting
      #   sealInto/openInto, so a node without them loses only these two functions.
      # - Windows is not built with it (untested there: node.lib would have to export OpenSSL),
      #   nor is a node built without OpenSSL; there the addon just lacks sealInto/openInto and
      #   src/crypto/seal-into.ts uses node:crypto.
      "conditions": [
        ["node_use_openssl!='true' or OS=='win'", {
          "defines": ["TENDER_NO_OPENSSL"]
        }],
        ["target_arch=='x64' and OS!='win'", {
          "cflags_cc": ["-march=x86-64-v2", "-mtune=generic"]
        }],
        # NVML (src/nvml.cc) is dlopen'ed at run time, never linked: libdl for glibc before 2.34.
        ["OS=='linux'", {
          "libraries": ["-ldl"]
        }],
        ["OS=='mac'", {
          "xcode_settings": {
            "GCC_OPTIMIZATION_LEVEL": "3",
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "OTHER_CPLUSPLUSFLAGS": ["-fexceptions"]
          }
        }],
        ["OS=='win'", {
          "msvs_settings": {
            "VCCLCompilerTool": { "Optimization": 2, "ExceptionHandling": 1 }
          }
        }]
      ]
    },
    {
      # The freeze guard (src/freeze_guard.cc): a process of its own that freezes a filesystem for
      # `tender backup --fsfreeze` and thaws it whatever happens to tender. Linux only.
      "target_name": "tender-freeze-guard",
      "type": "executable",
      "conditions": [
        ["OS=='linux'", {
          "sources": ["src/freeze_guard.cc", "src/freeze.cc"],
          "cflags_cc!": ["-std=gnu++17", "-std=gnu++20", "-fno-exceptions"],
          "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"]
        }, {
          "type": "none"
        }]
      ]
    }
  ]
}
