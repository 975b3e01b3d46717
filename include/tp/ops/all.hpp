#pragma once
/// Every op family (tp::ops::gelu, layer_norm, attention_forward, ...).

#include "tp/ops/activation.hpp"
#include "tp/ops/adamw.hpp"
#include "tp/ops/attention.hpp"
#include "tp/ops/cross_entropy.hpp"
#include "tp/ops/embedding.hpp"
#include "tp/ops/linear.hpp"
#include "tp/ops/norm.hpp"
#include "tp/ops/reduce.hpp"
#include "tp/ops/rope.hpp"
