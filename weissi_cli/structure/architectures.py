"""Exact scale symmetries of Hugging Face transformers, from `config.json` and tensor names.

Each family is declared as data (`Family`): where a block keeps its tensors, whether the
projections are `nn.Linear` ([out, in]) or GPT-2's `Conv1D` ([in, out]), whether RoPE
rotates query/key dimensions in pairs, and which MLP is exact (SwiGLU: the SiLU sits on the
gate branch only, so up → down commutes with a per-channel scale) or approximate (GELU).
One builder turns a family and a config into `Symmetry` records with origin
`config:<model_type>`.

What is never touched: the residual stream and the embeddings. A norm's eps (and, for
post-norm models like BERT, the residual add after each sublayer) makes scaling the stream
inexact, so only the projections inside a block and a pre-norm's gain are rescaled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError, StructureError
from weissi_cli.io.checkpoint import natural_key, read_json_file
from weissi_cli.ir import Member, Structure, Symmetry, Unassigned

CONFIG_NAME = "config.json"

# Symmetry kinds, as shown in reports (one line per kind per block).
NORM_TO_QKV = "norm→qkv"
QUERY_KEY = "q↔k"
VALUE_OUTPUT = "v→o"
NORM_TO_MLP = "norm→mlp"
UP_DOWN = "up→down"
MLP_GELU = "mlp (GELU)"
NORM_TO_HEAD = "norm→lm_head"


@dataclass(frozen=True)
class Family:
    """Where one architecture keeps a block's tensors (module names relative to the block)."""

    name: str
    block: str  # regex for a block's prefix, matched against `<block>.<query>.weight`
    query: str
    key: str
    value: str
    output: str
    up: str
    down: str
    gate: str | None = None  # SwiGLU's gate branch (scaled with `up` by the MLP norm)
    fused_qkv: str | None = None  # one tensor holding q, k and v side by side (GPT-2)
    conv1d: bool = False  # weights stored [in, out] (GPT-2's Conv1D)
    attention_norm: str | None = None  # a pre-norm feeding only q/k/v
    mlp_norm: str | None = None  # a pre-norm feeding only the MLP's input projections
    rope: bool = False  # HF rotate_half: dimension i turns with i + head_dim/2
    exact_mlp: bool = True  # False: a GELU sits between up and down
    final_norm: str | None = None  # relative to the model prefix; feeds lm_head only
    lm_head: str | None = None  # a top-level name
    tie_default: bool = True  # what transformers assumes when config.json omits it
    hidden_keys: tuple[str, ...] = ("hidden_size",)
    heads_keys: tuple[str, ...] = ("num_attention_heads",)


LLAMA = Family(
    name="llama",
    block=r"(?P<block>(?:.*\.)?layers\.\d+)",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    output="self_attn.o_proj",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
    attention_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    rope=True,
    final_norm="norm",
    lm_head="lm_head",
    tie_default=False,  # LlamaConfig's default, unlike PretrainedConfig's
)

FAMILIES: dict[str, Family] = {
    "llama": LLAMA,
    # Same block layout as LLaMA; sliding-window attention changes which keys a query sees,
    # not how q, k and v scale.
    "mistral": replace(LLAMA, name="mistral"),
    # Same layout; q/k/v carry biases (found by name, scaled with their rows).
    "qwen2": replace(LLAMA, name="qwen2"),
    # Post-LayerNorm: every norm output feeds the residual stream as well, so no norm
    # symmetry is exact; no RoPE; a GELU MLP (approximate).
    "bert": Family(
        name="bert",
        block=r"(?P<block>(?:.*\.)?layer\.\d+)",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        output="attention.output.dense",
        up="intermediate.dense",
        down="output.dense",
        exact_mlp=False,
    ),
    # Conv1D stores [in, out]; q, k and v are the three column blocks of c_attn; pre-norm
    # with a bias (the gain and the shift scale together); a GELU MLP; tied embeddings.
    "gpt2": Family(
        name="gpt2",
        block=r"(?P<block>(?:.*\.)?h\.\d+)",
        query="attn.c_attn",
        key="attn.c_attn",
        value="attn.c_attn",
        output="attn.c_proj",
        up="mlp.c_fc",
        down="mlp.c_proj",
        fused_qkv="attn.c_attn",
        conv1d=True,
        attention_norm="ln_1",
        mlp_norm="ln_2",
        exact_mlp=False,
        final_norm="ln_f",
        lm_head="lm_head",
        hidden_keys=("n_embd", "hidden_size"),
        heads_keys=("n_head", "num_attention_heads"),
    ),
}

ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "LlamaModel": "llama",
    "MistralForCausalLM": "mistral",
    "MistralModel": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2Model": "qwen2",
    "BertModel": "bert",
    "BertForMaskedLM": "bert",
    "BertForSequenceClassification": "bert",
    "BertForPreTraining": "bert",
    "GPT2LMHeadModel": "gpt2",
    "GPT2Model": "gpt2",
}


