// Unfused cluster attention primitives with AutoFocusFormer's "clusten" semantics, for models that
// compose their own attention (and for cluster merging): QK gathers neighbour keys into logits, AV
// gathers neighbour values weighted by attention, WF mixes neighbour features with per-neighbour
// weights. Torch-free; every tensor contiguous, shapes next to each argument.
#pragma once

#include <cstdint>

namespace tessera::kernels {

struct ClusterDims {
  int batch = 0;
  int heads = 0;
  int tokens = 0;      // N
  int neighbours = 0;  // M
  int head_dim = 0;    // D
};

// Neighbour indices idx [B, N, M] int64 with values in [0, N), shared by every head.
// QK:   attn[b,h,n,m] = q[b,h,n,:] . k[b,h,idx[b,n,m],:]
//   q, k [B, H, N, D] -> attn [B, H, N, M]; backward: dattn -> dq, dk [B, H, N, D]
// AV:   out[b,h,n,:] = sum_m attn[b,h,n,m] v[b,h,idx[b,n,m],:]
//   attn [B, H, N, M], v [B, H, N, D] -> out [B, H, N, D]; backward: dout -> dattn, dv
struct ClusterWfDims {
  int batch = 0;
  int queries = 0;     // N' (e.g. merged tokens)
  int tokens = 0;      // N, the range of idx
  int neighbours = 0;  // M
  int inner = 0;       // IC
  int channels = 0;    // C
};
// WF:   out[b,n',i,c] = sum_m w[b,n',m,i] f[b,idx[b,n',m],c]
//   w [B, N', M, IC], f [B, N, C], idx [B, N', M] -> out [B, N', IC, C]; backward: dout -> dw, df

// Outputs are written over, never accumulated into. Reference versions accumulate in fp64.
void cluster_qk_fwd_ref(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        float* attn);
void cluster_qk_bwd_ref(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        const float* dattn, float* dq, float* dk);
void cluster_av_fwd_ref(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        float* out);
void cluster_av_bwd_ref(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        const float* dout, float* dattn, float* dv);
void cluster_wf_fwd_ref(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        float* out);
void cluster_wf_bwd_ref(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        const float* dout, float* dw, float* df);

// float64 reference overloads, for finite-difference gradient checks at full precision.
void cluster_qk_fwd_ref(const ClusterDims& d, const double* q, const double* k, const int64_t* idx,
                        double* attn);
void cluster_qk_bwd_ref(const ClusterDims& d, const double* q, const double* k, const int64_t* idx,
                        const double* dattn, double* dq, double* dk);
void cluster_av_fwd_ref(const ClusterDims& d, const double* attn, const double* v,
                        const int64_t* idx, double* out);
void cluster_av_bwd_ref(const ClusterDims& d, const double* attn, const double* v,
                        const int64_t* idx, const double* dout, double* dattn, double* dv);
void cluster_wf_fwd_ref(const ClusterWfDims& d, const double* w, const double* f,
                        const int64_t* idx, double* out);
void cluster_wf_bwd_ref(const ClusterWfDims& d, const double* w, const double* f,
                        const int64_t* idx, const double* dout, double* dw, double* df);

// Fast CPU (OpenMP, fp32 accumulation; scatters are owned per (batch, head) plane, so results are
// bitwise reproducible).
void cluster_qk_fwd_cpu(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        float* attn);
void cluster_qk_bwd_cpu(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        const float* dattn, float* dq, float* dk);
void cluster_av_fwd_cpu(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        float* out);
void cluster_av_bwd_cpu(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        const float* dout, float* dattn, float* dv);
void cluster_wf_fwd_cpu(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        float* out);
void cluster_wf_bwd_cpu(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        const float* dout, float* dw, float* df);

#ifdef TESSERA_WITH_CUDA
// CUDA: return a cudaError_t value (0 on success). Backward scatters use atomics.
int cluster_qk_fwd_cuda(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        float* attn, void* stream);
int cluster_qk_bwd_cuda(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        const float* dattn, float* dq, float* dk, void* stream);
int cluster_av_fwd_cuda(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        float* out, void* stream);
int cluster_av_bwd_cuda(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        const float* dout, float* dattn, float* dv, void* stream);
int cluster_wf_fwd_cuda(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        float* out, void* stream);
int cluster_wf_bwd_cuda(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        const float* dout, float* dw, float* df, void* stream);
#endif

}  // namespace tessera::kernels
