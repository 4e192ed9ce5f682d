# MLP memory scan (csrc/cuda/memory_mlp): appended to `_sources` by csrc/cuda/CMakeLists.txt.
# Dims and flags are runtime values in the step-one kernels; the persistent kernels
# (NLCORE_MEMORY_MLP_FLAG_PERSISTENT, sm_90 body only) are templated on six slice shapes.
# The kernel set picks dtypes: ci = bf16 only, full = fp32/bf16/fp16.
list(APPEND _sources memory_mlp/api.cpp memory_mlp/driver.cpp memory_mlp/common.cu
     memory_mlp/memory_mlp_bf16.cu memory_mlp/persistent_bf16.cu)
if(NLCORE_KERNEL_SET STREQUAL "full")
  list(APPEND _sources memory_mlp/memory_mlp_f16.cu memory_mlp/memory_mlp_f32.cu
       memory_mlp/persistent_f16.cu memory_mlp/persistent_f32.cu)
endif()
