// The nlcore._C extension: every op schema of the `nlcore` namespace, and a plain Python
// module init (no pybind11, no libtorch_python: import torch first, then nlcore._C).
#include <Python.h>
#include <torch/library.h>

namespace nlcore::glue {
void define_newton_schulz(torch::Library& m);
void define_dgd(torch::Library& m);
void define_m3(torch::Library& m);
void define_memory_mlp(torch::Library& m);
void define_self_modifying(torch::Library& m);
}

TORCH_LIBRARY(nlcore, m) {
  nlcore::glue::define_newton_schulz(m);
  nlcore::glue::define_dgd(m);
  nlcore::glue::define_m3(m);
  nlcore::glue::define_memory_mlp(m);
  nlcore::glue::define_self_modifying(m);
}

extern "C" {
static PyModuleDef nlcore_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                      "nlcore native ops (registered under torch.ops.nlcore)",
                                      -1, nullptr};
// nlcore._C.openmp: 1 when the CPU ops were compiled with OpenMP (their at::parallel_for runs
// on torch's intra-op threads), 0 when they run on one thread.
PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&nlcore_c_module);
#ifdef NLCORE_OPENMP
  const long openmp = 1;
#else
  const long openmp = 0;
#endif
  if (m != nullptr && PyModule_AddIntConstant(m, "openmp", openmp) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}
