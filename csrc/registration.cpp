// The t2ifast operator library: every op's schema is declared here, once. Kernels register against
// these schemas by dispatch key in their own files (csrc/<op>/<op>_cpu.cpp, <op>_cuda.cu); autograd
// and fake (meta) functions are registered from Python (t2ifast/ops/<op>/).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(t2ifast, m) {
  // GAN-CLS discriminator loss on logits of the (real, right), (real, wrong), (fake, right) pairs.
  // values = [loss, L_real, L_wrong, L_fake]; grad_* = d L_group / d s_group, kept for backward.
  m.def(
      "matching_aware_loss(Tensor s_real, Tensor s_wrong, Tensor s_fake, float real_target, bool average)"
      " -> (Tensor values, Tensor grad_real, Tensor grad_wrong, Tensor grad_fake)");

  // Word-region attention (AttnGAN's generator attention; issue 3). pad_mask: True = padding word.
  // attn is [B, T, N] when return_attn, else empty [0, T, N] (never written); lse [B, N] holds the
  // per-region softmax statistics backward recomputes the attention from (+inf where every word is padding).
  m.def(
      "word_region_attention(Tensor regions, Tensor words, Tensor? pad_mask, bool return_attn)"
      " -> (Tensor context, Tensor attn, Tensor lse)");
  m.def(
      "word_region_attention_backward(Tensor grad_context, Tensor? grad_attn, Tensor regions, Tensor words,"
      " Tensor? pad_mask, Tensor lse) -> (Tensor grad_regions, Tensor grad_words)");

  // DAMSM word scores of every image (regions [M, D, N]) with every caption (words [B, D, T], lengths [B]):
  // scores [M, B] (issue 3). Backward recomputes the attention; nothing else is saved.
  m.def("damsm_word_scores(Tensor words, Tensor lengths, Tensor regions, float gamma1, float gamma2) -> Tensor scores");
  m.def(
      "damsm_word_scores_backward(Tensor grad_scores, Tensor words, Tensor lengths, Tensor regions, float gamma1,"
      " float gamma2) -> (Tensor grad_words, Tensor grad_regions)");
}

// `import t2ifast._C` runs the registrations above; the module itself holds nothing.
static PyModuleDef t2ifast_module = {PyModuleDef_HEAD_INIT, "_C", "t2ifast operator library", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&t2ifast_module); }
