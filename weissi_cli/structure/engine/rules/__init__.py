"""The op rules: how each ATen op relates the scales of its inputs and outputs.

The table below (`RULES`) maps an op's name to its rule; the export and core-ATen spellings
of one op share a rule. An op missing from the table stops every scale that reaches it (its
inputs are forced to 1) and is reported by name and node. Each rule is written so that any
scaling it allows leaves the op's result exact, up to float rounding: where it cannot tell,
it forces scales to 1, which only loses symmetries.
"""

from __future__ import annotations

from weissi_cli.structure.engine import experts
from weissi_cli.structure.engine.rules.common import guarded
from weissi_cli.structure.engine.rules.contractions import (
    addmm,
    attention,
    contract,
    convolution,
    einsum,
    embedding,
    index,
    index_put,
    linear,
    matmul,
    select_scatter,
)
from weissi_cli.structure.engine.rules.elementwise import (
    add,
    clamp,
    creation,
    divide,
    forcing,
    invariant,
    masked_fill,
    multiply,
    native_dropout,
    passthrough,
    power,
    prelu,
    reciprocal,
    threshold_at_zero,
    where,
)
from weissi_cli.structure.engine.rules.normalization import batch_norm, group_norm, layer_norm
from weissi_cli.structure.engine.rules.reductions import cumulative, pooling, reduction
from weissi_cli.structure.engine.rules.views import (
    cat_rule,
    expand_rule,
    flip_rule,
    narrow_rule,
    pad_rule,
    permute_rule,
    repeat_interleave_rule,
    repeat_rule,
    roll_rule,
    select_rule,
    slice_rule,
    split_rule,
    squeeze_rule,
    stack_rule,
    transpose_rule,
    unsqueeze_rule,
    view,
)
from weissi_cli.structure.engine.walk import Rule


