# tp_kernels: tp's own build (tests, examples, benchmarks) compiles the library's heaviest CPU
# kernels once, here, instead of in each of its ~60 translation units. The headers that hold them
# list their float and double instantiations in a macro (include/tp/detail/extern_templates.hpp);
# tp_kernels defines TP_EXTERN_TEMPLATES for whatever links it, which makes those instantiations
# `extern` there, and instantiates each (list, type) in a generated translation unit of its own, at
# the build type's flags (-O3 for Release), so that two cores share the work. A user's project needs
# none of this: without TP_EXTERN_TEMPLATES the headers are plain header-only code. Not installed.
set(tp_kernel_lists
    "tp/device/cpu/streaming_linear.hpp=TP_STREAMING_LINEAR_INSTANTIATIONS"
    "tp/device/cpu/attention.hpp=TP_CPU_ATTENTION_INSTANTIATIONS")
set(tp_kernel_sources)
foreach(entry IN LISTS tp_kernel_lists)
  string(REPLACE "=" ";" entry ${entry})
  list(GET entry 0 header)
  list(GET entry 1 list)
  foreach(type float double)
    set(source ${CMAKE_CURRENT_BINARY_DIR}/tp_kernels/${list}_${type}.cpp)
    file(CONFIGURE OUTPUT ${source} CONTENT "#include \"${header}\"\n${list}(, ${type})\n")
    list(APPEND tp_kernel_sources ${source})
  endforeach()
endforeach()
add_library(tp_kernels STATIC ${tp_kernel_sources})
target_link_libraries(tp_kernels PUBLIC tp::blas)
target_compile_definitions(tp_kernels PUBLIC TP_EXTERN_TEMPLATES=1)
