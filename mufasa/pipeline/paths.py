"""Where each stage reads and writes, relative to the project root (the folder holding ``dvc.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def raw_interactions(self) -> Path:
        return self.raw_dir / "interactions.parquet"

    @property
    def raw_items(self) -> Path:
        return self.raw_dir / "items.parquet"

    @property
    def raw_images(self) -> Path:
        return self.raw_dir / "images"

    @property
    def raw_manifest(self) -> Path:
        return self.raw_dir / "manifest.json"

    @property
    def raw_entities(self) -> Path:
        return self.raw_dir / "item_entities.parquet"

    @property
    def features_dir(self) -> Path:
        return self.root / "data" / "features"

    @property
    def sequences_dir(self) -> Path:
        return self.root / "data" / "sequences"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def validation_report(self) -> Path:
        return self.reports_dir / "validation" / "raw.json"

    @property
    def data_docs_dir(self) -> Path:
        """GX Data Docs of every validation (HTML; git-ignored, not a DVC output: pages differ on every run)."""
        return self.reports_dir / "validation" / "data_docs"

    @property
    def validation_results_dir(self) -> Path:
        """The GX validation results (JSON) the Data Docs render (git-ignored, like the site)."""
        return self.reports_dir / "validation" / "gx_results"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def fused_items(self) -> Path:
        """MFL's fused item vectors, (N, out_dim) in ``items.parquet`` order (zero-width when MFL is off)."""
        return self.root / "data" / "fused" / "items.npy"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def mfl_model_dir(self) -> Path:
        return self.models_dir / "mfl"

    @property
    def sal_model_dir(self) -> Path:
        return self.models_dir / "sal"

    # ---- metrics (DVC metrics files) and reports, one property each so no module spells a path

    @property
    def sequences_metrics(self) -> Path:
        return self.metrics_dir / "sequences.json"

    @property
    def features_metrics(self) -> Path:
        return self.metrics_dir / "features.json"

    @property
    def mfl_metrics(self) -> Path:
        return self.metrics_dir / "mfl.json"

    @property
    def sal_metrics(self) -> Path:
        return self.metrics_dir / "sal.json"

    @property
    def eval_metrics(self) -> Path:
        """Every model's test (and validation) metrics under both protocols: what the gate decides on."""
        return self.metrics_dir / "eval.json"

    @property
    def gate_metrics(self) -> Path:
        return self.metrics_dir / "gate.json"

    @property
    def mfl_reports(self) -> Path:
        return self.reports_dir / "mfl"

    @property
    def sal_reports(self) -> Path:
        return self.reports_dir / "sal"

    @property
    def mfl_history(self) -> Path:
        """Per-epoch training curves of the MFL as data (``dvc plots`` overlays them across runs)."""
        return self.mfl_reports / "history.json"

    @property
    def sal_history(self) -> Path:
        """Per-epoch training curves of SAL as data, with the validation NDCG@10 that early stopping follows."""
        return self.sal_reports / "history.json"

    @property
    def eval_table(self) -> Path:
        return self.reports_dir / "eval.md"

    @property
    def eval_plot(self) -> Path:
        return self.reports_dir / "eval.png"

    @property
    def run_report(self) -> Path:
        return self.reports_dir / "run_report.md"

    @property
    def train_sequences(self) -> Path:
        return self.sequences_dir / "train.parquet"

    def feature_file(self, name: str) -> Path:
        """One of ``mufasa.pipeline.inputs.FEATURE_FILES`` (``text.npy``, ``image.npy``, ...)."""
        return self.features_dir / name

    def checkpoint_dir(self, stage: str, variant: str) -> Path:
        """Per-run training checkpoints (removed once the run succeeds, so a killed run resumes from them)."""
        return self.root / "checkpoints" / stage / variant


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) that holds ``dvc.yaml`` and ``params.yaml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no MUFASA project (dvc.yaml + params.yaml) at or above {here}")
