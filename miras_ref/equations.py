"""The equation index: every equation of the paper → the function that implements it → the
tests that verify it.

``tests/test_equations.py`` fails if an entry's implementation cannot be imported or if one of
its tests does not exist, and the docs' "Equation index" page is generated from
:data:`EQUATIONS` (``docs/hooks/equation_index.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One row of the index.

    Parameters
    ----------
    key : str
        Where it is in the paper ("Eq 11", "Sec 5.2 variant 4", "Table 1: DeltaNet", ...).
    title : str
        What it is.
    implementation : str
        Dotted path of the implementing function or class.
    tests : tuple of str
        Pytest node ids (``tests/file.py::test_name``) that verify it against mathematics.
    """

    key: str
    title: str
    implementation: str
    tests: tuple[str, ...]


A, B, R, M = "tests/test_associative.py::", "tests/test_bias.py::", "tests/test_retention.py::", \
    "tests/test_memory.py::"
V, Z, S, C = "tests/test_viewpoints.py::", "tests/test_zoo.py::", "tests/test_recurrent.py::", \
    "tests/test_chunked.py::"
L = "tests/test_layer.py::"
SHALLOW = Z + "test_table1_shallow_memory_matches_own_recurrence"
DEEP = Z + "test_table1_and_sec53_deep_memory_matches_own_torch_recurrence"


def _e(key, title, implementation, *tests):
    return Entry(key, title, implementation, tuple(tests))