@dataclass(frozen=True)
class HfConfig:
    """The fields of a Hugging Face config.json that the symmetries depend on."""

    path: Path
    model_type: str | None
    architectures: tuple[str, ...]
    raw: Mapping[str, Any]

    @property
    def label(self) -> str:
        return self.model_type or (self.architectures[0] if self.architectures else "unknown")


def find_config(checkpoint_path: Path) -> HfConfig | None:
    """The config.json beside a checkpoint file (or in its folder), if there is one."""
    folder = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent
    path = folder / CONFIG_NAME
    if not path.is_file():
        return None
    raw = read_json_file(path, "config")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a Hugging Face config is a JSON object")
    model_type = raw.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise InputError(f'{path}: "model_type" must be a string, not {model_type!r:.60}')
    architectures = raw.get("architectures")
    if architectures is None:
        architectures = []
    # Class names, looked up in transformers by name when a model is loaded.
    if not isinstance(architectures, list) or not all(
        isinstance(name, str) and name.isidentifier() for name in architectures
    ):
        raise InputError(
            f'{path}: "architectures" must be a list of model class names such as '
            f'["LlamaForCausalLM"], not {architectures!r:.60}'
        )
    for key in SIZE_KEYS:
        value = raw.get(key)
        if value is not None and (type(value) is not int or value <= 0):
            raise InputError(f"{path}: {key!r} must be a positive integer, not {value!r:.60}")
    for key, kind in (("tie_word_embeddings", bool), ("position_embedding_type", str)):
        value = raw.get(key)
        if value is not None and not isinstance(value, kind):
            raise InputError(f"{path}: {key!r} must be a {kind.__name__}, not {value!r:.60}")
    return HfConfig(path=path, model_type=model_type, architectures=tuple(architectures), raw=raw)


# The sizes the families' symmetries are built from, wherever a config states them.
SIZE_KEYS = (
    "hidden_size",
    "n_embd",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
)


def family_for(config: HfConfig) -> Family | None:
    """The registry entry for a config: by model_type, else by architecture class name."""
    if config.model_type in FAMILIES:
        return FAMILIES[config.model_type]
    for architecture in config.architectures:
        if architecture in ARCHITECTURES:
            return FAMILIES[ARCHITECTURES[architecture]]
    return None


def known_families() -> str:
    return ", ".join(FAMILIES)


def structure_from_config(
    config: HfConfig, family: Family, shapes: Mapping[str, tuple[int, ...]]
) -> Structure:
    """Every symmetry of every block, checked against the tensors' shapes."""
    origin = f"config:{config.model_type or family.name}"
    builder = _Builder(config, family, shapes, origin)
    blocks = builder.blocks()
    if not blocks:
        raise StructureError(
            f"{config.path}: model_type {config.label!r} but no block tensor ending in "
            f"'.{family.query}.weight' was found; is this the checkpoint that config describes?"
        )
    symmetries: list[Symmetry] = []
    for block in blocks:
        symmetries += builder.block_symmetries(block)
    symmetries += builder.head_symmetries(blocks)
    claimed = {member.tensor for symmetry in symmetries for member in symmetry.members}
    unassigned = tuple(
        Unassigned(name, _why_untouched(name, family)) for name in shapes if name not in claimed
    )
    notes = [
        "the residual stream and the embeddings are not rescaled: a norm's eps (and the "
        "residual adds) make scaling them inexact",
        *builder.notes,
    ]
    if not family.exact_mlp:
        notes.append(
            f"{family.up} → {family.down} crosses a GELU: that symmetry is approximate and "
            "is rebalanced only with --allow-approximate"
        )
    return Structure(
        chains=(),
        unassigned=unassigned,
        origin=origin,
        assumptions=(),
        symmetries=tuple(symmetries),
        notes=tuple(notes),
    )


