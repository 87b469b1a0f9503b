"""Stage: distil a few-step student from a trained teacher (shortcut self-distillation)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from tsdfm import distributed
from tsdfm.artifacts import atomic_write_json, now_iso
from tsdfm.config import ExperimentConfig
from tsdfm.data import load_prepared
from tsdfm.distributed import make_generator
from tsdfm.errors import TsdfmError
from tsdfm.models import Denoiser, build_student, count_parameters, load_pretrained
from tsdfm.shaping.shortcut import check_target_options
from tsdfm.training.loop import Trainer
from tsdfm.training.mixture import MixtureObjective
from tsdfm.training.objectives import ShortcutObjective
from tsdfm.training.stage_checks import checked_recorder
from tsdfm.training.teacher import prepare_run_dir, world_note


def load_teacher(teacher_dir: Path, data) -> Denoiser:
    teacher_dir = Path(teacher_dir)
    if not teacher_dir.is_dir():
        raise TsdfmError(
            f"teacher directory not found: {teacher_dir}; train it first with `tsdfm train teacher`"
        )
    teacher, tok = load_pretrained(teacher_dir, expect=Denoiser)
    if teacher.config.dt_cond:
        raise TsdfmError(f"{teacher_dir} is already a student (it has a step-size embedding)")
    fp = data.tokenizer.fingerprint()
    if teacher.config.tokenizer_fingerprint and teacher.config.tokenizer_fingerprint != fp:
        raise TsdfmError(
            f"the teacher in {teacher_dir} was trained with another tokenizer than the data in "
            f"{data.directory}; use the data the teacher was trained on"
        )
    if teacher.config.max_len < data.seq_len:
        raise TsdfmError(
            f"data seq_len {data.seq_len} exceeds the teacher's max length "
            f"{teacher.config.max_len}; use the data the teacher was trained on (or prepare "
            f"data with data.seq_len <= {teacher.config.max_len})"
        )
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def exact_anchor(teacher: Denoiser, data):
    """The markov chain's exact denoiser as the dt = 1/N anchor (``student.anchor=oracle``).

    Only defined where the truth is known: the ``markov`` corpus (order 1). The oracle solves
    the teacher's own path: the mask-source posterior, or with the uniform source the
    forward-backward posterior through the teacher's scheduler ``kappa(t)``. Anywhere else it
    fails before training.
    """
    from tsdfm.flow import make_scheduler
    from tsdfm.models.oracle import MarkovOracleDenoiser, MarkovUniformOracleDenoiser

    chain = data.chain()
    if chain is None:
        raise TsdfmError(
            "student.anchor=oracle needs the markov corpus (the exact denoiser is the true "
            f"chain's); the data in {data.directory} is real text: use student.anchor=teacher"
        )
    c = teacher.config
    if c.source == "uniform":
        return MarkovUniformOracleDenoiser(
            chain, data.seq_len, make_scheduler(c.scheduler, c.exponent)
        )
    return MarkovOracleDenoiser(chain, data.seq_len)


def quick_eval(data, steps: int = 8, num: int = 64, seed: int = 99):
    """Periodic check during distillation: ``num`` samples at ``steps`` (exact metrics on markov)."""
    chain = data.chain()

    def _eval(model, step):
        from tsdfm.flow import make_scheduler, sample, sample_source

        c = model.config
        device = next(model.parameters()).device  # a GPU run samples on its GPU
        g = make_generator(seed, device)
        was = model.training
        model.eval()
        x0 = sample_source((num, data.seq_len), c.source, c.mask_id, c.num_classes, g, device)
        ids = sample(
            model, x0, steps, make_scheduler(c.scheduler, c.exponent), c.source, c.mask_id, g
        ).ids.cpu()
        model.train(was)
        if chain is None:
            from tsdfm.evaluation import unigram_entropy

            return {f"entropy@{steps}": round(float(unigram_entropy(ids).mean()), 4)}
        from tsdfm.evaluation import truth_metrics

        m = truth_metrics(chain, ids)
        return {
            f"truth_nll@{steps}": round(m["truth_nll"], 4),
            f"tv3@{steps}": round(m["ngram_tv"]["3"], 4),
        }

    return _eval


def shaping_setup(
    cfg: ExperimentConfig, teacher_dir: Path, data_dir: Path, navigate: bool, compass_dir=None
):
    """What a student run needs from ``cfg.student.shaping``: ``(jump_fn, method, extra, name)``.

    ``navigate=False`` is blind distillation (the plain midpoint jump). Otherwise the midpoint
    jump is the navigator's, also for K = 1 (the ablation row on the same code path); ``method``
    is "shaped" only for K > 1. ``name`` is the default output directory name (suffixed
    ``-exact-anchor`` when ``student.anchor=oracle``, so it never overwrites a teacher-anchored run;
    ``-mixture`` / ``-chain`` before it for those student kinds).
    """
    sh = cfg.student.shaping
    suffix = ("" if cfg.student.kind == "product" else f"-{cfg.student.kind}") + (
        "-exact-anchor" if cfg.student.anchor == "oracle" else ""
    )
    kind = cfg.student.midpoint
    if kind != "model":
        if navigate:
            raise TsdfmError(
                f"student.midpoint={kind} replaces the midpoint jump; it cannot also be "
                "navigated: drop the shaping options (or set midpoint=model)"
            )
        return midpoint_setup(cfg, teacher_dir, data_dir, kind, suffix)
    if not navigate:
        return None, "blind", None, "student-blind" + suffix
    from tsdfm.shaping import shaped_jump

    data = load_prepared(Path(data_dir), verify=True)
    teacher = load_teacher(Path(teacher_dir), data)
    if compass_dir is None and sh.compass == "ar":
        default = Path(teacher_dir).parent.parent / "compass"
        compass_dir = default if default.is_dir() else None
    jump_fn = shaped_jump(sh, teacher, compass_dir, data.chain(), data.seq_len)
    extra = {"candidates": sh.candidates, "compass": sh.compass, "select": sh.select, "tau": sh.tau}
    if sh.compass == "ar":
        extra["compass_dir"] = str(compass_dir)
    if sh.t_start > 0:
        extra["t_start"] = sh.t_start
    name = (
        f"student-{sh.compass}-k{sh.candidates}"
        + (f"-softmax{sh.tau:g}" if sh.select == "softmax" else "")
        + (f"-from{sh.t_start:g}" if sh.t_start > 0 else "")
        + suffix
    )
    return jump_fn, ("shaped" if sh.candidates > 1 else "blind"), extra, name


def midpoint_setup(
    cfg: ExperimentConfig, teacher_dir: Path, data_dir: Path, kind: str, suffix: str
):
    """``shaping_setup`` for ``student.midpoint=teacher|exact-marginal|exact-joint``: a blind
    student whose midpoints come from the frozen teacher or (markov) the chain's exact law."""
    from tsdfm.flow import make_scheduler
    from tsdfm.shaping import midpoint_jump

    data = load_prepared(Path(data_dir), verify=True)
    teacher = load_teacher(Path(teacher_dir), data)
    if kind != "teacher" and data.chain() is None:
        raise TsdfmError(
            f"student.midpoint={kind} needs the markov corpus (only a known chain has an exact "
            f"midpoint law); the data in {data.directory} is real text: use student.midpoint="
            "model or teacher"
        )
    c = teacher.config
    denoiser = teacher if kind == "teacher" else exact_anchor(teacher, data)
    jump_fn = midpoint_jump(
        denoiser, make_scheduler(c.scheduler, c.exponent), c.source, c.mask_id, kind
    )
    return jump_fn, "blind", {"midpoint": kind}, f"student-midpoint-{kind}" + suffix


