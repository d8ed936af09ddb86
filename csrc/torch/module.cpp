// The Python module lora_kernels._C: loading it registers the ops (torch.ops.lora_kernels.*).
// It carries the build's facts as attributes so the package can refuse a mismatched torch.
#include <Python.h>

#ifndef LK_TORCH_VERSION
#error "LK_TORCH_VERSION must be defined by the build"
#endif
#ifndef LK_CUDA_VERSION
#define LK_CUDA_VERSION ""
#endif
#ifndef LK_CUDA_ARCHS
#define LK_CUDA_ARCHS ""
#endif
#ifdef LK_WITH_CUDA
#define LK_CUDA_FLAG Py_True
#else
#define LK_CUDA_FLAG Py_False
#endif

// Every field spelled (m_methods, m_slots, m_traverse, m_clear, m_free): -Wextra warns otherwise.
static struct PyModuleDef lk_module = {
    PyModuleDef_HEAD_INIT, "_C", "lora_kernels compiled ops", -1, nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&lk_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddStringConstant(m, "TORCH_VERSION", LK_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_VERSION", LK_CUDA_VERSION) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_ARCHS", LK_CUDA_ARCHS) < 0 ||
      PyModule_AddObjectRef(m, "WITH_CUDA", LK_CUDA_FLAG) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