def _why_untouched(name: str, family: Family) -> str:
    if "embed" in name or name.endswith(("wte.weight", "wpe.weight")):
        return "embedding: feeds the residual stream, which is not rescaled"
    if "norm" in name.lower() or re.search(r"(^|\.)ln_", name):
        return "normalisation on the residual stream: its eps makes scaling inexact"
    return "in no exact symmetry of this architecture"


class _Builder:
    def __init__(
        self,
        config: HfConfig,
        family: Family,
        shapes: Mapping[str, tuple[int, ...]],
        origin: str,
    ) -> None:
        self.config = config
        self.family = family
        self.shapes = shapes
        self.origin = origin
        self.hidden = self._integer(family.hidden_keys)
        self.heads = self._integer(family.heads_keys)
        self.kv_heads = int(config.raw.get("num_key_value_heads") or self.heads)
        head_dim = config.raw.get("head_dim")
        self.head_dim = int(head_dim) if head_dim else self.hidden // self.heads
        if self.heads % self.kv_heads:
            raise StructureError(
                f"{config.path}: num_attention_heads ({self.heads}) is not a multiple of "
                f"num_key_value_heads ({self.kv_heads})"
            )
        if family.rope and self.head_dim % 2:
            raise StructureError(f"{config.path}: RoPE needs an even head_dim, not {self.head_dim}")
        tied = config.raw.get("tie_word_embeddings", family.tie_default)
        self.tied_embeddings = bool(tied)
        self.notes: list[str] = []
        # BERT's relative position embeddings (transformers 4.x) add query·position and
        # key·position terms to the scores: scaling q against k no longer cancels.
        positions = config.raw.get("position_embedding_type") or "absolute"
        self.query_key_exact = positions == "absolute"
        if not self.query_key_exact:
            self.notes.append(
                f"position_embedding_type {positions!r} adds position terms to the attention "
                "scores: q↔k is not a symmetry there, so it is left out"
            )

    def _integer(self, keys: tuple[str, ...]) -> int:
        for key in keys:
            value = self.config.raw.get(key)
            if isinstance(value, int) and value > 0:
                return value
        raise StructureError(
            f"{self.config.path}: needs a positive integer {' or '.join(keys)} for "
            f"model_type {self.config.label!r}"
        )

    def blocks(self) -> list[str]:
        anchor = re.compile(f"^{self.family.block}\\.{re.escape(self.family.query)}\\.weight$")
        found = [m.group("block") for name in self.shapes if (m := anchor.match(name))]
        return sorted(set(found), key=natural_key)

    # -- tensors -------------------------------------------------------------------------

    def weight(self, block: str, module: str, rows: int, columns: int) -> str:
        """`<block>.<module>.weight`, checked to be [rows, columns] in torch layout."""
        name = f"{block}.{module}.weight" if block else f"{module}.weight"
        expected = (columns, rows) if self.family.conv1d else (rows, columns)
        shape = self.shapes.get(name)
        if shape is None:
            raise StructureError(
                f"{self.config.path}: {self.config.label} needs tensor {name}, which the "
                "checkpoint does not have"
            )
        if tuple(shape) != expected:
            raise StructureError(
                f"{name}: shape {tuple(shape)}, but config.json ({self.config.label}: hidden "
                f"{self.hidden}, {self.heads} heads, {self.kv_heads} key/value heads, head_dim "
                f"{self.head_dim}) implies {expected}"
            )
        return name

    def optional(self, name: str, size: int) -> str | None:
        shape = self.shapes.get(name)
        if shape is None:
            return None
        if tuple(shape) != (size,):
            raise StructureError(f"{name}: shape {tuple(shape)}, expected ({size},)")
        return name

    def outputs(self, weight: str, exponent: int, offset: int = 0) -> list[Member]:
        """The output channels of a projection (and its bias), from `offset` on."""
        axis = 1 if self.family.conv1d else 0
        members = [Member(weight, axis, exponent, offset=offset)]
        bias = weight.removesuffix(".weight") + ".bias"
        if bias in self.shapes:
            members.append(Member(bias, 0, exponent, offset=offset))
        return members

    def inputs(self, weight: str, exponent: int, offset: int = 0) -> Member:
        axis = 0 if self.family.conv1d else 1
        return Member(weight, axis, exponent, offset=offset)

    def norm(self, prefix: str) -> list[Member]:
        members = []
        for suffix in ("weight", "bias"):
            name = self.optional(f"{prefix}.{suffix}", self.hidden)
            if name is not None:
                members.append(Member(name, 0, 1))
        if not members:
            raise StructureError(
                f"{self.config.path}: {self.config.label} needs {prefix}.weight, which the "
                "checkpoint does not have"
            )
        return members

    def symmetry(
        self, block: str, kind: str, key: str, size: int, members: list[Member], **extra: Any
    ) -> Symmetry:
        return Symmetry(
            id=f"{block}.{key}" if block else key,
            size=size,
            members=tuple(members),
            origin=self.origin,
            kind=kind,
            group=block,
            **extra,
        )

    # -- one block ------------------------------------------------------------------------

    def block_symmetries(self, block: str) -> list[Symmetry]:
        family, d = self.family, self.head_dim
        q_size, kv_size = self.heads * d, self.kv_heads * d
        found: list[Symmetry] = []
        if family.fused_qkv is not None:
            fused = self.weight(block, family.fused_qkv, q_size + 2 * kv_size, self.hidden)
            query = key = value = fused
            offsets = (0, q_size, q_size + kv_size)
        else:
            query = self.weight(block, family.query, q_size, self.hidden)
            key = self.weight(block, family.key, kv_size, self.hidden)
            value = self.weight(block, family.value, kv_size, self.hidden)
            offsets = (0, 0, 0)
        output = self.weight(block, family.output, self.hidden, q_size)
        if family.attention_norm is not None:
            members = self.norm(f"{block}.{family.attention_norm}")
            members += [self.inputs(name, -1) for name in dict.fromkeys((query, key, value))]
            found.append(
                self.symmetry(
                    block,
                    NORM_TO_QKV,
                    "attention_norm",
                    self.hidden,
                    members,
                    note=f"{family.attention_norm} gain → inputs of q, k, v",
                )
            )
        attention = self.attention(block, (query, key, value), offsets, output)
        if not self.query_key_exact:
            attention = [s for s in attention if s.kind != QUERY_KEY]
        found += attention
        found += self.mlp(block)
        return found

    def attention(
        self, block: str, qkv: tuple[str, str, str], offsets: tuple[int, int, int], output: str
    ) -> list[Symmetry]:
        """q ↔ k and v → o per head dimension. With GQA a key/value head serves a group of
        query heads: its scale is matched by every query head of the group (one symmetry per
        key/value head). With RoPE, dimensions i and i + head_dim/2 turn together, so they
        share a scale (two members per head, one per half)."""
        query, key, value = qkv
        q_at, k_at, v_at = offsets
        d, group = self.head_dim, self.heads // self.kv_heads
        found: list[Symmetry] = []
        if group == 1 and not self.family.rope:
            members = self.outputs(query, 1, q_at) + self.outputs(key, -1, k_at)
            found.append(
                self.symmetry(
                    block,
                    QUERY_KEY,
                    "qk",
                    self.heads * d,
                    members,
                    note="query ↔ key, per head dimension",
                )
            )
            members = self.outputs(value, 1, v_at) + [self.inputs(output, -1)]
            found.append(
                self.symmetry(
                    block,
                    VALUE_OUTPUT,
                    "vo",
                    self.heads * d,
                    members,
                    note="value → output projection, per head dimension",
                )
            )
            return found
        halves = (0, d // 2) if self.family.rope else (0,)
        width = d // len(halves)
        for kv in range(self.kv_heads):
            members = []
            for half in halves:
                members += self.outputs(key, -1, k_at + kv * d + half)
                for head in range(kv * group, (kv + 1) * group):
                    members += self.outputs(query, 1, q_at + head * d + half)
            note = f"query heads {kv * group}..{(kv + 1) * group - 1} ↔ key head {kv}"
            if self.family.rope:
                note += "; RoPE pairs (i, i + head_dim/2) share a scale"
            found.append(self.symmetry(block, QUERY_KEY, f"qk.kv{kv}", width, members, note=note))
        for kv in range(self.kv_heads):
            members = self.outputs(value, 1, v_at + kv * d)
            members += [
                self.inputs(output, -1, head * d) for head in range(kv * group, (kv + 1) * group)
            ]
            found.append(
                self.symmetry(
                    block,
                    VALUE_OUTPUT,
                    f"vo.kv{kv}",
                    d,
                    members,
                    note=f"value head {kv} → output columns of query heads "
                    f"{kv * group}..{(kv + 1) * group - 1}",
                )
            )
        return found

    def mlp(self, block: str) -> list[Symmetry]:
        family = self.family
        up_rows = self._intermediate(block)
        up = self.weight(block, family.up, up_rows, self.hidden)
        down = self.weight(block, family.down, self.hidden, up_rows)
        gate = self.weight(block, family.gate, up_rows, self.hidden) if family.gate else None
        found: list[Symmetry] = []
        if family.mlp_norm is not None:
            members = self.norm(f"{block}.{family.mlp_norm}")
            members += [self.inputs(name, -1) for name in (gate, up) if name is not None]
            found.append(
                self.symmetry(
                    block,
                    NORM_TO_MLP,
                    "mlp_norm",
                    self.hidden,
                    members,
                    note=f"{family.mlp_norm} gain → inputs of the MLP",
                )
            )
        members = self.outputs(up, 1) + [self.inputs(down, -1)]
        if family.exact_mlp:
            found.append(
                self.symmetry(
                    block,
                    UP_DOWN,
                    "up_down",
                    up_rows,
                    members,
                    note="up → down (the SiLU is on the gate branch)",
                )
            )
        else:
            found.append(
                self.symmetry(
                    block,
                    MLP_GELU,
                    "mlp",
                    up_rows,
                    members,
                    exact=False,
                    note="across a GELU: approximate",
                )
            )
        return found

    def _intermediate(self, block: str) -> int:
        """The MLP width, read off the up projection (configs name it differently)."""
        name = f"{block}.{self.family.up}.weight"
        shape = self.shapes.get(name)
        if shape is None or len(shape) != 2:
            raise StructureError(
                f"{self.config.path}: {self.config.label} needs a 2-D tensor {name}"
            )
        return shape[1] if self.family.conv1d else shape[0]

    # -- after the last block -----------------------------------------------------------

    def head_symmetries(self, blocks: list[str]) -> list[Symmetry]:
        family = self.family
        if family.final_norm is None or family.lm_head is None or self.tied_embeddings:
            return []
        container = blocks[0].rsplit(".", 2)[0] if blocks[0].count(".") >= 2 else ""
        norm = f"{container}.{family.final_norm}" if container else family.final_norm
        head = f"{family.lm_head}.weight"
        if f"{norm}.weight" not in self.shapes or head not in self.shapes:
            return []
        shape = self.shapes[head]
        if len(shape) != 2 or shape[1] != self.hidden:
            raise StructureError(f"{head}: shape {tuple(shape)}, expected [vocab, {self.hidden}]")
        members = self.norm(norm) + [Member(head, 1, -1)]
        return [
            Symmetry(
                id="final_norm",
                size=self.hidden,
                members=tuple(members),
                origin=self.origin,
                note=f"{family.final_norm} gain → lm_head columns (embeddings not tied)",
                kind=NORM_TO_HEAD,
                group="head",
            )
        ]


def describe_unknown(config: HfConfig) -> str:
    return (
        f"{config.path}: architecture {config.label!r} is not in weissi's registry "
        f"({known_families()}); its symmetries are not known, so the structure below is the "
        "name/shape heuristic, which does not understand attention: pin the right structure "
        "with a spec file"
    )
