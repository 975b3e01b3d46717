# Finds Gloo (Facebook's collective communications library) and defines Gloo::gloo.
# A find module rather than Gloo's own config, because Debian's config imports only its
# RelWithDebInfo build and does not say which version it is.
find_library(Gloo_LIBRARY NAMES gloo)
find_path(Gloo_INCLUDE_DIR gloo/config.h)
if(Gloo_INCLUDE_DIR AND EXISTS "${Gloo_INCLUDE_DIR}/gloo/config.h")
  file(STRINGS "${Gloo_INCLUDE_DIR}/gloo/config.h" _gloo_version_lines REGEX "#define GLOO_VERSION_(MAJOR|MINOR|PATCH) ")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX REPLACE ".*GLOO_VERSION_${_part} ([0-9]+).*" "\\1" _gloo_${_part} "${_gloo_version_lines}")
  endforeach()
  set(Gloo_VERSION "${_gloo_MAJOR}.${_gloo_MINOR}.${_gloo_PATCH}")
endif()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Gloo REQUIRED_VARS Gloo_LIBRARY Gloo_INCLUDE_DIR VERSION_VAR Gloo_VERSION)
if(Gloo_FOUND AND NOT TARGET Gloo::gloo)
  find_package(Threads REQUIRED)
  add_library(Gloo::gloo UNKNOWN IMPORTED)
  set_target_properties(Gloo::gloo PROPERTIES IMPORTED_LOCATION "${Gloo_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${Gloo_INCLUDE_DIR}" INTERFACE_LINK_LIBRARIES Threads::Threads)
endif()
mark_as_advanced(Gloo_LIBRARY Gloo_INCLUDE_DIR)
