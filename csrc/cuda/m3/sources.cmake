# M3 (csrc/cuda/m3): the fused elementwise step of the muon variant; appended to `_sources` by
# csrc/cuda/CMakeLists.txt. One small translation unit with every dtype in both kernel sets.
list(APPEND _sources m3/api.cpp m3/kernels.cu)