def _table() -> dict[str, Rule]:
    table: dict[str, Rule] = {}

    def put(names: str, rule: Rule) -> None:
        for name in names.split():
            table[name] = guarded(rule)

    put(
        "relu relu_ leaky_relu leaky_relu_ dropout dropout_ feature_dropout alpha_dropout "
        "clone alias detach detach_ contiguous lift_fresh_copy to _to_copy type_as "
        "neg negative abs positive _assert_tensor_metadata requires_grad_ view_as "
        "reshape_as expand_as _to_dim_order_copy",
        passthrough,
    )
    put("prelu _prelu_kernel", prelu)
    put("native_dropout", native_dropout)
    put(
        "sign sgn isnan isinf isfinite signbit logical_not zeros_like ones_like empty_like "
        "full_like rand_like randn_like new_zeros new_ones new_empty new_full",
        invariant,
    )
    put(
        "arange zeros ones full empty scalar_tensor tensor rand randn randint linspace "
        "empty_strided one_hot _local_scalar_dense sym_size sym_numel sym_stride",
        creation,
    )
    put(
        "gelu silu mish elu selu celu softplus softsign sigmoid tanh hardsigmoid hardswish "
        "hardtanh hardtanh_ relu6 exp exp2 expm1 log log2 log10 log1p sqrt rsqrt sin cos tan "
        "erf erfc atan asin acos sinh cosh softmax _softmax log_softmax _log_softmax "
        "logsumexp var std var_mean std_mean norm linalg_vector_norm frobenius_norm topk sort "
        "argsort argmax argmin floor ceil round trunc frac fmod remainder floor_divide "
        "histc bucketize searchsorted nonzero unique pow_ logit glu",
        forcing,
    )
    put("pow", power)
    put("reciprocal", reciprocal)
    put("clamp clamp_ clip clamp_min", clamp)
    put("gt ge lt le eq ne", threshold_at_zero)
    put("add add_ sub sub_ rsub", add)
    put("mul mul_", multiply)
    put("div div_ true_divide", divide)
    put("where", where)
    put("masked_fill masked_fill_", masked_fill)
    put("view reshape _unsafe_view flatten unflatten view_copy _reshape_alias", view)
    put("permute permute_copy", permute_rule)
    put("transpose transpose_ swapaxes t numpy_T", transpose_rule)
    put("unsqueeze unsqueeze_", unsqueeze_rule)
    put("squeeze squeeze_ squeeze_copy", squeeze_rule)
    put("expand expand_copy broadcast_to", expand_rule)
    put("repeat tile", repeat_rule)
    put("repeat_interleave", repeat_interleave_rule)
    put("slice slice_copy", slice_rule)
    put("narrow", narrow_rule)
    put("select select_copy", select_rule)
    put("flip", flip_rule)
    put("roll", roll_rule)
    put("split split_with_sizes chunk unbind tensor_split split_copy", split_rule)
    put("cat concat concatenate", cat_rule)
    put("stack", stack_rule)
    table["stack"] = guarded(experts.stack)
    for name in ("transformers::grouped_mm_fallback", "_grouped_mm", "grouped_mm"):
        table[name] = guarded(experts.grouped_mm)
    put("constant_pad_nd pad", pad_rule)
    put("sum mean amax amin max min prod nansum nanmean", reduction)
    put(
        "max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices "
        "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d "
        "adaptive_max_pool2d adaptive_max_pool3d upsample_nearest1d upsample_nearest2d "
        "upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d "
        "upsample_linear1d upsample_bilinear2d upsample_trilinear3d upsample_bicubic2d",
        pooling,
    )
    put("cumsum cumprod", cumulative)
    put("linear", linear)
    put("matmul mm bmm", matmul)
    put("addmm baddbmm", addmm)
    put("einsum", einsum)
    put(
        "conv1d conv2d conv3d convolution _convolution conv_transpose1d conv_transpose2d "
        "conv_transpose3d",
        convolution,
    )
    put("embedding", embedding)
    put("index _unsafe_index", index)
    put(
        "index_put index_put_ _unsafe_index_put index_add index_add_ scatter scatter_add", index_put
    )
    put("select_scatter slice_scatter", select_scatter)
    put(
        "scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu "
        "_scaled_dot_product_attention_math _scaled_dot_product_efficient_attention "
        "_scaled_dot_product_flash_attention",
        attention,
    )
    put("layer_norm native_layer_norm rms_norm _fused_rms_norm", layer_norm)
    put("group_norm native_group_norm", group_norm)
    put(
        "batch_norm _native_batch_norm_legit_no_training _native_batch_norm_legit "
        "native_batch_norm instance_norm",
        batch_norm,
    )
    return table


RULES: dict[str, Rule] = _table()


def rule_table() -> str:
    """The op table as Markdown: each rule's ops and the first line of what it does (the
    documentation's table is this text, and a test keeps them equal)."""
    from weissi_cli.structure.engine.walk import SUBGRAPH_CALLS

    by_rule: dict[str, list[str]] = {}
    docs: dict[str, str] = {}
    for name, rule in RULES.items():
        inner = getattr(rule, "__wrapped__", rule)
        key = inner.__qualname__
        by_rule.setdefault(key, []).append(name)
        docs[key] = " ".join((inner.__doc__ or "").strip().split("\n\n")[0].split())
    lines = ["| ops | rule |", "|---|---|"]
    for key, names in by_rule.items():
        ops = ", ".join(f"`{name}`" for name in sorted(names))
        lines.append(f"| {ops} | {docs[key]} |")
    calls = ", ".join(f"`{name}`" for name in sorted(SUBGRAPH_CALLS))
    lines.append(f"| {calls} | The submodule's graph is walked in place of the call. |")
    lines.append("| any other op | Stops every scale that reaches it; reported by name and node. |")
    return "\n".join(lines) + "\n"


__all__ = ["RULES", "contract", "rule_table", "stack_rule"]
