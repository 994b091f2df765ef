"""`check`: a CI gate over one streaming pass — thresholds on tensors and chains."""

from __future__ import annotations

from pathlib import Path

from weissi_cli.api.symmetries import solve_group
from weissi_cli.balance.analysis import analyse_chain
from weissi_cli.config import CheckSettings
from weissi_cli.io import open_checkpoint
from weissi_cli.report.check import CheckReport, RuleResult
from weissi_cli.report.common import Source
from weissi_cli.stats import TensorDetails, TensorStats, compute_stats_and_details
from weissi_cli.structure import discover
from weissi_cli.structure.source import StructureSource

SHOWN_INDICES = 8


def check_checkpoint(
    path: Path,
    settings: CheckSettings,
    settings_file: Path | None = None,
    spec: Path | StructureSource | None = None,
    threads: int = 2,
) -> CheckReport:
    with open_checkpoint(path) as checkpoint:
        structure = discover(checkpoint, spec)
        stats, details = compute_stats_and_details(
            checkpoint, headroom=settings.fp16_headroom, threads=threads
        )
        results: list[RuleResult] = []
        for name in stats:
            results += _tensor_rules(stats[name], details[name], settings)
        for chain in structure.chains:
            analysis = analyse_chain(chain, stats)
            names = chain.tensor_names()
            if analysis.problem is not None:
                for rule, threshold in (
                    ("max-imbalance", settings.max_imbalance),
                    ("max-l2-ratio", settings.max_l2_ratio),
                ):
                    if threshold is not None:
                        results.append(
                            RuleResult(
                                rule,
                                chain.id,
                                None,
                                threshold,
                                "warn",
                                names,
                                f"not evaluated: {analysis.problem}",
                            )
                        )
                continue
            if settings.max_imbalance is not None and analysis.imbalance is not None:
                results.append(
                    _threshold(
                        "max-imbalance",
                        chain.id,
                        analysis.imbalance,
                        settings.max_imbalance,
                        names,
                        "largest/smallest layer norm",
                    )
                )
            if (
                settings.max_l2_ratio is not None
                and analysis.l2_penalty
                and analysis.min_l2_penalty
            ):
                ratio = analysis.l2_penalty / analysis.min_l2_penalty
                results.append(
                    _threshold(
                        "max-l2-ratio",
                        chain.id,
                        ratio,
                        settings.max_l2_ratio,
                        names,
                        "L2 penalty / its minimum over scale shifts",
                    )
                )
        if settings.max_l2_ratio is not None and structure.symmetries:
            solved = solve_group(checkpoint, structure, include_bias=False, granularity="layer")
            if solved is not None and solved[0].layer.l2_after > 0:
                group = solved[0]
                names = tuple(dict.fromkeys(m.tensor for s in group.symmetries for m in s.members))
                ratio = group.l2_penalty / group.layer.l2_after
                results.append(
                    _threshold(
                        "max-l2-ratio",
                        "symmetries",
                        ratio,
                        settings.max_l2_ratio,
                        names,
                        "L2 penalty / its minimum over the scale symmetries",
                    )
                )
        return CheckReport(
            source=Source.of(checkpoint, str(path)),
            settings=settings,
            settings_file=str(settings_file) if settings_file else None,
            results=tuple(results),
            warnings=(*checkpoint.notes, *structure.assumptions),
        )


def _threshold(
    rule: str, scope: str, value: float, threshold: float, tensors: tuple[str, ...], what: str
) -> RuleResult:
    verdict = "pass" if value <= threshold else "fail"
    relation = "≤" if verdict == "pass" else ">"
    return RuleResult(
        rule,
        scope,
        value,
        threshold,
        verdict,
        tensors,
        f"{what}: {value:.4g} {relation} {threshold:g}",
    )


def _tensor_rules(
    stats: TensorStats, details: TensorDetails, settings: CheckSettings
) -> list[RuleResult]:
    name = stats.name
    found = [
        RuleResult(
            "non-finite",
            name,
            float(stats.nonfinite),
            0.0,
            "fail" if stats.nonfinite else "pass",
            (name,),
            f"{stats.nonfinite} NaN/Inf value(s)" if stats.nonfinite else "all values finite",
        )
    ]
    if settings.max_abs is not None:
        found.append(
            _threshold("max-abs", name, stats.max_abs, settings.max_abs, (name,), "max |w|")
        )
    if settings.max_norm is not None and stats.is_finite:
        found.append(
            _threshold(
                "max-norm", name, stats.fro_norm, settings.max_norm, (name,), "Frobenius norm"
            )
        )
    dead = len(details.zero_rows) + len(details.zero_columns)
    if dead:
        parts = []
        if details.zero_rows:
            parts.append(f"{len(details.zero_rows)} all-zero row(s) {_indices(details.zero_rows)}")
        if details.zero_columns:
            parts.append(
                f"{len(details.zero_columns)} all-zero column(s) {_indices(details.zero_columns)}"
            )
        found.append(
            RuleResult(
                "dead-units",
                name,
                float(dead),
                0.0 if settings.no_dead_units else None,
                "fail" if settings.no_dead_units else "warn",
                (name,),
                "dead units: " + "; ".join(parts),
            )
        )
    if settings.fp16_headroom:
        problems = [
            f"{details.overflow[dtype]} value(s) overflow {dtype}"
            for dtype in ("float16", "bfloat16")
            if details.overflow.get(dtype)
        ] + [
            f"{details.underflow[dtype]} non-zero value(s) flush to zero in {dtype}"
            for dtype in ("float16", "bfloat16")
            if details.underflow.get(dtype)
        ]
        total = sum(details.overflow.values()) + sum(details.underflow.values())
        found.append(
            RuleResult(
                "fp16-headroom",
                name,
                float(total),
                0.0,
                "fail" if problems else "pass",
                (name,),
                "; ".join(problems) if problems else "fits float16 and bfloat16",
            )
        )
    return found


def _indices(indices: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in indices[:SHOWN_INDICES])
    more = f", … ({len(indices) - SHOWN_INDICES} more)" if len(indices) > SHOWN_INDICES else ""
    return f"[{shown}{more}]"


__all__ = ["check_checkpoint"]
