"""What a distillation method is: a module that returns named, unweighted loss terms.

The DistillModule always offers two terms itself: `ce` (hard labels) and `kd` (Hinton's soft
targets). A method adds its own terms (e.g. `fitnet`, `crd`); the config's `weights` maps every
term name to its weight, so any method combines with KD by weights alone.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.models.base import FeatureOutput

FEATURES = frozenset({"logits", "stages", "preact", "embedding", "index", "attentions", "values", "queries",
                      "keys", "mask"})


class IncompatiblePairError(ValueError):
    """A method cannot work with this teacher/student pair (raised before training starts)."""


class Distiller(nn.Module):
    """Base class of every method. Subclasses set `terms`, `needs` and implement `forward`.

    Parameters a method owns (shape adapters, projection heads, memory banks as buffers) are
    trained with the student but are not part of the deployable student.
    """

    terms: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    # Bump when a change alters what the method trains (its loss, a default): matrix cells finished by the older
    # code then count as not finished and train again (kdexp.bench.matrix.cell_key); 1 leaves existing keys as they are
    version: ClassVar[int] = 1
    # >0: the method needs a first stage of this many epochs (AB/FT/FSP initialisation)
    init_epochs: int = 0
    # False: the init stage trains only the method's own modules, and the student stays in eval mode
    # there (its BatchNorm running statistics must not drift on a stage that does not train it: FT)
    init_trains_student: ClassVar[bool] = True
    # True: reads what only transformers give (attention maps, per-token hidden states; kdexp.distill.transformer)
    transformer_only: ClassVar[bool] = False

    def build(
        self, student: FeatureOutput, teacher: FeatureOutput, num_classes: int, num_samples: int
    ) -> None:
        """Create adapters from example features (batch of 2); raise IncompatiblePairError early."""

    def teacher_levels(self) -> dict[str, tuple[int, ...]]:
        """Which levels of the teacher's `stages`/`preact` lists the built method reads; a list not named
        here is read whole. The teacher-output cache keeps only these: a method that pairs a few deep
        stages needs a fraction of the feature maps (the shallow ones are the largest)."""
        return {}

    def forward(
        self, student: FeatureOutput, teacher: FeatureOutput, target: Tensor, index: Tensor, epoch: int
    ) -> dict[str, Tensor]:
        return {}

    def init_terms(
        self, student: FeatureOutput, teacher: FeatureOutput, target: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        """Loss terms of the first stage (only called when init_epochs > 0).

        The init-stage loss is their unweighted sum (as RepDistiller's init loop); `weights`
        apply to the main stage only. Parameters that get no gradient from it stay untouched.
        """
        raise NotImplementedError


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: KL(teacher_T || student_T) * T², averaged over the batch.

    The T² keeps the soft term's gradient scale independent of T.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