EQUATIONS: tuple[Entry, ...] = (
    _e("Eq 1", "Query, key and value projections", "miras_ref.attention.qkv_projections",
       A + "test_qkv_projections_are_linear_maps_eq1"),
    _e("Eq 2", "Causal softmax attention (non-parametric ℓ2 memory)",
       "miras_ref.attention.causal_softmax_attention",
       A + "test_causal_softmax_attention_matches_explicit_sum_eq2",
       A + "test_attention_op_is_nadaraya_watson_and_streams_with_kv_cache",
       Z + "test_eq2_softmax_attention_with_value_dim_different_from_key_dim"),
    _e("Eq 3", "Linear RNN memory M_t = A_t * M_{t-1} + v_t k_tᵀ",
       "miras_ref.associative.hebbian_update",
       A + "test_hebbian_update_eq8_equals_linear_attention_and_retnet_scans"),
    _e("Eq 4 / Def 3.1", "Associative memory objective (attentional bias)",
       "miras_ref.associative.associative_objective",
       A + "test_associative_objective_sums_the_bias_over_pairs_eq4"),
    _e("Eq 5", "Online gradient descent on the attentional bias",
       "miras_ref.associative.online_gd_step",
       A + "test_online_gd_step_decreases_the_loss_along_the_gradient_eq5",
       V + "test_learning_retaining_linearized_is_gd_step"),
    _e("Eq 6-7", "Online GD as FTRL with linearised losses and ½‖W‖²",
       "miras_ref.viewpoints.online_gd_as_ftrl",
       V + "test_eq7_online_gd_equals_ftrl_linearised_nonquadratic"),
    _e("FTRL viewpoint", "General FTRL: argmin Σ ℓ̂_i(W) + R(W)/η",
       "miras_ref.viewpoints.ftrl_argmin",
       V + "test_ftrl_argmin_any_shape_and_x0_independent"),
    _e("Learning-Retaining viewpoint", "argmin ℓ̃_t(W) + (1/η) D_t(W, W_{t-1}) + (1/α) G_t(W)",
       "miras_ref.viewpoints.learning_retaining_argmin",
       V + "test_learning_retaining_linearized_is_gd_step",
       V + "test_local_global_retention_combines_terms", V + "test_bregman_divergence_properties"),
    _e("Proposition 3.2", "FTRL iterates = Learning-Retaining iterates with Ret = D_h",
       "miras_ref.viewpoints.proposition_3_2", V + "test_proposition_3_2_holds",
       V + "test_proposition_3_2_negative_control_plain_euclidean_retention",
       V + "test_proposition_3_2_zero_init_is_tilted_ftrl"),
    _e("Eq 8", "Hebbian rule from the dot-product bias", "miras_ref.bias.DotProductBias",
       A + "test_hebbian_update_eq8_equals_linear_attention_and_retnet_scans",
       Z + "test_sec4_l2_retention_anchors_agree_for_dot_product_bias_and_differ_for_l2_bias"),
    _e("Eq 9", "Delta rule from the ℓ2 bias", "miras_ref.associative.delta_rule_update",
       A + "test_delta_rule_update_eq9_equals_gradient_step_on_l2_and_deltanet_scan"),
    _e("Eq 10", "ℓp attentional bias ‖M(k) − v‖_p^p", "miras_ref.bias.LpBias",
       B + "test_lp_gradient_matches_finite_differences", B + "test_lp_with_p2_is_delta_rule"),
    _e("Eq 11", "ℓp gradient p Sign(e) ⊙ |e|^{p−1}", "miras_ref.bias.LpBias.grad",
       B + "test_lp_gradient_matches_finite_differences",
       S + "test_eq11_lp_bias_p2_exact_equals_delta_rule_with_doubled_eta"),
    _e("Eq 12", "ℓ1 bias: value-less memory", "miras_ref.bias.L1Bias",
       B + "test_l1_value_less_memory_gradient_is_plus_minus_one",
       B + "test_l1_smooth_gradient_matches_finite_differences_of_smooth_loss"),
    _e("Remark 5", "Smooth Sign ≈ tanh(a x) and |x| ≈ sqrt(x² + ε)", "miras_ref.bias.smooth_sign",
       B + "test_smooth_sign_properties", B + "test_smooth_abs_properties",
       B + "test_smooth_lp_gradient_converges_to_exact_gradient_remark5",
       B + "test_lp_smooth_loss_gradient_is_remark5_form"),
    _e("Eq 13", "Huber function", "miras_ref.bias.huber", B + "test_huber_function_pieces_eq13",
       B + "test_huber_function_and_derivative_continuous_at_delta"),
    _e("Eq 14", "Coordinate-wise Huber bias", "miras_ref.bias.HuberCoordinateBias",
       B + "test_huber_coordinate_grad_is_clip", B + "test_bias_grad_matches_finite_differences"),
    _e("Eq 15", "ℓ2-norm Huber bias", "miras_ref.bias.HuberNormBias",
       B + "test_huber_norm_grad_matches_eq15_and_is_continuous_at_delta"),
    _e("Eq 16", "Smooth-mixture Huber (Yaad's bias)", "miras_ref.bias.HuberMixtureBias",
       B + "test_huber_mixture_per_token_delta_uses_l2_norm_test",
       B + "test_huber_mixture_channelwise_delta_uses_coordinate_test",
       B + "test_huber_mixture_reduces_to_l2_when_errors_are_small"),
    _e("Eq 17", "Memory robust to value shifts, optimal perturbation",
       "miras_ref.bias.ValueShiftRobustBias",
       B + "test_value_shift_loss_equals_numeric_worst_case_eq17",
       B + "test_value_shift_optimal_perturbation_attains_the_loss",
       B + "test_value_shift_grad_matches_finite_differences"),
    _e("Sec 4 / Titans", "ℓ2 retention: local + global, and the scaled prior",
       "miras_ref.retention.L2Retention", R + "test_l2_retention_update_is_argmin_of_objective",
       R + "test_l2_retention_anchor_is_previous_or_decayed_state"),
    _e("Eq 18 (Sec 5.2 variant 1)", "f-divergence retention on the scaled simplex, ζ solved",
       "miras_ref.retention.FDivergenceRetention",
       R + "test_f_divergence_update_is_argmin_on_scaled_simplex_eq18",
       R + "test_f_divergence_kl_equals_kl_gate_with_alpha_one"),
    _e("Eq 19-21", "KL retention: c·Softmax((1−λ) log W − η' ∇ℓ)",
       "miras_ref.retention.KLRetention",
       R + "test_kl_retention_update_is_argmin_on_scaled_simplex",
       R + "test_kl_update_is_softmax_of_scaled_log_eq21",
       R + "test_kl_retention_stays_on_scaled_simplex_after_many_updates"),
    _e("Eq 22 (Sec 5.2 variant 2)", "Elastic net, Learning-Retaining view (soft thresholding)",
       "miras_ref.retention.ElasticNetRetention",
       R + "test_elastic_net_retention_update_is_argmin_eq22",
       R + "test_elastic_net_sparsity_grows_with_gamma",
       R + "test_smooth_soft_threshold_shrinks_by_two_gamma_over_pi_erratum"),
    _e("Eq 23 (Sec 5.2 variant 3)", "Elastic net, FTRL view",
       "miras_ref.retention.ElasticNetFTRLRetention",
       R + "test_elastic_net_ftrl_link_is_argmin_of_link_objective_eq23",
       V + "test_elastic_net_numeric_equals_closed_form",
       V + "test_elastic_net_erratum_paper_literal_objective"),
    _e("Sec 5.2 variant 4", "ℓq memory stability: exact p-norm link and simplified A/‖A‖^{q−2}",
       "miras_ref.retention.LqRetention", R + "test_lq_exact_link_is_argmin_of_link_objective",
       R + "test_lq_simplified_link_norm_is_bounded_by_accumulator_norm",
       R + "test_lq_simplified_link_equals_exact_only_at_q2",
       V + "test_lq_numeric_equals_exact_link", V + "test_lq_simplified_link_erratum"),
    _e("Sec 5.2 variant 5", "Bregman retention with the sigmoid mirror map",
       "miras_ref.retention.SigmoidBregmanRetention",
       R + "test_sigmoid_bregman_update_is_argmin_in_unit_box",
       R + "test_sigmoid_bregman_stays_strictly_inside_unit_interval"),
    _e("Sec 4 choice 1", "Matrix memory M(W, k) = W k", "miras_ref.memory.MatrixMemory",
       M + "test_memory_vjp_matches_finite_differences"),
    _e("Sec 4 choice 1", "Vector memory (RetNet, n = 1)", "miras_ref.memory.VectorMemory",
       M + "test_memory_vjp_matches_finite_differences"),
    _e("Sec 5.3", "2-layer MLP memory x + LN(W1 σ(W2 x)) with analytic VJP",
       "miras_ref.memory.MLPMemory", M + "test_memory_vjp_matches_finite_differences",
       M + "test_mlp_memory_vjp_matches_torch_autograd",
       M + "test_mlp_memory_forward_matches_torch"),
    _e("Sec 4 choice 4", "Gradient descent through the retention gate", "miras_ref.algorithms.GD",
       SHALLOW),
    _e("Table 1: Titans-LMM", "GD with momentum", "miras_ref.algorithms.Momentum", DEEP,
       Z + "test_table1_titans_printed_sign_ascends_the_loss_library_form_descends"),
    _e("Table 1: Longhorn", "Implicit GD", "miras_ref.algorithms.ImplicitGD", SHALLOW),
    _e("Table 1: DeltaProduct", "Several GD steps per token", "miras_ref.algorithms.MultiStepGD",
       SHALLOW),
    _e("Sec 4: Mesa", "Closed form (regularised least squares)", "miras_ref.algorithms.ClosedForm",
       Z + "test_sec4_mesa_with_decay_and_lambda_matches_regularised_least_squares",
       Z + "test_sec4_mesa_output_is_the_argmin_of_its_regularised_objective"),
    _e("Sec 4: Attention", "Non-parametric (Nadaraya-Watson) solution",
       "miras_ref.algorithms.NonParametric",
       A + "test_causal_softmax_attention_matches_explicit_sum_eq2",
       S + "test_attention_kv_cache_equals_attention_over_the_concatenation"),
    _e("Sec 4", "Recurrent scan for any (memory, bias, retention, algorithm)",
       "miras_ref.recurrent.scan", S + "test_scan_split_in_two_with_state_handover_equals_one_pass",
       S + "test_sec53_variants_stay_finite_over_10000_steps_with_outliers"),
    _e("Eq 24-25", "Moneta: ℓp bias, ℓq + ℓ2 retention, MLP memory", "miras_ref.zoo.moneta", DEEP,
       Z + "test_eq24_moneta_channelwise_gates_match_own_recurrence"),
    _e("Eq 26", "Yaad: Huber bias, ℓ2 retention, MLP memory", "miras_ref.zoo.yaad", DEEP,
       Z + "test_eq26_yaad_takes_both_branches_and_matches_own_recurrence",
       Z + "test_sec54_yaad_channelwise_gates_match_own_recurrence"),
    _e("Eq 27", "Memora: ℓ2 bias, KL retention, MLP memory", "miras_ref.zoo.memora", DEEP,
       Z + "test_eq27_memora_logit_recurrence_equals_softmax_of_log_weights"),
    _e("Eq 28", "Chunk-parallel form: gradients at the chunk's starting state",
       "miras_ref.chunked.scan_chunked", C + "test_eq28_chunk_size_one_equals_recurrence",
       C + "test_eq28_chunking_error_grows_with_chunk_size",
       C + "test_eq28_chunked_deltanet_matches_frozen_gradient_recurrence"),
    _e("Eq 29", "Decay and learning-rate masks E_b ⊙ B_b", "miras_ref.chunked.chunk_coefficients",
       C + "test_eq29_chunk_coefficients_scalar_gates_match_explicit_products",
       C + "test_eq29_chunk_coefficients_channel_and_element_wise_gates",
       C + "test_eq29_hebbian_models_chunked_form_exact_for_any_chunk_size"),
    _e("Eq 30-32", "Memora's lag token; Moneta's normalisation at chunk ends; Yaad's masking",
       "miras_ref.chunked.scan_chunked",
       C + "test_eq28_to_32_chunked_mlp_matches_frozen_gradient_recurrence",
       C + "test_eq28_chunk_size_one_equals_recurrence"),
    _e("Sec 5.4", "The non-linearity only at chunk ends (link_at='chunk')",
       "miras_ref.chunked.scan_chunked",
       C + "test_eq28_to_32_chunked_mlp_matches_frozen_gradient_recurrence",
       C + "test_link_at_chunk_changes_only_the_reads_of_a_non_identity_link"),
    _e("Sec 5.4", "MIRAS layer block forward", "miras_ref.layer.miras_layer_forward",
       L + "test_layer_matches_independent_torch", L + "test_streaming_two_pieces_equals_one_pass",
       L + "test_every_zoo_model_runs"),
)