def mixture_extra(st) -> dict:
    """What ``config.json`` records of a mixture student's training (``extra``); the number of
    codes itself is the config's ``latent_codes``."""
    return {
        "kind": st.kind,
        "joint_weight": st.joint_weight,
        "data_weight": st.data_weight,
        "latent_lr_scale": st.latent_lr_scale,
    }


LATENT_PREFIXES = ("chain.", "latent_emb.")  # the latent head's parameters (tsdfm.models.latent)


def train_student(
    cfg: ExperimentConfig,
    teacher_dir: Path,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    jump_fn=None,
    method: str = "blind",
    extra: dict | None = None,
) -> Path:
    data_dir, out_dir, teacher_dir = Path(data_dir), Path(out_dir), Path(teacher_dir)
    scfg = cfg.student.train
    ctx = distributed.setup(scfg.device)
    data = load_prepared(data_dir, verify=True)
    teacher = load_teacher(teacher_dir, data)
    st = cfg.student
    check_target_options(st.target_committed, st.target_space, teacher.config.source, st.target)
    anchor = exact_anchor(teacher, data) if cfg.student.anchor == "oracle" else None
    prepare_run_dir(out_dir, resume)
    record = checked_recorder(
        cfg, data, data_dir, out_dir, resume, ("data", "flow", "student"), "student.train"
    )
    if scfg.num_threads:
        torch.set_num_threads(scfg.num_threads)
    torch.manual_seed(scfg.seed)
    mixture = st.kind != "product"
    student = build_student(
        teacher,
        str(teacher_dir),
        st.latent_codes if mixture else 0,
        st.kind == "chain",
        st.chain_features,
    )
    prepare_run_dir(out_dir, resume, student)
    student.config.extra.update(
        {
            "method": method,
            "target": cfg.student.target,
            "target_space": cfg.student.target_space,
            "anchor": cfg.student.anchor,
            "target_committed": cfg.student.target_committed,
            "carry_over": cfg.student.carry_over,
            "midpoint": cfg.student.midpoint,
            "teacher_steps": cfg.student.teacher_steps,
            "dt_weights": cfg.student.dt_weights,
            **(mixture_extra(st) if mixture else {}),
            **(extra or {}),
        }
    )
    objective_cls, options = ShortcutObjective, {}
    if mixture:
        objective_cls = MixtureObjective
        options = dict(
            latent_codes=st.latent_codes, joint_weight=st.joint_weight, data_weight=st.data_weight
        )
    objective = objective_cls(
        teacher,
        cfg.student,
        student.config.mask_id,
        student.config.num_classes,
        jump_fn,
        stats_every=scfg.log_every * scfg.grad_accum_steps,  # calls per logged interval
        anchor=anchor,
        **options,
    )
    student.config.extra["target_committed"] = objective.committed  # "auto", resolved
    if ctx.is_main:
        print(
            f"[student:{method}{'/' + st.kind if mixture else ''}] "
            f"{count_parameters(student) / 1e6:.2f}M parameters from "
            f"{teacher_dir}; target={cfg.student.target}/{cfg.student.target_space}, dt weights="
            f"{cfg.student.dt_weights}"
            + (", anchor=exact denoiser" if anchor is not None else "")
            + world_note(ctx)
        )
    trainer = Trainer(
        student,
        objective,
        data.split("train"),
        data.split("valid"),
        scfg,
        out_dir,
        f"student:{method}",
        on_eval=quick_eval(data),
        progress=progress,
        on_start=record,
        config_key="student.train",
        lr_scales={p: st.latent_lr_scale for p in LATENT_PREFIXES} if mixture else None,
    )
    objective.target_model = trainer.ema.module
    result = trainer.fit(resume=resume)
    if result.interrupted:
        raise SystemExit(130)
    model_dir = out_dir / "model"
    if not ctx.is_main:
        distributed.barrier()  # rank 0 writes the model and summary
        return model_dir
    model_dir = result.model.save_pretrained(model_dir, tokenizer=data.tokenizer)
    atomic_write_json(
        out_dir / "summary.json",
        {
            "stage": "student",
            "method": method,
            "complete": True,
            "finished": now_iso(),
            "teacher": str(teacher_dir),
            "steps": result.steps,
            "final_val_loss": result.final_val_loss,
            "train_seconds": round(result.seconds, 1),
            "sec_per_step": round(result.seconds / max(result.steps, 1), 4),
            "bad_steps": result.bad_steps,
            "shipped": result.shipped,
            "val_losses": result.val_losses,
            "student": asdict(cfg.student),
            "shaping": extra or None,
            **({"world_size": ctx.world_size} if ctx.enabled else {}),
        },
    )
    print(f"[student:{method}] done in {result.seconds:.0f}s -> {model_dir}")
    distributed.barrier()
    return model_dir
