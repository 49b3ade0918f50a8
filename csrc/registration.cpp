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

  // Fused BatchNorm + activation (transposed-conv / up-block epilogue), y = conv output [N, C, ...];
  // act in {"relu", "leaky_relu", "glu", "none"} (GLU halves the channels after BatchNorm).
  // Training: batch statistics, running stats updated in place like nn.BatchNorm2d (momentum, unbiased
  // variance); returns the activation and the per-channel mean and invstd that backward recomputes from.
  m.def(
      "bn_act_train(Tensor y, Tensor weight, Tensor bias, Tensor(a!) running_mean, Tensor(b!) running_var,"
      " float momentum, float eps, str act, float negative_slope) -> (Tensor out, Tensor mean, Tensor invstd)");
  m.def(
      "bn_act_backward(Tensor grad_out, Tensor y, Tensor weight, Tensor bias, Tensor mean, Tensor invstd, str act,"
      " float negative_slope) -> (Tensor grad_y, Tensor grad_weight, Tensor grad_bias)");
  // Per-channel affine map + activation (BatchNorm in eval mode, or only the bias after folding).
  m.def("affine_act(Tensor y, Tensor scale, Tensor shift, str act, float negative_slope) -> Tensor");
  m.def(
      "affine_act_backward(Tensor grad_out, Tensor y, Tensor scale, Tensor shift, str act, float negative_slope)"
      " -> (Tensor grad_y, Tensor grad_scale, Tensor grad_shift)");
}

// `import t2ifast._C` runs the registrations above. The module holds one fact about the build:
// compiled_with_openmp, whether at::parallel_for in the CPU kernels runs on torch's intra-op threads (it is
// a header template: compiled without OpenMP, every CPU kernel runs on one thread).
static PyModuleDef t2ifast_module = {PyModuleDef_HEAD_INIT, "_C", "t2ifast operator library", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&t2ifast_module);
#ifdef _OPENMP
  const long openmp = 1;
#else
  const long openmp = 0;
#endif
  if (module != nullptr && PyModule_AddIntConstant(module, "compiled_with_openmp", openmp) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
