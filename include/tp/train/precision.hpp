#pragma once
/// The element type a training run's `--precision` names, for programs that pick it at run time:
///
///   tp::with_precision(precision, [&]<class T>() { run.template operator()<T>(comm); });
///
/// "fp32" is float, "bf16" tp::bf16, "f16" tp::f16 (Trainer<T>'s three model types); anything else
/// throws InvalidArgument naming it.

#include <string_view>

#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

namespace tp {

/// Calls f.template operator()<T>() with the type `precision` names and returns what it returns.
template <class F>
decltype(auto) with_precision(std::string_view precision, F&& f) {
  if (precision == "bf16") return f.template operator()<bf16>();
  if (precision == "f16") return f.template operator()<f16>();
  TP_CHECK(precision == "fp32", "precision '{}' is not one of fp32, bf16, f16", precision);
  return f.template operator()<float>();
}

}  // namespace tp
