"""Verification with the architecture's own code: load both folders with transformers and
compare what they compute on random token ids."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from weissi_cli.errors import UsageError
from weissi_cli.progress import phase
from weissi_cli.structure.architectures import CONFIG_NAME
from weissi_cli.verification import SEED, ChainVerification
from weissi_cli.verify_outputs import OutputChange, float16_caveat, tensors

SEQUENCE = 16
BATCH = 2
# Ids covered in order when the vocabulary is probed (a cost bound for large vocabularies),
# in batches of this many sequences.
VOCABULARY_IDS = 4096
VOCABULARY_BATCH = 32


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError(
            "--verify-with transformers needs the transformers library: "
            "pip install 'weissi-cli[hf]'"
        ) from None


@contextlib.contextmanager
def model_folder(config: Path, weights: Mapping[str, Path]) -> Iterator[Path]:
    """A throw-away folder holding links to a config.json and the weight files (by the
    names the folder gives them), so a pending, not yet committed output loads like a
    finished one."""
    with tempfile.TemporaryDirectory(prefix="weissi-verify-") as folder:
        os.symlink(config.resolve(), Path(folder) / CONFIG_NAME)
        for name, weight in weights.items():
            os.symlink(weight.resolve(), Path(folder) / name)
        yield Path(folder)


@phase("verifying: running both models with transformers")
def run_transformers(
    original: Path,
    rewritten: Path,
    exact: bool = True,
    probes: int = 2,
    power_of_two: bool = False,
) -> ChainVerification:
    """Run both model folders with the class their config.json names and compare every
    floating-point output (logits, hidden states): on random token ids, and for a float16
    model or approximate symmetries also on ids covering the vocabulary (through the
    model's own embeddings), whose rarer tokens make smaller activations."""
    require_transformers()
    import torch
    import transformers

    generator = torch.Generator().manual_seed(SEED)
    before_model = _load(transformers, original)
    after_model = _load(transformers, rewritten)
    vocab = int(getattr(before_model.config, "vocab_size", 0) or 0)
    if getattr(before_model, "main_input_name", "input_ids") == "pixel_values":
        vocab = max(vocab, 2)  # the ids only seed the pixels
    if vocab <= 0:
        raise UsageError(f"{original}: config.json has no vocab_size to draw token ids from")
    batches = [torch.randint(vocab, (BATCH, SEQUENCE), generator=generator) for _ in range(probes)]
    stored = str(next(before_model.parameters()).dtype).removeprefix("torch.")
    covered = 0
    if stored == "float16" or not exact:
        batches += _vocabulary_batches(vocab)
        covered = min(vocab, VOCABULARY_IDS)
    change = OutputChange()
    final = OutputChange()  # the last hidden state, which the head may absorb a scale from
    with torch.no_grad():
        for ids in batches:
            before, before_final = _outputs(before_model, ids)
            after, after_final = _outputs(after_model, ids)
            for old, new in zip(_floats(before), _floats(after), strict=True):
                change.add_torch(old, new)
            if before_final is not None and after_final is not None:
                final.add_torch(before_final, after_final)
    if exact or change.identical:
        outcome = change.outcome()
    else:
        outcome = f"{change.moved()}, approximate symmetries: measured, not bounded)"
    name = type(before_model).__name__
    inputs = f"{probes} batches of random token ids ({BATCH}×{SEQUENCE})"
    if getattr(before_model, "main_input_name", "input_ids") == "pixel_values":
        shape = "×".join(map(str, _inputs(before_model, batches[0])["pixel_values"].shape))
        inputs = f"{probes} batches of random pixel values ({shape})"
    if covered == vocab:
        inputs += f" and ids covering all {vocab:,} vocabulary entries"
    elif covered:
        inputs += f" and ids covering the first {covered:,} of the {vocab:,} vocabulary entries"
    caveat = ""
    if not exact:
        caveat = (
            f"approximate symmetries change the function: on {inputs} the outputs moved by up "
            f"to {change.worst_abs:.3g} ({change.worst_rel:.2g} of their largest); real inputs "
            "can move them "
            "several times more, so evaluate the written model on your own data before using it"
        )
    elif power_of_two and change.dtype == "float16":
        caveat = float16_caveat(change.worst_abs, change.worst_rel, None, "these inputs")
    if exact and not final.passed:
        caveat = " ".join(filter(None, [caveat, _final_state_caveat(final)]))
    return change.verification(
        "transformers",
        "transformers",
        f"loaded both folders with transformers' {name} and ran {inputs} in {change.dtype}: "
        f"{outcome}",
        sum(int(ids.shape[0]) for ids in batches),
        caveat,
        level="real_network" if exact else "approximate",
        passed=change.passed or (change.finite and not exact),
    )


def _inputs(model: Any, ids: Any) -> dict[str, Any]:
    import torch

    main = getattr(model, "main_input_name", "input_ids")
    if main == "pixel_values":
        config = getattr(model.config, "vision_config", model.config)
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        channels = getattr(config, "num_channels", 3)
        generator = torch.Generator().manual_seed(int(ids.sum()))
        pixels = torch.randn((ids.shape[0], channels, size, size), generator=generator)
        return {"pixel_values": pixels.to(next(model.parameters()).dtype)}
    inputs = {"input_ids": ids}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs


def _vocabulary_batches(vocab: int) -> list[Any]:
    """Every id below VOCABULARY_IDS, in sequences of SEQUENCE, batched."""
    import torch

    ids = torch.arange(min(vocab, VOCABULARY_IDS))
    total = -(-ids.numel() // SEQUENCE) * SEQUENCE  # the last sequence filled from the start
    ids = ids.repeat(total // ids.numel() + 1)[:total].reshape(-1, SEQUENCE)
    return list(torch.split(ids, VOCABULARY_BATCH))


def _load(transformers: Any, folder: Path) -> Any:
    """The class config.json names (e.g. LlamaForCausalLM), else AutoModel; in the stored
    dtype, eager attention (deterministic on the CPU), evaluation mode."""
    transformers.utils.logging.disable_progress_bar()  # stderr is for weissi's own output
    transformers.utils.logging.set_verbosity_error()
    config = transformers.AutoConfig.from_pretrained(folder)
    names = config.architectures or []
    classes = [getattr(transformers, name, None) for name in names]
    models: list[Any] = [
        c for c in classes if isinstance(c, type) and issubclass(c, transformers.PreTrainedModel)
    ]
    if names and not models:
        raise UsageError(
            f'{(folder / CONFIG_NAME).resolve()}: "architectures" names {", ".join(names)}, '
            "which is not a transformers model class; name the model class (e.g. "
            "LlamaForCausalLM) or remove the entry"
        )
    model_class = models[0] if models else transformers.AutoModel
    try:
        model = model_class.from_pretrained(
            folder, dtype="auto", attn_implementation="eager", local_files_only=True
        )
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        raise UsageError(f"{folder}: transformers cannot load this folder ({error})") from None
    return model.eval()


def _outputs(model: Any, ids: Any) -> tuple[Any, Any]:
    """(What must not change, the final hidden state or None.) The first: logits (else the
    last hidden state) and the residual stream between blocks. A model with a head returns
    its final hidden state apart: it is the final norm's output, which a symmetry between
    that norm's gain and the head may rescale while the logits stay the same; the caller
    measures it and says so. Vision models get pixels drawn from the ids (a fixed function
    of them); encoder-decoders get the ids as decoder inputs too."""
    inputs = _inputs(model, ids)
    result = model(**inputs, output_hidden_states=True)
    if "encoder_last_hidden_state" in result:  # an encoder-decoder: compare its ends
        return {
            "logits": result.get("logits", result.get("last_hidden_state")),
            "encoder_last_hidden_state": result["encoder_last_hidden_state"],
        }, None
    hidden = list(result.get("hidden_states") or ())
    if "logits" in result:
        return {"logits": result["logits"], "hidden_states": hidden[:-1]}, (
            hidden[-1] if hidden else None
        )
    return {"last_hidden_state": result["last_hidden_state"], "hidden_states": hidden}, None


def _floats(outputs: Any) -> list[Any]:
    return [t for t in tensors(outputs) if t.is_floating_point()]


def _final_state_caveat(final: OutputChange) -> str:
    return (
        f"the final hidden state moved by up to {final.worst_abs:.3g} ({final.worst_rel:.2g} of "
        "its largest) while the logits did not: scale moved between the final norm's gain and "
        "the output head. Code that reads the base model's output (AutoModel, "
        "output_hidden_states[-1], embeddings taken from it) sees different values; leave "
        "1-D parameters unpenalised (no --include-bias) to keep that state"
    )
