# Finds what tp links to. tp::tp's own libraries ({fmt}, threads) always; each optional
# component's library only through tp_find_component_dependencies(), so that the installed
# tp-config.cmake looks for the libraries of the components a consumer names in
# find_package(tp COMPONENTS ...) and no others. The build tree asks for every component (one whose
# library is missing is simply not built). Used by both, so a consumer of the installed package
# gets the same imported targets as the build.
include(CMakeFindDependencyMacro)
find_dependency(fmt)
find_package(Threads REQUIRED)

# tp_find_component_dependencies(<component>...): finds the libraries of the named components
# (blas mpi io text cuda nccl gloo; blas also looks for oneDNN: tp_blas_DNNL_FOUND) and sets
# tp_<component>_DEPENDENCY (what it needs, for messages)
# and tp_<component>_DEPENDENCY_FOUND. Set tp_find_dependencies_quietly to pass QUIET. A macro,
# so that the packages' variables land in the caller's scope.
macro(tp_find_component_dependencies)
  set(_tp_quiet)
  if(tp_find_dependencies_quietly)
    set(_tp_quiet QUIET)
  endif()
  foreach(_tp_component IN ITEMS ${ARGN})
    set(tp_${_tp_component}_DEPENDENCY_FOUND FALSE)
    if(_tp_component STREQUAL "blas")
      set(tp_blas_DEPENDENCY "OpenBLAS")
      find_package(OpenBLAS ${_tp_quiet})
      set(tp_blas_DEPENDENCY_FOUND ${OpenBLAS_FOUND})
      # oneDNN, optional: Cpu runs float GEMMs on it on every AVX-512 CPU, where it measured faster
      # or equal on each shape (tp/device/cpu/cpu.hpp). Debian's libdnnl threads through OpenMP.
      # TP_WITH_DNNL=OFF skips it.
      set(tp_blas_DNNL_FOUND FALSE)
      if(OpenBLAS_FOUND AND (NOT DEFINED TP_WITH_DNNL OR TP_WITH_DNNL))
        # Debian's dnnl-config.cmake calls find_package(OpenCL REQUIRED): without OpenCL's headers
        # and loader that is a configure error, so look for OpenCL first and go without oneDNN.
        find_package(OpenCL QUIET)
        if(OpenCL_FOUND)
          find_package(dnnl CONFIG QUIET)
        endif()
        find_package(OpenMP COMPONENTS CXX QUIET)
        if(TARGET DNNL::dnnl AND TARGET OpenMP::OpenMP_CXX)
          set(tp_blas_DNNL_FOUND TRUE)
        endif()
      endif()
      if(tp_blas_needs_dnnl)  # an installed tp::blas built with oneDNN links it
        set(tp_blas_DEPENDENCY "OpenBLAS and oneDNN (libdnnl-dev) with OpenMP")
        if(NOT tp_blas_DNNL_FOUND)
          set(tp_blas_DEPENDENCY_FOUND FALSE)
        endif()
      endif()
    elseif(_tp_component STREQUAL "mpi")
      set(tp_mpi_DEPENDENCY "MPI (C API)")
      set(MPI_CXX_SKIP_MPICXX ON)  # tp uses the C API only
      find_package(MPI COMPONENTS CXX ${_tp_quiet})
      set(tp_mpi_DEPENDENCY_FOUND ${MPI_CXX_FOUND})
    elseif(_tp_component STREQUAL "io")
      set(tp_io_DEPENDENCY "nlohmann_json 3.10 (the safetensors header parser)")
      find_package(nlohmann_json 3.10 ${_tp_quiet})
      set(tp_io_DEPENDENCY_FOUND ${nlohmann_json_FOUND})
    elseif(_tp_component STREQUAL "text")
      # The tokenizers: tp::io's JSON, PCRE2 for the pre-tokenizers' patterns, ICU for Unicode
      # properties and normalization forms.
      set(tp_text_DEPENDENCY "nlohmann_json 3.10, PCRE2 (libpcre2-dev) and ICU (libicu-dev)")
      find_package(nlohmann_json 3.10 ${_tp_quiet})
      find_package(PCRE2 ${_tp_quiet})
      find_package(ICU COMPONENTS uc ${_tp_quiet})
      if(nlohmann_json_FOUND AND PCRE2_FOUND AND ICU_FOUND)
        set(tp_text_DEPENDENCY_FOUND TRUE)
      endif()
    elseif(_tp_component STREQUAL "cuda" OR _tp_component STREQUAL "nccl")
      # The toolkit's imported targets, unless TP_CUDA is OFF.
      set(tp_cuda_DEPENDENCY "the CUDA toolkit (cudart, cublasLt)")
      if(NOT TP_CUDA STREQUAL "OFF" AND NOT CUDAToolkit_FOUND)
        find_package(CUDAToolkit QUIET)
      endif()
      set(tp_cuda_DEPENDENCY_FOUND FALSE)
      if(TARGET CUDA::cudart AND TARGET CUDA::cublasLt)
        set(tp_cuda_DEPENDENCY_FOUND TRUE)
      endif()
      if(_tp_component STREQUAL "nccl")
        set(tp_nccl_DEPENDENCY "NCCL and the CUDA toolkit")
        if(tp_cuda_DEPENDENCY_FOUND AND NOT TARGET NCCL::NCCL)
          find_package(NCCL QUIET)
        endif()
        if(tp_cuda_DEPENDENCY_FOUND AND TARGET NCCL::NCCL)
          set(tp_nccl_DEPENDENCY_FOUND TRUE)
        endif()
      endif()
    elseif(_tp_component STREQUAL "gloo")
      set(tp_gloo_DEPENDENCY "Gloo")
      find_package(Gloo ${_tp_quiet})
      set(tp_gloo_DEPENDENCY_FOUND ${Gloo_FOUND})
    else()
      set(tp_${_tp_component}_DEPENDENCY "nothing: tp has no component '${_tp_component}'")
    endif()
  endforeach()
  unset(_tp_quiet)
  unset(_tp_component)
endmacro()
