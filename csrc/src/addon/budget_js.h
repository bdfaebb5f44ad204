// JS object -> BudgetSpec, shared by every binding that takes a budget (compress_binding.cc, the engine binding).
// The object uses the proto's camelCase field names and enum names (CONTRACTS.md BudgetSpec):
//   {method: 'ADA_SNAPKV' | ..., tokensPerHead, keepRatio, window, poolKernel, floorAlpha, pyramidBeta,
//    decodeMaxTokensPerHead, pooling: 'MAX' | 'AVG', gqaReduce: 'MEAN' | 'MAXIMUM'}
// An absent budget (undefined or null) is the built-in default budget. Absent fields (undefined or null; enum *_UNSPECIFIED or 0) take the BudgetSpec defaults of compress.h, except
// that tokensPerHead is unset (0) whenever keepRatio is given. Enums may also be given as their proto numbers.
// Malformed fields throw kvf::Error(BadArgument) naming the field; the result is NOT range-validated here: call
// kvf::validate_budget on it (this keeps one place for the rules).
#pragma once
#include <napi.h>

#include "compress.h"

namespace kvf::napi {

BudgetSpec budget_from_js(const Napi::Value& v);

}  // namespace kvf::napi
