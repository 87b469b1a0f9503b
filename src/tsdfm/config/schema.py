"""The config schema: one typed dataclass per section, each with a ``validate`` that fails early.

Every stage is driven by an :class:`ExperimentConfig`. The defaults here are the recipe; the checks
here turn a bad value into one message that names the key and the fix, before any compute is
spent. Reading YAML and ``key=value`` overrides into these classes is :mod:`tsdfm.config.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tsdfm.data.spec import DataSpec
from tsdfm.errors import TsdfmError

SOURCES = ("mask", "uniform")


@dataclass
class ModelConfig:
    """Transformer shape. ``time_cond=None`` means: on for the uniform source, off for mask.

    A mask-source denoiser does not need t: the number of masks in x_t already tells it how far
    along the path it is, and dropping t is what makes forward caching exact.
    """

    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    time_cond: bool | None = None

    def validate(self, where: str) -> None:
        _positive(self, where, "dim", "n_layers", "n_heads", "mlp_ratio")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise TsdfmError(
                f"{where}.dim={self.dim} must be divisible by n_heads={self.n_heads} with an even "
                "head size (rotary positions rotate pairs of channels)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise TsdfmError(f"{where}.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class FlowConfig:
    """The probability path: source distribution and scheduler kappa(t)."""

    source: str = "mask"
    scheduler: str = "polynomial"
    exponent: float = 1.0

    def validate(self, where: str = "flow") -> None:
        _choice(self, where, "source", SOURCES)
        _choice(self, where, "scheduler", ("polynomial", "cosine"))
        _positive(self, where, "exponent")


@dataclass
class TrainConfig:
    """One training stage's optimisation budget (AdamW, warm-up + cosine, EMA, checkpoints)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.03
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    loss: str = "ce"
    eval_every: int = 250
    eval_batches: int = 8
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    max_bad_steps: int = 10
    num_threads: int = 0
    tensorboard: bool = False
    # Wall-clock cap in minutes of training compute (0 = none): the run ends early at a step
    # boundary, with a final checkpoint and model, when a shared machine is slower than planned.
    max_minutes: float = 0.0
    # End the run after this step (0 = never) exactly as the time cap would, schedule unchanged:
    # replays a time-capped run (its summary.json records the step it reached) bit for bit,
    # since the wall clock, not the arithmetic, is what differs between machines.
    stop_at_step: int = 0
    # Which weights the stage ships: the EMA, the raw weights, or (auto) whichever has the lower
    # validation loss at the end. A slow EMA lags a short run (DESIGN's tiny CPU budgets).
    ship: str = "auto"
    # Scale-out (docs/scale-out.md). ``batch_size`` is the GLOBAL batch of one optimiser step:
    # it is split into world_size x grad_accum_steps equal micro-batches, each with its own noise
    # stream, so a recipe means the same thing on 1 CPU or 8 GPUs.
    grad_accum_steps: int = 1
    device: str = "auto"  # auto (this rank's GPU if CUDA is available, else CPU) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a bf16 GPU, fp32 elsewhere) | fp32 | bf16
    compile: bool = False  # torch.compile the trained model's forward (GPU runs; slow to start)

    def validate(self, where: str) -> None:
        _positive(self, where, "steps", "batch_size", "lr", "eval_every", "eval_batches")
        _positive(self, where, "grad_accum_steps")
        _choice(self, where, "device", ("auto", "cpu", "cuda"))
        _choice(self, where, "precision", ("auto", "fp32", "bf16"))
        if self.batch_size % self.grad_accum_steps:
            raise TsdfmError(
                f"{where}.batch_size={self.batch_size} must be divisible by "
                f"{where}.grad_accum_steps={self.grad_accum_steps} (it is the global batch, "
                "split into equal micro-batches)"
            )
        _positive(self, where, "ckpt_every", "keep_checkpoints", "log_every", "max_bad_steps")
        _nonneg(
            self,
            where,
            "warmup_steps",
            "weight_decay",
            "grad_clip",
            "num_threads",
            "max_minutes",
            "stop_at_step",
        )
        for name in ("ema_decay", "beta1", "beta2", "min_lr_ratio"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0 + (name == "min_lr_ratio"):
                raise TsdfmError(f"{where}.{name} must be in [0, 1), got {v}")
        _choice(self, where, "loss", ("ce", "gkl"))
        _choice(self, where, "ship", ("auto", "ema", "raw"))


@dataclass
class TeacherConfig:
    """``init_from``: a teacher model directory whose weights start this run (a new optimiser,
    schedule and EMA around them). Why: extending a finished teacher's budget. Resuming it with
    more ``steps`` would reuse the finished cosine schedule; a warm start gives the extension
    its own warm-up and decay. The architecture, flow and tokenizer must match exactly."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str | None = None


def _causal_model() -> ModelConfig:
    """The compass default: small enough to stay under 1/4 of the default teacher's parameters."""
    return ModelConfig(dim=96, n_layers=2, n_heads=2)


@dataclass
class CausalStageConfig:
    """A causal LM stage: the energy compass, an evaluator, or the AR baseline."""

    model: ModelConfig = field(default_factory=_causal_model)
    train: TrainConfig = field(default_factory=TrainConfig)


def _evaluator_small() -> CausalStageConfig:
    return CausalStageConfig(
        model=ModelConfig(dim=128, n_layers=3, n_heads=2), train=TrainConfig(seed=101)
    )


def _evaluator_large() -> CausalStageConfig:
    return CausalStageConfig(
        model=ModelConfig(dim=256, n_layers=4, n_heads=4), train=TrainConfig(seed=202)
    )


def _ar_baseline() -> CausalStageConfig:
    return CausalStageConfig(model=ModelConfig(), train=TrainConfig(seed=303))


@dataclass
class ShapingConfig:
    """Trajectory shaping (TS-DFM): K candidate jumps per midpoint, scored by a compass.

    ``candidates=1`` is the blind recipe (same code path, same numbers). ``t_start`` is the
    navigation window: only midpoint jumps that start at ``t >= t_start`` are navigated, earlier
    ones keep candidate 0 (a blind jump in law); 0 navigates every midpoint (the paper's default).
    """

    candidates: int = 1
    compass: str = "ar"  # ar | self | oracle
    select: str = "argmin"  # argmin | softmax
    tau: float = 1.0
    t_start: float = 0.0

    def validate(self, where: str = "student.shaping") -> None:
        if self.candidates < 1:
            raise TsdfmError(
                f"{where}.candidates (K) must be >= 1, got {self.candidates}; use 1 for blind "
                "distillation or e.g. 4 for shaping"
            )
        _choice(self, where, "compass", ("ar", "self", "oracle"))
        _choice(self, where, "select", ("argmin", "softmax"))
        if self.tau <= 0:
            raise TsdfmError(
                f"{where}.tau must be > 0, got {self.tau}; it is the softmax temperature of "
                "select=softmax, e.g. 1.0 (use select=argmin for the zero-temperature limit)"
            )
        if not 0.0 <= self.t_start < 1.0:
            raise TsdfmError(
                f"{where}.t_start must be in [0, 1), got {self.t_start}; it is the earliest "
                "time whose midpoint jumps are navigated (0 navigates all of them)"
            )


MIDPOINT_KINDS = ("model", "teacher", "exact-marginal", "exact-joint")
STUDENT_KINDS = ("product", "mixture", "chain")
CORRELATED_KINDS = ("mixture", "chain")
# What a chain student's code transitions read (tsdfm.models.latent.LatentChain)
CHAIN_FEATURES = ("last", "penultimate", "changeable")


@dataclass
class StudentConfig:
    """Few-step student by shortcut self-distillation (FS-DFM), DESIGN.md section 3.

    ``teacher_steps`` is N (the teacher's own resolution; step sizes are 1, 1/2, ..., 1/N).
    ``dt_weights``: ``inverse`` (FS-DFM's weights proportional to 1/dt) or ``chain`` (equal
    weight on every power-of-two step size, which keeps enough rows on the sizes an 8-step
    student actually uses). ``target`` x ``target_space`` (``tsdfm.shaping.shortcut``):
    ``heun`` x ``probs`` (default) is the exact per-position law of two chained half steps;
    ``rk4`` x ``logits`` is FS-DFM's published recipe (three chained midpoints, (1, 2, 2, 1)/6
    logit average, mode-seeking), ``heun`` x ``logits`` its two-stage form; ``rk4`` x ``probs``
    is refused (fixed RK weights on probabilities are no law of jumps). ``anchor``: what the
    rows at the teacher's own
    resolution (dt = 1/N) imitate: ``teacher`` (the frozen network) or, on the ``markov``
    corpus (mask or uniform source), ``oracle`` (the chain's exact denoiser,
    ``tsdfm.models.oracle``). The oracle anchor is the near-exact-teacher check of DESIGN.md
    section 3: with it the exact-composition student should converge to the exact sampler's
    S-step marginals, so any remaining gap is the recipe's own, not the teacher's.
    ``target_temperature``: tau < 1 sharpens every shortcut (non-anchor) target,
    ``p ∝ target^(1/tau)``; 1 (default) leaves the recipe unchanged.
    ``target_committed`` (mask source, ``probs`` space): what a position a midpoint committed
    contributes to the exact target: ``denoiser`` (``p(k1)``, lowest variance, exact for a
    blind jump), ``token`` (the one-hot of the committed token: exact for any midpoint law, and
    the only value that carries a navigated jump's choices), or ``auto`` (default: ``denoiser``
    for blind midpoints, ``token`` for navigated, teacher or exact midpoints).
    ``carry_over`` (mask source; default true): the target network's output at positions a
    midpoint already committed is a point mass on that token, as the exact denoiser's is,
    instead of its untrained output there (matters for the logit recipes; the exact target
    never reads it). No effect for the uniform source (no position is ever "visible").
    ``midpoint``: how the shortcut target's midpoints are drawn: ``model`` (default, a jump
    with the target network's prediction; navigated when ``shaping`` is set), ``teacher`` (a
    jump with the frozen teacher's posterior, any corpus) or, on the ``markov`` corpus only,
    ``exact-marginal`` / ``exact-joint`` (the chain's exact per-position law, or its exact
    joint law: the diagnostic ceiling of navigation; ``tsdfm.shaping.midpoints``).
    ``kind``: ``product`` (default: one step commits positions independently given ``x_t``) or
    ``mixture`` (docs/mixture.md, ``tsdfm.training.mixture``): the network also takes a latent
    code ``z`` uniform on ``latent_codes`` values, one draw per sample per step, so one step is
    a mixture of products that can carry correlations; it is trained on the joint law of the
    two chained half steps (every code is evaluated on every training row, so the mixture
    likelihood is exact and the student's training compute is ``latent_codes`` times the
    product student's; ``joint_weight`` weighs the correlation term against the per-position
    KL). ``chain``: the same objective, but each position has its own code and the codes form
    a Markov chain along the positions, read by the output layer (``LatentChain``): one body
    pass trains it (the likelihood is a forward algorithm over the codes) and it can carry a
    correlation per pair of neighbours, where one shared code carries at most ``log K`` nats
    per step. Both need the exact composition target (``heun`` x ``probs``, temperature 1).
    ``data_weight`` (correlated kinds, default 0) adds Di4C's data term: the student's
    ``-log P(y)`` at a draw of the *data's* own step law (clean tokens landed with the step's
    switch probability), a teacher-free joint signal at every step size.
    ``latent_lr_scale`` (correlated kinds, default 1) multiplies ``train.lr`` for the latent
    head's parameters (the chain's transition table, code offsets and per-position term; the
    mixture's code embedding), which start from scratch while the body is fine-tuned from the
    teacher: Adam moves a parameter by at most about ``lr`` per step, so at ``lr = 3e-4`` a
    transition logit moves at most ~0.2 nats in 1,200 cosine steps (docs/mixture.md).
    ``chain_features`` (chain kind): what the code transitions read, ``last`` (default: the
    head's features), ``penultimate`` (the last block's input, so that sampling runs the last
    block and the head only where tokens move, as for a product student) or ``changeable``
    (the head's features where the step can change a token, the last block's input elsewhere:
    on the mask source sampling runs the last block at the masked positions only;
    docs/mixture.md).
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=3e-4, warmup_steps=50, ema_decay=0.99)
    )
    teacher_steps: int = 1024
    dt_weights: str = "chain"
    target: str = "heun"
    target_space: str = "probs"
    anchor: str = "teacher"
    target_temperature: float = 1.0
    target_committed: str = "auto"
    carry_over: bool = True
    midpoint: str = "model"
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    kind: str = "product"
    latent_codes: int = 4
    joint_weight: float = 1.0
    data_weight: float = 0.0
    latent_lr_scale: float = 1.0
    chain_features: str = "last"

    def validate(self, where: str = "student") -> None:
        self.train.validate(f"{where}.train")
        n = self.teacher_steps
        if n < 2 or n & (n - 1):
            raise TsdfmError(f"{where}.teacher_steps must be a power of two >= 2, got {n}")
        _choice(self, where, "dt_weights", ("inverse", "chain"))
        _choice(self, where, "target", ("rk4", "heun"))
        _choice(self, where, "target_space", ("logits", "probs"))
        _choice(self, where, "anchor", ("teacher", "oracle"))
        _choice(self, where, "target_committed", ("auto", "denoiser", "token"))
        _choice(self, where, "midpoint", MIDPOINT_KINDS)
        if (self.target, self.target_space) == ("rk4", "probs"):
            raise TsdfmError(
                f"{where}.target=rk4 with {where}.target_space=probs (fixed RK weights on "
                "probabilities) is no composition of jumps; use target=heun target_space=probs "
                "(the exact two-half-step composition, the default) or target=rk4 "
                "target_space=logits (FS-DFM's published recipe)"
            )
        if self.target_committed == "token" and self.target_space != "probs":
            raise TsdfmError(
                f"{where}.target_committed=token needs {where}.target_space=probs (a one-hot "
                "has no finite logits to average)"
            )
        if not self.target_temperature > 0:
            raise TsdfmError(
                f"{where}.target_temperature must be > 0 (1 = off, < 1 sharpens the shortcut "
                f"targets), got {self.target_temperature}"
            )
        self.shaping.validate(f"{where}.shaping")
        _choice(self, where, "kind", STUDENT_KINDS)
        if self.kind in CORRELATED_KINDS:
            self.validate_mixture(where)
        elif self.data_weight:
            raise TsdfmError(
                f"{where}.data_weight is a term of the correlated students' joint objective: "
                f"set {where}.kind=chain (or mixture), or data_weight=0"
            )
        elif self.latent_lr_scale != 1:
            raise TsdfmError(
                f"{where}.latent_lr_scale scales the learning rate of a correlated student's "
                f"latent head, which a product student has not: set {where}.kind=chain (or "
                "mixture), or latent_lr_scale=1"
            )
        _choice(self, where, "chain_features", CHAIN_FEATURES)
        if self.chain_features != "last" and self.kind != "chain":
            raise TsdfmError(
                f"{where}.chain_features says what a chain student's code transitions read; "
                f"set {where}.kind=chain, or chain_features=last"
            )

    def validate_mixture(self, where: str) -> None:
        if self.latent_codes < 2:
            raise TsdfmError(
                f"{where}.latent_codes must be >= 2 for {where}.kind={self.kind} (one code is a "
                f"product student), got {self.latent_codes}"
            )
        if not self.data_weight >= 0:
            raise TsdfmError(
                f"{where}.data_weight must be >= 0 (0 = off; the weight of the data's own step "
                f"law, docs/mixture.md), got {self.data_weight}"
            )
        if not self.latent_lr_scale > 0:
            raise TsdfmError(
                f"{where}.latent_lr_scale must be > 0 (a multiplier of {where}.train.lr for the "
                f"latent head; 1 = the body's rate), got {self.latent_lr_scale}"
            )
        if not 0 <= self.joint_weight <= 1:
            raise TsdfmError(
                f"{where}.joint_weight must be in [0, 1] (0 = per-position loss only; above 1 "
                f"the objective is no longer proper, docs/mixture.md), got {self.joint_weight}"
            )
        if (self.target, self.target_space, self.target_temperature) != ("heun", "probs", 1.0):
            raise TsdfmError(
                f"{where}.kind={self.kind} is trained on the exact two-half-step composition: set "
                f"{where}.target=heun {where}.target_space=probs {where}.target_temperature=1 "
                f"(got {self.target} / {self.target_space} / {self.target_temperature:g})"
            )


TEXT_EVALUATORS = ("ar-small", "ar-large", "smollm2-135m")


@dataclass
class EvalConfig:
    """What the evaluation stage measures (DESIGN.md section 5)."""

    # Real-text evaluators of the pipeline: the two it trains (ar-small, ar-large) and SmolLM2-135M
    # (fetched once; ~420 tokens/s on 2 CPU cores, so ~80 s per 256-sample row). Markov runs
    # always use the exact chain ("truth") instead.
    evaluators: list[str] = field(default_factory=lambda: list(TEXT_EVALUATORS))
    num_samples: int = 256
    batch_size: int = 64
    teacher_steps: list[int] = field(default_factory=lambda: [1024, 256, 64, 16, 8])
    student_steps: list[int] = field(default_factory=lambda: [16, 8, 4, 2, 1])
    seed: int = 1234
    ar_baseline: bool = True  # train and sample the teacher-sized autoregressive baseline

    def validate(self, where: str = "evaluation") -> None:
        _positive(self, where, "num_samples", "batch_size")
        if not self.evaluators:
            raise TsdfmError(f"{where}.evaluators is empty; choose from {list(TEXT_EVALUATORS)}")
        unknown = [e for e in self.evaluators if e not in TEXT_EVALUATORS]
        if unknown or len(set(self.evaluators)) != len(self.evaluators):
            raise TsdfmError(
                f"{where}.evaluators must be distinct names from {list(TEXT_EVALUATORS)}, "
                f"got {self.evaluators}"
            )
        for s in self.teacher_steps + self.student_steps:
            if s < 1:
                raise TsdfmError(f"{where}: steps must be >= 1, got {s}")


@dataclass
class SampleConfig:
    """Defaults for ``tsdfm sample`` and the pipeline's sampling stage."""

    steps: int = 1024
    num: int = 16
    batch_size: int = 64
    seed: int = 0
    top_k: int | None = None
    top_p: float | None = None
    cache: bool = True

    def validate(self, where: str = "sample") -> None:
        _positive(self, where, "steps", "num", "batch_size")
        if self.top_k is not None and self.top_k < 1:
            raise TsdfmError(f"{where}.top_k must be >= 1 or null, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise TsdfmError(f"{where}.top_p must be in (0, 1] or null, got {self.top_p}")


@dataclass
class ExperimentConfig:
    name: str = "default"
    data: DataSpec = field(default_factory=DataSpec)
    flow: FlowConfig = field(default_factory=FlowConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    compass: CausalStageConfig = field(default_factory=CausalStageConfig)
    evaluator_small: CausalStageConfig = field(default_factory=_evaluator_small)
    evaluator_large: CausalStageConfig = field(default_factory=_evaluator_large)
    ar_baseline: CausalStageConfig = field(default_factory=_ar_baseline)
    student: StudentConfig = field(default_factory=StudentConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> ExperimentConfig:
        self.data.validate()
        self.flow.validate()
        self.teacher.model.validate("teacher.model")
        self.teacher.train.validate("teacher.train")
        for name in ("compass", "evaluator_small", "evaluator_large", "ar_baseline"):
            stage = getattr(self, name)
            stage.model.validate(f"{name}.model")
            stage.train.validate(f"{name}.train")
        self.student.validate()
        self.evaluation.validate()
        self.sample.validate()
        return self


# ----------------------------------------------------------------------------- checks


def _positive(obj: Any, where: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise TsdfmError(f"{where}.{n} must be > 0, got {getattr(obj, n)}")


def _nonneg(obj: Any, where: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 0:
            raise TsdfmError(f"{where}.{n} must be >= 0, got {getattr(obj, n)}")


def _choice(obj: Any, where: str, name: str, options: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if v not in options:
        raise TsdfmError(f"{where}.{name} must be one of {', '.join(options)}; got {v!r}")
