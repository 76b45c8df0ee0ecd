{
  "targets": [
    {
      "target_name": "tender_native",
      "sources": ["src/addon.cc", "src/gear.cc", "src/shuffle.cc"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-O2", "-O0", "-fno-exceptions"],
      "cflags_cc!": ["-O2", "-O0", "-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra"],
      "conditions": [
        ["target_arch=='x64' and OS!='win'", {
          "cflags_cc": ["-march=x86-64-v2", "-mtune=generic"]
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
    }
  ]
}
