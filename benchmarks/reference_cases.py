"""The table of benchmarks/reference_algorithms.py: how each of our algorithms maps onto semilearn
0.3.2's (REFERENCES) and the settings each is run with (CASES), on one small problem.

A `Reference` says where each side's quantities come from: ("stat", key) of our step's stats,
("log", key) of semilearn's log_dict, or `call(where, attribute, select)`: what that callable
returned (all of it, an item or an attribute) or was given (("arg", i), ("kwarg", name)) in the
step, `where` being a module, "algorithm" or "hook:<semilearn hook>". Its random draws agree:
VAT's probe (our step generator and semilearn's global generator are seeded with the same
number), MixUp's lambda and permutation (`semilearn_mixup`: ours drawn as semilearn draws them),
the rotations (semilearn's inputs made from our draws, as its data loaders would make them).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import torch
from torch import Tensor

from semisup.algorithms import StepBatch, mixmatch, remixmatch, simmatch

# The problem: 3 classes; a labeled set of 8 with an uneven prior; B = 4, mu = 2; 20 planned steps.
NUM_CLASSES, BATCH, MU, NUM_UNLABELED, TOTAL_STEPS = 3, 4, 2, 16, 20
LABELED_CLASS_COUNTS = (2, 3, 3)
NUM_LABELED = sum(LABELED_CLASS_COUNTS)
CRMATCH_MAP = 8 * 8   # positions of the feature map semilearn's CNN form of CRMatch flattens


def call(where: str, attribute: str, select=None, **options) -> tuple:
    """A quantity from a callable in the step; options: call (which call: 0 the first; default
    the last), default (its value if it is not called)."""
    return ("call", where, attribute, select, options)


def stat(key: str) -> tuple:
    return ("stat", key)


def log(key: str) -> tuple:
    return ("log", f"train/{key}")


LOSS_TERMS_OURS = {"loss_sup": stat("loss_sup"), "loss_unsup": stat("loss_unsup")}
LOSS_TERMS_SEMILEARN = {"loss_sup": log("sup_loss"), "loss_unsup": log("unsup_loss")}
PSEUDO_LABELS_OURS = {**LOSS_TERMS_OURS, "mask": call("algorithm", "pseudo_label", "mask"),
                      "pseudo_labels": call("algorithm", "pseudo_label", "targets")}
MASK_SEMILEARN = call("hook:MaskingHook", "masking")
PSEUDO_LABELS_SEMILEARN = {**LOSS_TERMS_SEMILEARN, "mask": MASK_SEMILEARN,
                           "pseudo_labels": call("hook:PseudoLabelingHook", "gen_ulb_targets")}


def masked_terms(module: str, targets_given: bool = False) -> tuple[dict, dict]:
    """Ours and semilearn's mask and pseudo-labels where our step calls the module's
    fixed_threshold_mask and confidence_and_pseudo_labels (the targets it is given, where they are
    soft: semilearn's are what its MaskingHook is given)."""
    select = ("arg", 0) if targets_given else 1
    ours = {"mask": call(module, "fixed_threshold_mask"),
            "pseudo_labels": call(module, "confidence_and_pseudo_labels", select)}
    theirs = {"mask": MASK_SEMILEARN,
              "pseudo_labels": call("hook:MaskingHook", "masking", ("kwarg", "logits_x_ulb"))}
    return ours, theirs


# ---- what some algorithms need beyond the table's fields --------------------------------------
def semilearn_mixup(module) -> Callable[[int], contextlib.AbstractContextManager]:
    """Around our step: our MixUp draws lambda and the permutation as semilearn's
    mixup_one_target does, from numpy's and torch's global generators seeded with the step's
    number (semilearn's side seeds them so before its step), with our mixup_alpha."""
    def draws(step: int):
        def draw(ctx, num_rows: int, alpha: float) -> tuple[float, Tensor]:
            np.random.seed(step)
            lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
            torch.manual_seed(step)
            return max(lam, 1.0 - lam), torch.randperm(num_rows)
        return mock.patch.object(module, "mixup_draw", draw)
    return draws


def remixmatch_rotations(batch: StepBatch, step: int) -> dict[str, Tensor]:
    """semilearn's rotated first strong view and its labels, made from the turns our step draws
    first from its generator (seeded with the step's number)."""
    images = batch.unlabeled.views[1]
    turns = torch.randint(4, (len(images),), generator=torch.Generator().manual_seed(step))
    rotated = torch.stack([torch.rot90(image, int(k), dims=(1, 2))
                           for image, k in zip(images, turns, strict=True)])
    return {"x_ulb_s_0_rot": rotated, "rot_v": turns}


def crmatch_rotations(batch: StepBatch, step: int) -> dict[str, Tensor]:
    """semilearn's RotNet batch: the first B images of our third view at 0, 90, 180, 270 degrees
    (four blocks) and their labels."""
    images = batch.unlabeled.views[2][:len(batch.labeled.labels)]
    return {"x_ulb_rot": torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)]),
            "rot_v": torch.arange(4).repeat_interleave(len(images))}


