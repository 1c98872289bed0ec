"""The tuned defaults of every whitening algorithm, declared once.

Python code (``RecursiveWhitening(model)``) and the ``whitening=`` config group read the same
dataclasses: ``brisk.config`` registers them as the schemas that ``conf/whitening/*.yaml`` extend,
so a default changed here changes both, and a misspelt key fails at composition as well as at
construction.  Values are the ones measured on the anchor CIFAR-10 workload (docs/whitening.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brisk.errors import UserError

__all__ = [
    "EVDSettings",
    "GradientSettings",
    "RecursiveSettings",
    "SPECTRA",
    "WhiteningSettings",
    "DTYPES",
    "LAYER_TYPES",
]

DTYPES = ("float32", "float64")
LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")
SPECTRA = ("inverse", "clip")


@dataclass
class WhiteningSettings:
    """Keys shared by ``feature``, ``evd`` and ``recursive`` (``feature`` uses exactly these)."""

    eps: float = 0.3  # damping relative to trace(R)/M; best of 0.1/0.3/1 for evd on CIFAR-10
    # the least relative damping, whatever eps says: keeps R + damping I invertible at eps 0, and
    # scales with the inputs (an absolute floor left layers with tiny inputs unwhitened)
    eps_min: float = 1e-6
    momentum: float = 0.95  # running average of R, per statistics update
    stats_every: int = 10  # steps between statistics updates (the dominant cost)
    inverse_every: int = 20  # steps between preconditioner refreshes
    stats_max_rows: int | None = 1024  # random patch rows per layer and statistics step; None: all
    start_step: int = 0  # plain steps before this one (statistics are still gathered)
    layer_types: list[str] = field(default_factory=lambda: list(LAYER_TYPES))
    include: list[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns on module names
    exclude: list[str] = field(default_factory=list)
    max_block: int = (
        4096  # larger layers get a block-diagonal covariance of blocks this size or less
    )
    max_dim: int | None = None  # layers with a larger M are skipped (None: none are)
    decomposition_dtype: str = "float64"  # float32 | float64: condition-number logs and clip
    stats_dtype: str = "float32"  # float64 makes data-parallel ranks agree at small eps
    center: bool = True  # centred covariance; layers with a bias get the exact bias correction
    normalize: bool = True  # scale the inverse by the mean eigenvalue: keeps SGD's step size
    seed: int = 0  # sub-sampling randomness (offset by the rank)
    # log kappa(R) and kappa(Q R) every this many refreshes: an eigen-decomposition (M^3) the
    # algorithms never need, so 0 (never) keeps it out of the measured cost
    condition_every: int = 0

    def __post_init__(self) -> None:
        for key in ("stats_every", "inverse_every", "max_block"):
            if int(getattr(self, key)) < 1:
                raise UserError(
                    f"whitening.{key} must be a positive integer, got {getattr(self, key)}"
                )
        if self.eps < 0 or self.eps_min < 0:
            raise UserError(
                f"whitening.eps and eps_min must be >= 0, got {self.eps}, {self.eps_min}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"whitening.momentum must be in [0, 1), got {self.momentum}")
        if self.stats_max_rows is not None and int(self.stats_max_rows) < 1:
            raise UserError(
                f"whitening.stats_max_rows must be >= 1 or null, got {self.stats_max_rows}"
            )
        if self.max_dim is not None and int(self.max_dim) < 1:
            raise UserError(f"whitening.max_dim must be >= 1 or null, got {self.max_dim}")
        unknown = [t for t in self.layer_types if t not in LAYER_TYPES]
        if unknown:
            raise UserError(
                f"whitening.layer_types: unknown {unknown}; expected some of {list(LAYER_TYPES)}"
            )
        for key in ("decomposition_dtype", "stats_dtype"):
            if getattr(self, key) not in DTYPES:
                raise UserError(
                    f"whitening.{key} must be one of {list(DTYPES)}, got {getattr(self, key)!r}"
                )
        for key in ("condition_every", "start_step"):
            if int(getattr(self, key)) < 0:
                raise UserError(f"whitening.{key} must be >= 0, got {getattr(self, key)}")
        # Hydra hands lists over as ListConfig: keep plain Python values
        self.layer_types = list(self.layer_types)
        self.include, self.exclude = list(self.include), list(self.exclude)


@dataclass
class GradientSettings(WhiteningSettings):
    """``evd``: the gradient transform adds the weight-decay term of the bias correction."""

    # weight decay the optimizer applies to a layer's weight but not to its bias, which enters the
    # bias correction; None reads it from the optimizer that steps the layer (coupled L2 for SGD
    # and Adam, decoupled for AdamW); a number forces a coupled (gradient) correction of that size
    unpaired_weight_decay: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unpaired_weight_decay is not None and self.unpaired_weight_decay < 0:
            raise UserError(
                "whitening.unpaired_weight_decay must be >= 0 or null, "
                f"got {self.unpaired_weight_decay}"
            )


@dataclass
class EVDSettings(GradientSettings):
    """``evd``: the exact damped inverse, or (ablation) a clipped spectrum."""

    # inverse: c (R + eps I)^-1 from a Cholesky factor (whitening); clip: U min(1, l_mean / l) U^T
    # from an eigen-decomposition, which only shrinks the directions above the mean eigenvalue
    spectrum: str = "inverse"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spectrum not in SPECTRA:
            raise UserError(
                f"whitening.spectrum must be one of {list(SPECTRA)}, got {self.spectrum!r}"
            )


@dataclass
class RecursiveSettings(GradientSettings):
    """``recursive``: evd's damping (the updates tend to the same exact damped whitening) and
    twice its refresh rate."""

    inverse_every: int = 10
    # Newton-Schulz steps per refresh (each squares the residual I - A Q); a group's first
    # refresh, from the identity, runs RecursiveWhitening.first_steps(M) instead
    steps: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.steps) < 1:
            raise UserError(f"whitening.steps must be >= 1, got {self.steps}")