_TABLE1 = (
    ("RetNet", "retnet"), ("Transformer", "softmax_attention"), ("LA", "linear_attention"),
    ("DFW", "dfw"), ("Lightning Attention", "lightning_attention"), ("GLA", "gla"),
    ("Mamba2", "mamba2"), ("HGRN2", "hgrn2"), ("DeltaNet", "deltanet"), ("Longhorn", "longhorn"),
    ("TTT-Linear", "ttt_linear"), ("Gated DeltaNet", "gated_deltanet"), ("RWKV-7", "rwkv7"),
    ("DeltaProduct", "deltaproduct"), ("TTT-MLP", "ttt_mlp"), ("Titans-LMM", "titans_lmm"),
)
_DEEP = {"ttt_mlp", "titans_lmm"}
_EXTRA = {
    "softmax_attention": (Z + "test_eq2_softmax_attention_with_value_dim_different_from_key_dim",),
    "gated_deltanet": (Z + "test_table1_gated_deltanet_matches_own_recurrence",),
    "rwkv7": (Z + "test_table1_rwkv7_scalar_beta_matches_printed_form",),
    "mamba2": (Z + "test_table1_mamba2_ssd_default_zero_state_matches_own_recurrence",),
    "hgrn2": (Z + "test_table1_hgrn2_ignores_the_given_keys",),
}

EQUATIONS += tuple(
    _e(f"Table 1: {label}", "MIRAS configuration of this model", f"miras_ref.zoo.{fn}",
       f"{DEEP if fn in _DEEP else SHALLOW}[{fn}-7]", *_EXTRA.get(fn, ()))
    for label, fn in _TABLE1
)