def crmatch_head_weights(weights: dict, arguments: dict) -> dict:
    """semilearn's CNN form reads the flattened C x 8 x 8 map: our head's weights tied across the
    64 positions (W / 64 at each), so that both heads give the same outputs."""
    if "wrn" not in arguments["net"]:
        return weights
    head = weights["ds_classifier.weight"]
    return {**weights, "ds_classifier.weight": (head / CRMATCH_MAP).repeat_interleave(CRMATCH_MAP, dim=1)}


def crmatch_head_gradient(record: dict, arguments: dict) -> dict:
    """Our head's gradient repeated over the 64 positions: where semilearn's (of the tied
    weights) equals it, its head stays tied."""
    key = "grad heads.feature_distance.weight"
    if "wrn" not in arguments["net"]:
        return record
    return {**record, key: record[key].repeat_interleave(CRMATCH_MAP, dim=1)}


def dash_rho_hat(algorithm, params: dict, start: dict) -> dict:
    """Dash usb: the end-of-warm-up evaluation gives rho_hat (semilearn: rho_init)."""
    algorithm.on_evaluation(params["warmup_steps"], {"ema/loss": start["rho_hat"]}, None, None)
    return {"rho_init": start["rho_hat"], "warmup_stage": False}


def simmatch_bank(algorithm, params: dict, start: dict) -> dict:
    """Our bank's random initial rows, drawn; semilearn's bank starts with them (its rows are
    columns)."""
    algorithm.draw_bank(torch.Generator().manual_seed(0))
    return {"mem_bank": algorithm.bank.rows.T.contiguous().clone()}


@contextlib.contextmanager
def simmatch_in_semilearn_order():
    """Our SimMatch's similarities to the bank computed in semilearn's float32 order: its bank
    holds a sample per column (ours per row), and its instance loss takes log(softmax)."""
    def similarities(features: Tensor, bank: Tensor, T: float) -> Tensor:
        return torch.softmax(features @ bank.T.contiguous() / T, dim=1)

    def instance_loss(features: Tensor, bank: Tensor, teacher: Tensor, T: float) -> Tensor:
        student = torch.softmax(features @ bank.T.contiguous() / T, dim=1)
        return torch.sum(-teacher * torch.log(student), dim=1).mean()
    with (mock.patch.object(simmatch, "bank_similarities", similarities),
          mock.patch.object(simmatch, "instance_consistency_loss", instance_loss)):
        yield


# Our code computed in semilearn's float32 order, to show that a difference is rounding alone.
IN_SEMILEARN_ORDER = {"simmatch": simmatch_in_semilearn_order}


