# TP_CUDA=AUTO|ON|OFF: AUTO builds the CUDA components (tp::cuda, tp::nccl) and the CUDA tests and
# benchmarks when nvcc is found. The headers need no CUDA language support in a consumer's project
# (host code that only names tp::Cuda compiles with any C++ compiler); translation units that run
# tp::Cuda's element-wise kernels must be .cu files compiled by nvcc.
set(TP_CUDA AUTO CACHE STRING "Build the CUDA components: AUTO (when nvcc is found), ON or OFF")
set_property(CACHE TP_CUDA PROPERTY STRINGS AUTO ON OFF)
set(TP_CUDA_LANGUAGE OFF)
if(NOT TP_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)  # the toolkit's usual home, often not on PATH
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # H100/H200, the GPUs tp is run on; each further architecture compiles every kernel again
      # (-DCMAKE_CUDA_ARCHITECTURES="80;90" adds the A100).
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    if(CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA_STANDARD 20)
      set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    else()  # CMake before 3.26 does not know nvcc's C++20 flag
      string(APPEND CMAKE_CUDA_FLAGS " -std=c++20")
    endif()
    set(TP_CUDA_LANGUAGE ON)
  elseif(TP_CUDA STREQUAL "ON")
    message(FATAL_ERROR "TP_CUDA=ON but no CUDA compiler (nvcc) was found; set CMAKE_CUDA_COMPILER")
  endif()
endif()
