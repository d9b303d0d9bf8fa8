// Tessera::testing in one include: the multi-rank GoogleTest harness (testing/harness.h) and the
// tensor checks across ranks (testing/compare.h). See docs/testing.md.
#pragma once

#include "testing/compare.h"
#include "testing/harness.h"
