# Finds NCCL (header nccl.h, library libnccl); defines NCCL::NCCL, NCCL_VERSION and NCCL_ROOT_FOUND
# (the folder both came from). Where it looks, in this order:
#   1. NCCL_ROOT (CMake or environment variable): <root>/include, <root>/lib or lib64;
#   2. the CUDA toolkit's folders (when find_package(CUDAToolkit) ran first);
#   3. the NCCL that pip installed with PyTorch (the nvidia-nccl-cu12 / -cu13 wheels): <site-packages>/nvidia/nccl,
#      found through python3's sys.path and a few usual virtual-environment and system folders;
#   4. CMake's usual search paths (a distribution's libnccl-dev), header and library found apart.
# The library may be present only under its versioned name, libnccl.so.2, as in those wheels; the
# executables then record that folder in their RPATH. Header and library come from the same place
# whenever one place has both, so that their versions match.
include(FindPackageHandleStandardArgs)

set(_nccl_names nccl libnccl.so.2 libnccl.so)

function(_nccl_try_root root)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    return()
  endif()
  if(EXISTS "${root}/include/nccl.h")
    find_library(_nccl_lib_here NAMES ${_nccl_names} PATHS "${root}" PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH
                 NO_CACHE)
    if(_nccl_lib_here)
      set(NCCL_INCLUDE_DIR "${root}/include" CACHE PATH "Folder holding nccl.h" FORCE)
      set(NCCL_LIBRARY "${_nccl_lib_here}" CACHE FILEPATH "The NCCL library" FORCE)
    endif()
  endif()
endfunction()

if(NOT (NCCL_INCLUDE_DIR AND NCCL_LIBRARY))
  set(_nccl_roots)
  foreach(_root "${NCCL_ROOT}" "$ENV{NCCL_ROOT}")
    if(_root)
      list(APPEND _nccl_roots "${_root}")
    endif()
  endforeach()
  foreach(_dir IN LISTS CUDAToolkit_INCLUDE_DIRS)
    get_filename_component(_root "${_dir}" DIRECTORY)
    list(APPEND _nccl_roots "${_root}")
  endforeach()
  if(CUDAToolkit_LIBRARY_ROOT)
    list(APPEND _nccl_roots "${CUDAToolkit_LIBRARY_ROOT}")
  endif()

  # pip's wheels: ask every python3 on the PATH where its packages are, then try the usual folders.
  find_program(_nccl_python NAMES python3 python NO_CACHE)
  if(_nccl_python)
    execute_process(
      COMMAND "${_nccl_python}" -c
              "import os, sys\nfor p in sys.path:\n    d = os.path.join(p, 'nvidia', 'nccl')\n    if os.path.isdir(d): print(d)"
      OUTPUT_VARIABLE _nccl_wheels OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET TIMEOUT 30)
    string(REPLACE "\n" ";" _nccl_wheels "${_nccl_wheels}")
    list(APPEND _nccl_roots ${_nccl_wheels})
  endif()
  file(GLOB _nccl_globbed LIST_DIRECTORIES true
       /opt/*/.venv/lib/python3*/site-packages/nvidia/nccl /opt/*/lib/python3*/site-packages/nvidia/nccl
       /usr/local/lib/python3*/dist-packages/nvidia/nccl /usr/local/lib/python3*/site-packages/nvidia/nccl
       /usr/lib/python3/dist-packages/nvidia/nccl /root/.local/lib/python3*/site-packages/nvidia/nccl)
  list(APPEND _nccl_roots ${_nccl_globbed})
  list(REMOVE_DUPLICATES _nccl_roots)
  foreach(_root IN LISTS _nccl_roots)
    _nccl_try_root("${_root}")
  endforeach()
  set(NCCL_SEARCHED "${_nccl_roots}" CACHE INTERNAL "Where FindNCCL looked")

  # No place with both: the header and the library may still be found apart (a distribution's packages).
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${_nccl_roots} PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY NAMES ${_nccl_names} HINTS ${_nccl_roots} PATH_SUFFIXES lib lib64)
endif()

if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _nccl_lines REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX REPLACE ".*#define NCCL_${_part} ([0-9]+).*" "\\1" _nccl_${_part} "${_nccl_lines}")
  endforeach()
  set(NCCL_VERSION ${_nccl_MAJOR}.${_nccl_MINOR}.${_nccl_PATCH})
endif()
find_package_handle_standard_args(NCCL REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR VERSION_VAR NCCL_VERSION)
if(NCCL_FOUND AND NOT TARGET NCCL::NCCL)
  add_library(NCCL::NCCL UNKNOWN IMPORTED)
  set_target_properties(NCCL::NCCL PROPERTIES IMPORTED_LOCATION "${NCCL_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()
mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)
