{
  "targets": [
    {
      "target_name": "punch_hole",
      "sources": ["punch_hole.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
