"""The promotion gate: a trained model reaches ``champion`` only if it is measurably better.

Rules (thresholds from ``params.yaml`` ``gate``; all on the same split and metric, default test NDCG@10):

1. beat the most-popular baseline by at least ``min_gain_over_popularity`` (absolute);
2. beat the reference SASRec (``evaluate.sasrec``, by name) by at least ``min_gain_over_sasrec`` (absolute;
   the shipped value is >= 0: MUFASA must win, not merely come close);
3. not regress more than ``max_regression_vs_champion`` below the current champion, re-evaluated on the same
   split in the same run (absent champion: rule passes).

The decision is pure data: the registry adapter records it as tags on the model version and moves aliases.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    candidate: float
    reasons: tuple[str, ...]
    checks: dict[str, bool] = field(default_factory=dict)

    def as_tags(self) -> dict[str, str]:
        tags = {
            "gate.decision": "promoted" if self.passed else "refused",
            "gate.metric": self.metric,
            "gate.candidate": f"{self.candidate:.6f}",
            "gate.reasons": " | ".join(self.reasons),
        }
        tags.update({f"gate.check.{k}": str(v).lower() for k, v in self.checks.items()})
        return tags


def decide(
    candidate: dict[str, float],
    *,
    popularity: dict[str, float] | None,
    sasrec: dict[str, float] | None,
    champion: dict[str, float] | None,
    metric: str = "ndcg@10",
    min_gain_over_popularity: float = 0.0,
    min_gain_over_sasrec: float = 0.0,
    max_regression_vs_champion: float = 0.0,
) -> GateDecision:
    """Apply the three rules; every rule's outcome and numbers end up in ``reasons``."""
    if metric not in candidate:
        raise KeyError(f"candidate metrics lack {metric!r} (have {sorted(candidate)})")
    value = float(candidate[metric])
    reasons: list[str] = []
    checks: dict[str, bool] = {}

    def rule(name: str, reference: dict[str, float] | None, margin: float, label: str) -> None:
        if reference is None:
            checks[name] = False
            reasons.append(f"{label}: no {label} result to compare against (refused)")
            return
        ref = float(reference[metric])
        ok = value >= ref + margin
        checks[name] = ok
        reasons.append(
            f"{label}: {metric} {value:.4f} vs {ref:.4f} (needs >= {ref + margin:.4f}) -> {'pass' if ok else 'FAIL'}"
        )

    rule("beats_popularity", popularity, min_gain_over_popularity, "popularity")
    rule("beats_sasrec", sasrec, min_gain_over_sasrec, "sasrec")
    if champion is None:
        checks["no_regression"] = True
        reasons.append("champion: none registered yet -> pass")
    else:
        ref = float(champion[metric])
        ok = value >= ref - max_regression_vs_champion
        checks["no_regression"] = ok
        reasons.append(
            f"champion: {metric} {value:.4f} vs {ref:.4f} (tolerance {max_regression_vs_champion:.4f}) -> "
            f"{'pass' if ok else 'FAIL'}"
        )
    return GateDecision(all(checks.values()), metric, value, tuple(reasons), checks)
