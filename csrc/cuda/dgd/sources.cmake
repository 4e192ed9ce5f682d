# DGD (csrc/cuda/dgd): appended to `_sources` by csrc/cuda/CMakeLists.txt. Head dims are runtime
# values in the kernels; the kernel set picks dtypes: ci = bf16 only, full = fp32/bf16/fp16.
list(APPEND _sources dgd/api.cpp dgd/common.cu dgd/dgd_bf16.cu)
if(NLCORE_KERNEL_SET STREQUAL "full")
  list(APPEND _sources dgd/dgd_f16.cu dgd/dgd_f32.cu)
endif()
