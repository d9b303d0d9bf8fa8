// Found first on tessera_serving's include path: runtime/serving must stay free of torch, CUDA
// and NCCL (GUIDE.md). Including this header is the mistake this file reports.
#error "runtime/serving may not include torch/extension.h"
