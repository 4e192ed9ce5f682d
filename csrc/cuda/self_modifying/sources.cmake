# Self-modifying memories (csrc/cuda/self_modifying): appended to `_sources` by
# csrc/cuda/CMakeLists.txt after memory_mlp/sources.cmake (its GEMM launchers are reused).
# Dims and flags are runtime values; the kernel set picks dtypes: ci = bf16 only,
# full = fp32/bf16/fp16.
list(APPEND _sources self_modifying/api.cpp self_modifying/driver.cpp
     self_modifying/self_modifying_bf16.cu)
if(NLCORE_KERNEL_SET STREQUAL "full")
  list(APPEND _sources self_modifying/self_modifying_f16.cu self_modifying/self_modifying_f32.cu)
endif()
