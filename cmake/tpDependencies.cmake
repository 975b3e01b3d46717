# Finds what tp's components link to. Used by the build tree and, installed, by tp-config.cmake,
# so a consumer of the installed package gets the same imported targets.
include(CMakeFindDependencyMacro)
find_dependency(fmt)
find_package(OpenBLAS)
set(MPI_CXX_SKIP_MPICXX ON)  # tp uses the C API only
find_package(MPI COMPONENTS CXX)
find_package(Threads REQUIRED)
find_package(nlohmann_json 3.10)  # tp::io: the safetensors header parser
# CUDA components (tp::cuda, tp::nccl): the toolkit's imported targets, unless TP_CUDA is OFF.
if(NOT TP_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    find_package(NCCL QUIET)
  endif()
endif()
