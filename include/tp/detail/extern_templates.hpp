#pragma once
/// Heavy kernels compiled once instead of in every translation unit that uses them.
///
/// A header whose templates take long to compile (the CPU's streaming linear kernels and flash
/// attention, instantiated per token count and cloned per instruction set) lists their float and
/// double instantiations in a macro LIST(EXTERN, T), with qualified names, and ends with
/// TP_EXTERN_INSTANTIATIONS(LIST) at global scope. Normally that expands to nothing and every
/// translation unit instantiates what it uses, as header-only code does. With TP_EXTERN_TEMPLATES
/// defined it declares them `extern template`, and some translation unit that expands
/// LIST(, float) and LIST(, double) defines them: tp's own build does this (tp_kernels,
/// cmake/tpKernels.cmake), so that its tests, examples and benchmarks do not each compile the same
/// kernels again. Users need not define anything.

#ifdef TP_EXTERN_TEMPLATES
#define TP_EXTERN_INSTANTIATIONS(LIST) LIST(extern, float) LIST(extern, double)
#else
#define TP_EXTERN_INSTANTIATIONS(LIST)
#endif