@dataclass(frozen=True)
class Reference:
    """How one of our algorithms maps onto semilearn's."""

    semilearn: str                                    # semilearn's registry name
    arguments: Callable[[dict], dict] = lambda params: {}   # its own, from our hyperparameters
    ours: dict = field(default_factory=lambda: PSEUDO_LABELS_OURS)         # quantity -> source
    theirs: dict = field(default_factory=lambda: PSEUDO_LABELS_SEMILEARN)
    state: dict = field(default_factory=dict)   # our attribute -> (semilearn hook or None, attribute)
    labeled: tuple[str, ...] = ("x_lb",)        # train_step's names of our labeled views
    unlabeled: tuple[str, ...] = ("x_ulb_w", "x_ulb_s")   # ... and of our unlabeled views
    names: dict = field(default_factory=dict)   # our parameter name prefix -> semilearn's
    image_size: int = 4
    first_step: Callable[[dict], int] = lambda params: 0
    iteration: Callable[[int, dict], int] = lambda step, params: step   # semilearn's `it` then
    step_attributes: Callable[[int, dict], dict] = lambda it, params: {}   # set on semilearn's
    prepare: Callable = lambda algorithm, params, start: {}   # ours; returns semilearn's attributes
    inputs: Callable[[StepBatch, int], dict] = lambda batch, step: {}   # its loaders' extra inputs
    draws: Callable[[int], contextlib.AbstractContextManager] = lambda step: contextlib.nullcontext()
    weights: Callable[[dict, dict], dict] = lambda weights, arguments: weights   # to semilearn's form
    ours_as_theirs: Callable[[dict, dict], dict] = lambda record, arguments: record


WRAPPED = {"backbone.": "backbone.backbone.", "classifier.": "backbone.classifier."}  # its *_Net
PSEUDO_LABEL, ADAMATCH = "semisup.algorithms.pseudolabel", "semisup.algorithms.adamatch"
DEFIXMATCH = "semisup.algorithms.defixmatch"
FREEMATCH_FAIRNESS = call("semilearn.algorithms.freematch.freematch", "entropy_loss", 0, default=0.0)
LABELED_TERMS = {"loss_anti": stat("loss_anti"),
                 "mask": call(DEFIXMATCH, "masked_pseudo_label_loss", 1, call=0),
                 "mask_labeled": call(DEFIXMATCH, "masked_pseudo_label_loss", 1, call=1),
                 "pseudo_labels": call(DEFIXMATCH, "masked_pseudo_label_loss", 2, call=0),
                 "pseudo_labels_labeled": call(DEFIXMATCH, "masked_pseudo_label_loss", 2, call=1)}
LABELED_TERMS_SEMILEARN = {
    "loss_anti": log("anti_unsup_loss"), "mask": call("hook:MaskingHook", "masking", call=0),
    "mask_labeled": call("hook:MaskingHook", "masking", call=1),
    "pseudo_labels": call("hook:PseudoLabelingHook", "gen_ulb_targets", call=0),
    "pseudo_labels_labeled": call("hook:PseudoLabelingHook", "gen_ulb_targets", call=1)}
COMATCH_OURS, COMATCH_THEIRS = masked_terms("semisup.algorithms.comatch", targets_given=True)
SIMMATCH_OURS, SIMMATCH_THEIRS = masked_terms("semisup.algorithms.simmatch", targets_given=True)
CRMATCH_OURS, _ = masked_terms("semisup.algorithms.crmatch")
# semilearn's CRMatch takes its hard pseudo-labels inline: what its second ce_loss call is given
CRMATCH_THEIRS = {"mask": MASK_SEMILEARN, "pseudo_labels": call("algorithm", "ce_loss", ("arg", 1), call=1)}
QUEUE_ALIGNMENT = {"alignment.batch_means.rows": ("DistAlignHook", "p_model")}
REFERENCES = {
    "supervised": Reference("supervised", ours={"loss_sup": stat("loss_sup")},
                            theirs={"loss_sup": log("sup_loss")}),
    "fullysupervised": Reference("fullysupervised", ours={"loss_sup": stat("loss_sup")},
                                 theirs={"loss_sup": log("sup_loss")}),
    "pseudolabel": Reference(
        "pseudolabel", lambda p: {"p_cutoff": p["tau"], "unsup_warm_up": p["rampup_fraction"]},
        ours={**LOSS_TERMS_OURS, "mask": call(PSEUDO_LABEL, "fixed_threshold_mask"),
              "pseudo_labels": call(PSEUDO_LABEL, "confidence_and_pseudo_labels", 1)},
        unlabeled=("x_ulb_w",)),
    "meanteacher": Reference("meanteacher", lambda p: {"unsup_warm_up": p["rampup_fraction"]},
                             ours=LOSS_TERMS_OURS, theirs=LOSS_TERMS_SEMILEARN),
    "pimodel": Reference("pimodel", lambda p: {"unsup_warm_up": p["rampup_fraction"]},
                         ours=LOSS_TERMS_OURS, theirs=LOSS_TERMS_SEMILEARN),
    # semilearn's xi is vat_loss's default, 1e-6: ours is params.yaml's, the same.
    "vat": Reference(
        "vat", lambda p: {"vat_eps": p["eps"], "ent_loss_ratio": p["lambda_entropy"],
                          "unsup_warm_up": p["rampup_fraction"], "vat_embed": False},
        ours={**LOSS_TERMS_OURS, "loss_entropy": stat("loss_entropy")},
        theirs={**LOSS_TERMS_SEMILEARN, "loss_entropy": log("loss_entmin")}, unlabeled=("x_ulb_w",)),
    "mixmatch": Reference(
        "mixmatch", lambda p: {"T": p["T"], "unsup_warm_up": p["rampup_fraction"],
                               "mixup_alpha": p["mixup_alpha"],
                               "mixup_manifold": p["mixup_space"] == "features"},
        ours=LOSS_TERMS_OURS, theirs=LOSS_TERMS_SEMILEARN, draws=semilearn_mixup(mixmatch)),
    # the alignment's momentum is semilearn's DistAlignEMAHook default (no argument sets it)
    "remixmatch": Reference(
        "remixmatch", lambda p: {"T": p["T"], "kl_loss_ratio": p["lambda_pre_mixup"],
                                 "rot_loss_ratio": p["lambda_rot"], "unsup_warm_up": p["rampup_fraction"],
                                 "mixup_alpha": p["mixup_alpha"],
                                 "mixup_manifold": p["mixup_space"] == "features"},
        ours=LOSS_TERMS_OURS, theirs=LOSS_TERMS_SEMILEARN,
        state={"alignment.p_model": ("DistAlignHook", "p_model")},
        unlabeled=("x_ulb_w", "x_ulb_s_0", "x_ulb_s_1"),
        names={**WRAPPED, "heads.rotation.": "rot_classifier."}, inputs=remixmatch_rotations,
        draws=semilearn_mixup(remixmatch)),
    # semilearn's CRMatch reads no ulb_loss_ratio (weights 1, as params.yaml's). Its network form
    # is chosen by `net`: bert, the head on the pooled features (ours); wrn, on the flattened map.
    "crmatch": Reference(
        "crmatch", lambda p: {"p_cutoff": p["tau"], "hard_label": True, "rot_loss_ratio": p["lambda_rot"],
                              "net": "bert"},
        ours={**LOSS_TERMS_OURS, **CRMATCH_OURS}, theirs={**LOSS_TERMS_SEMILEARN, **CRMATCH_THEIRS},
        unlabeled=("x_ulb_w", "x_ulb_s", "rotation_source"), image_size=8,
        names={**WRAPPED, "heads.feature_distance.": "ds_classifier.", "heads.rotation.": "rot_classifier."},
        inputs=crmatch_rotations, weights=crmatch_head_weights, ours_as_theirs=crmatch_head_gradient),
    "uda": Reference("uda", lambda p: {"p_cutoff": p["tau"], "T": p["T"], "tsa_schedule": p["tsa_schedule"]}),
    # semilearn's T (0.5) only sharpens soft labels: unused with its hard ones.
    "fixmatch": Reference("fixmatch", lambda p: {"p_cutoff": p["tau"], "hard_label": True, "T": 0.5}),
    "flexmatch": Reference(
        "flexmatch", lambda p: {"p_cutoff": p["tau"], "hard_label": True, "T": 0.5,
                                "thresh_warmup": p["threshold_warmup"], "ulb_dest_len": NUM_UNLABELED},
        state={"sigma": ("MaskingHook", "selected_label")}),
    # usb only (official follows the TensorFlow code). semilearn restarts `it` after its warm-up;
    # rho_hat comes from the warm-up's evaluation (rho_hat_model), outside the step: both get it.
    "dash": Reference(
        "dash", lambda p: {"T": p["T"], "gamma": p["gamma"], "C": p["C"], "rho_min": p["rho_min"],
                           "num_wu_iter": p["warmup_steps"], "epoch": TOTAL_STEPS // p["steps_per_epoch"]},
        first_step=lambda p: p["warmup_steps"], iteration=lambda step, p: step - p["warmup_steps"],
        prepare=dash_rho_hat),
    "freematch": Reference(
        "freematch", lambda p: {"ema_p": p["ema_momentum"], "ent_loss_ratio": p["lambda_fairness"],
                                "hard_label": True, "T": 0.5, "use_quantile": False, "clip_thresh": False},
        ours={**PSEUDO_LABELS_OURS, "loss_fairness": stat("loss_fairness")},
        theirs={**PSEUDO_LABELS_SEMILEARN, "loss_fairness": FREEMATCH_FAIRNESS},
        state={"tau_global": ("MaskingHook", "time_p"), "p_model": ("MaskingHook", "p_model"),
               "label_hist": ("MaskingHook", "label_hist")}),
    # semilearn's SoftMatch aligns whatever its dist_align says (it always registers the hook).
    "softmatch": Reference(
        "softmatch", lambda p: {"ema_p": p["ema_momentum"], "n_sigma": p["n_sigma"], "hard_label": True,
                                "T": 0.5, "dist_align": True, "dist_uniform": True, "per_class": False},
        state={"mu": ("MaskingHook", "prob_max_mu_t"), "var": ("MaskingHook", "prob_max_var_t"),
               "alignment.p_model": ("DistAlignHook", "p_model")}),
    "adamatch": Reference(
        "adamatch", lambda p: {"p_cutoff": p["tau"], "ema_p": p["ema_momentum"], "hard_label": True,
                               "T": 0.5},
        ours={**LOSS_TERMS_OURS, "mask": call(ADAMATCH, "selection_stats", ("arg", 0)),
              "pseudo_labels": call(ADAMATCH, "confidence_and_pseudo_labels", 1)},
        state={"alignment.p_model": ("DistAlignHook", "p_model"),
               "alignment.p_target": ("DistAlignHook", "p_target")}),
    "defixmatch": Reference(
        "defixmatch", lambda p: {"p_cutoff": p["tau"], "hard_label": True, "T": 0.5},
        ours={**LOSS_TERMS_OURS, **LABELED_TERMS}, theirs={**LOSS_TERMS_SEMILEARN, **LABELED_TERMS_SEMILEARN},
        labeled=("x_lb", "x_lb_s")),
    # semilearn smooths with the memory once `epoch > 0` (and it > queue_batch): its epoch is
    # set to 1 from our smoothing_start_step on.
    "comatch": Reference(
        "comatch", lambda p: {"p_cutoff": p["tau"], "T": p["T"], "contrast_p_cutoff": p["contrast_threshold"],
                              "contrast_loss_ratio": p["lambda_contrast"], "proj_size": p["projection_dim"],
                              "queue_batch": p["queue_batches"], "smoothing_alpha": p["smoothing_alpha"],
                              "da_len": p["alignment_batches"], "hard_label": True},
        ours={**LOSS_TERMS_OURS, **COMATCH_OURS, "loss_contrast": stat("loss_contrast")},
        theirs={**LOSS_TERMS_SEMILEARN, **COMATCH_THEIRS, "loss_contrast": log("contrast_loss")},
        state={"memory_features.rows": (None, "queue_feats"), "memory_probs.rows": (None, "queue_probs"),
               **QUEUE_ALIGNMENT},
        unlabeled=("x_ulb_w", "x_ulb_s_0", "x_ulb_s_1"), names={**WRAPPED, "heads.proj.": "mlp_proj."},
        step_attributes=lambda it, p: {"epoch": int(it >= p["smoothing_start_step"])}),
    # cifar10: semilearn's online teacher and bank momentum 0.7; its K is the labeled-set size.
    # Instance consistency and smoothing start with its second epoch: our similarity_start_step.
    "simmatch": Reference(
        "simmatch", lambda p: {"p_cutoff": p["tau"], "T": p["T"], "proj_size": p["projection_dim"],
                               "smoothing_alpha": p["smoothing_alpha"], "da_len": p["alignment_batches"],
                               "in_loss_ratio": p["lambda_in"], "dataset": "cifar10"},
        ours={**LOSS_TERMS_OURS, **SIMMATCH_OURS}, theirs={**LOSS_TERMS_SEMILEARN, **SIMMATCH_THEIRS},
        state={"bank.rows": (None, "mem_bank.T"), "bank_labels.rows": (None, "labels_bank"),
               **QUEUE_ALIGNMENT},
        names={**WRAPPED, "heads.proj.": "mlp_proj."}, prepare=simmatch_bank,
        step_attributes=lambda it, p: {"epoch": int(it >= p["similarity_start_step"])}),
}


@dataclass(frozen=True)
class Case:
    name: str                     # our registered algorithm (REFERENCES has its mapping)
    setting: dict = field(default_factory=dict)   # ours, both sides: semilearn's behaviour, or coverage
    wrong: dict = field(default_factory=dict)     # ours, our side only: must differ
    start: dict = field(default_factory=dict)     # both sides start from these (Dash's rho_hat)
    semilearn: dict = field(default_factory=dict)   # semilearn's arguments beyond REFERENCES'
    batchnorm: bool = True
    known: str = ""               # a difference no parameter names: why
    known_in: tuple[str, ...] = ()   # the quantities it is confined to (the rest must be exact)
    semilearn_order: bool = False   # ours in semilearn's float32 order (IN_SEMILEARN_ORDER)

    @property
    def label(self) -> str:
        words = [f"{key}={value}" for key, value in {**self.setting, **self.start}.items()]
        words += [f"semilearn {key}={value}" for key, value in self.semilearn.items()]
        words += [] if self.batchnorm else ["network without BatchNorm"]
        words += ["ours in semilearn's float32 order"] if self.semilearn_order else []
        words += [f"WRONG {key}={value}" for key, value in self.wrong.items()]
        return self.name + (f" ({', '.join(words)})" if words else "")


UDA_AS_SEMILEARN = {"tsa_schedule": "linear", "tsa_rule": "max_probability", "sharpen_targets": False}
DASH_USB = {"variant": "usb", "steps_per_epoch": 1}   # rho decays every 10 steps: within the run
COMATCH_SOON = {"queue_batches": 2, "smoothing_start_step": 4}   # memory smoothing from step 4
SIMMATCH_AS_SEMILEARN = {"similarity_start_step": 4, "bank_normalisation": "across_batch",
                         "alignment_mean": "all_rows"}   # instance consistency from step 4
SIMMATCH_ROUNDING = (
    "float32 evaluation order, not the arithmetic (simmatch.py): our bank holds a sample per row, "
    "semilearn's per column, so z @ bank sums in another order, and our instance loss takes "
    "log_softmax where semilearn takes log(softmax); T = 0.1 multiplies the logits' rounding by "
    "10. The next case, ours in semilearn's order, is within 1e-6")
CRMATCH_ON_MAP = (
    "semilearn's CNN form (net wrn) maps the flattened 8x8 feature map, 64 weights per channel, "
    "where ours maps the pooled features (crmatch.py). Given our head's weights tied across the "
    "positions, it computes the same step but for its head's gradient, which is not tied: the "
    "part that varies over positions is 0.96-0.99 of its norm, so its head leaves the tied form "
    "at its first update")
CASES = [
    Case("supervised"),
    Case("fullysupervised"),
    Case("pseudolabel"),
    Case("pseudolabel", wrong={"tau": 0.9}),
    Case("meanteacher", {"batchnorm": "separate"}),   # semilearn's BatchNorm batches
    Case("meanteacher", {"batchnorm": "separate"}, wrong={"batchnorm": "joint"}),
    Case("meanteacher", batchnorm=False),   # joint and separate agree without BatchNorm
    Case("pimodel"),
    Case("pimodel", wrong={"rampup_fraction": 0.2}),
    Case("vat", {"power_iteration_precision": "float32"}),
    Case("vat", {"power_iteration_precision": "float32"}, wrong={"power_iteration_precision": "float64"}),
    Case("mixmatch"),
    Case("mixmatch", wrong={"mixup_alpha": 0.75}),
    # MixUp of pooled features (semilearn's mixup_manifold, its text and audio setting), here on
    # the tiny image network, which has semilearn's only_feat / only_fc; semilearn's mix is no-grad
    # (mixed_features_gradient none), the backbone value differs from it
    Case("mixmatch", {"mixup_space": "features"}),
    Case("mixmatch", {"mixup_space": "features"}, wrong={"mixup_space": "inputs"}),
    Case("mixmatch", {"mixup_space": "features"}, wrong={"mixed_features_gradient": "backbone"}),
    Case("remixmatch"),
    Case("remixmatch", wrong={"alignment_momentum": 0.99}),
    Case("remixmatch", {"mixup_space": "features"}),
    Case("remixmatch", {"mixup_space": "features", "lambda_rot": 0.0}),   # USB's text and audio
    Case("remixmatch", {"mixup_space": "features"}, wrong={"mixup_space": "inputs"}),
    Case("remixmatch", {"mixup_space": "features"}, wrong={"mixed_features_gradient": "backbone"}),
    Case("crmatch"),
    Case("crmatch", wrong={"lambda_feature": 0.5}),
    Case("crmatch", semilearn={"net": "wrn_28_2", "dataset": "cifar10"}, known=CRMATCH_ON_MAP,
         known_in=("grad heads.feature_distance.weight",)),
    Case("uda", UDA_AS_SEMILEARN),
    Case("uda", UDA_AS_SEMILEARN, wrong={"tsa_rule": "true_class"}),
    Case("uda", UDA_AS_SEMILEARN, wrong={"sharpen_targets": True}),
    Case("fixmatch"),
    Case("fixmatch", wrong={"tau": 0.9}),
    Case("flexmatch"),
    Case("flexmatch", wrong={"threshold_warmup": False}),
    Case("dash", DASH_USB, start={"rho_hat": 1.0}),
    Case("dash", DASH_USB, start={"rho_hat": 0.06}),   # reaches rho_min: hard pseudo-labels
    Case("dash", DASH_USB, start={"rho_hat": 1.0}, wrong={"gamma": 1.1}),
    Case("freematch"),
    Case("freematch", {"ema_momentum": 0.7}),   # thresholds that move within the run
    Case("freematch", {"ema_momentum": 0.7}, wrong={"lambda_fairness": 0.01}),
    Case("softmatch", {"distribution_alignment": True}),
    Case("softmatch", {"distribution_alignment": True, "ema_momentum": 0.7}),
    Case("softmatch", {"distribution_alignment": True}, wrong={"distribution_alignment": False}),
    Case("adamatch"),
    Case("adamatch", wrong={"ema_momentum": 0.99}),
    Case("defixmatch"),
    Case("defixmatch", wrong={"lambda_u": 0.4}),
    Case("comatch", {**COMATCH_SOON, "alignment_mean": "all_rows"}),
    Case("comatch", {**COMATCH_SOON, "alignment_mean": "all_rows"}, wrong={"smoothing_alpha": 0.8}),
    Case("simmatch", SIMMATCH_AS_SEMILEARN, known=SIMMATCH_ROUNDING),
    Case("simmatch", SIMMATCH_AS_SEMILEARN, semilearn_order=True),
    Case("simmatch", SIMMATCH_AS_SEMILEARN, wrong={"bank_normalisation": "per_sample"}),
]
